"""Builds the serving runtime (engine, prefix cache, batcher) from plain settings values, so the API
layer can start a server without touching the engine or tensors itself."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from server.artifact import BackboneShape
from server.batching.batcher import BatchLimits, Batcher
from server.batching.prefix_cache import PrefixCache
from server.engine import Engine, Row

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Runtime:
    engine: Engine
    cache: PrefixCache
    batcher: Batcher

    @property
    def shape(self) -> BackboneShape:
        return self.engine.shape

    def info(self) -> dict:
        g = self.engine.files.geometry
        return {
            "name": self.engine.files.name,
            "fingerprint": self.engine.files.fingerprint,
            "num_layers": g.num_layers,
            "num_heads": g.num_heads,
            "hidden_size": g.hidden_size,
            "max_position_embeddings": g.max_position_embeddings,
            "device": str(self.engine.device),
            "dtype": str(self.engine.dtype).removeprefix("torch."),
        }

    def warm_up(self) -> None:
        """One forward pass per padded shape class, so the first user request is not the slow one."""
        started = time.perf_counter()
        encoded = self.engine.encode(["warm up the backbone", ("a pair", "of texts")], 0)
        self.engine.pooled([Row(e, None) for e in encoded])
        log.info("backbone warmed up in %.0f ms", (time.perf_counter() - started) * 1000)


def build_runtime(
    backbone_dir: str,
    device: str,
    dtype: str,
    limits: BatchLimits,
    cache_bytes: int,
    read_artifact_bytes: Callable[[str], bytes],
) -> Runtime:
    started = time.perf_counter()
    engine = Engine.from_folder(backbone_dir, device=device, dtype=DTYPES[dtype])
    log.info(
        "backbone %s loaded on %s/%s in %.1f s (fingerprint %s)",
        engine.files.name, device, dtype, time.perf_counter() - started, engine.files.fingerprint,
    )
    cache = PrefixCache(engine, read_artifact_bytes, cache_bytes)
    return Runtime(engine, cache, Batcher(engine, cache, limits))
