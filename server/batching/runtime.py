"""Builds the serving runtime (engine, prefix cache, batcher) from plain settings values, so the API
layer can start a server without touching the engine or tensors itself. The engine runs in its own
process (EngineProcess) unless asked to run in this one (tests, tools)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from server import metrics
from server.artifact import BackboneShape
from server.batching.batcher import Batcher, BatchLimits
from server.batching.host_tier import HostTier
from server.batching.prefix_cache import PrefixCache
from server.engine import Engine, TextEncoder, TokenBatch
from server.engine.backbone import DTYPES
from server.engine.process import EngineProcess
from server.engine.surface import EngineSurface

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    engine: EngineSurface
    cache: PrefixCache  # the device tier
    batcher: Batcher
    host: HostTier | None = None

    def residency(self, sha256: str) -> dict[str, bool]:
        """Which tiers hold the artifact (SPEC 6): for routers that send a task where it is warm."""
        return {"device": sha256 in self.cache, "host": self.host is not None and sha256 in self.host,
                "pinned": sha256 in self.cache.pinned}

    @property
    def device_budget_bytes(self) -> int:
        return self.cache.max_bytes

    def pin(self, sha256s: set[str]) -> None:
        """Keeps these artifacts on the device (loading them now; blocking). Raises PinsOverBudget."""
        self.cache.pin(sha256s)

    @property
    def encoder(self) -> TextEncoder:
        return self.batcher.encoder

    @property
    def shape(self) -> BackboneShape:
        return self.engine.shape

    @property
    def healthy(self) -> bool:
        """False while an engine process is down or restarting."""
        return self.engine.alive

    def info(self) -> dict:
        info = self.engine.info()
        info["engine_process"] = isinstance(self.engine, EngineProcess)
        return info

    async def stop(self) -> None:
        await self.batcher.stop()
        self.cache.close()
        self.engine.close()

    def warm_up(self) -> None:
        """One forward pass per padded shape class, so the first user request is not the slow one."""
        started = time.perf_counter()
        max_tokens = self.shape.max_tokens(0)
        encoded = self.encoder.encode(["warm up the backbone", ("a pair", "of texts")], max_tokens)
        self.engine.pooled(TokenBatch.of(encoded))
        if self.engine.info().get("attention") == "triton":  # Triton compiles once per query block size
            for words in (40, 80):  # rows averaging over 24 and over 56 tokens: 32 and 64 (attention.pick_block_m)
                self.engine.pooled(TokenBatch.of(self.encoder.encode([" ".join(["warm"] * words)], max_tokens)))
        log.info("backbone warmed up in %.0f ms", (time.perf_counter() - started) * 1000)


def build_runtime(
    backbone_dir: str,
    device: str,
    dtype: str,
    limits: BatchLimits,
    cache_bytes: int,
    read_artifact_bytes: Callable[[str], bytes],
    engine_process: bool = True,
    torch_threads: int = 0,
    attention: str = "auto",
    log_json: bool = False,
    host_cache_bytes: int = 0,
    fetch_workers: int = 4,
) -> Runtime:
    """`attention`: auto | triton | varlen | sdpa (attention.py); auto is sdpa on the CPU."""
    started = time.perf_counter()
    if engine_process:
        engine = EngineProcess(backbone_dir, device, dtype, torch_threads=torch_threads, attention=attention,
                               on_restart=metrics.ENGINE_RESTARTS.inc, log_json=log_json)
    else:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        engine = Engine.from_folder(backbone_dir, device=device, dtype=DTYPES[dtype], attention=attention)
    info = engine.info()
    log.info(
        "backbone %s loaded on %s/%s in %.1f s (fingerprint %s, %s)",
        info["name"], device, dtype, time.perf_counter() - started, info["fingerprint"],
        f"engine process {engine.pid}" if engine_process else "engine in this process",
    )
    host = HostTier(read_artifact_bytes, host_cache_bytes)
    cache = PrefixCache(engine, host.get, cache_bytes, fetch_workers)
    encoder = engine.encoder if isinstance(engine, Engine) else TextEncoder.from_folder(backbone_dir)
    return Runtime(engine, cache, Batcher(engine, cache, limits, encoder), host)
