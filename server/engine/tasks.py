"""The tasks an engine holds: each artifact parsed once, here, where it is used, into the engine's
prefix pool, LoRA pool and head pool, under the handle the serving side chose for it. A task has a
prefix, a LoRA adapter or both (SPEC 1c).

A task's pool slots go back when its LoadedTask is garbage: after `release` AND after every batch that
was given it has finished (a batch in flight holds its tasks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from server.artifact import HEAD_RULES, ArtifactError, BackboneShape, HeadKind, PrefixArtifact, ProblemType, read_artifact
from server.engine.batch import NO_TASK
from server.engine.heads import HeadEntry, HeadPool
from server.engine.lora_pool import LoraEntry, LoraPool
from server.engine.prefix_pool import PoolEntry, PrefixPool
from server.engine.surface import TaskFacts


@dataclass(frozen=True, eq=False)
class LoadedTask:
    """A task version resident on the engine's device: its prefix in the prefix pool and its LoRA
    adapter in the LoRA pool (in the engine's dtype; either may be absent), its classifier in the head
    pool and its own pooler, if any, in float32."""

    pooled_prefix: PoolEntry | None
    head: HeadEntry
    problem_type: ProblemType
    labels: tuple[str, ...]
    head_kind: HeadKind = HeadKind.SEQUENCE
    pooler_weight: torch.Tensor | None = None  # [hidden, hidden] float32 (SPEC 1b)
    pooler_bias: torch.Tensor | None = None  # [hidden] float32
    lora: LoraEntry | None = None

    @property
    def prefix_len(self) -> int:
        return self.pooled_prefix.prefix_len if self.pooled_prefix is not None else 0

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        pooler = sum(t.numel() * t.element_size() for t in (self.pooler_weight, self.pooler_bias) if t is not None)
        head = len(self.head.slots) * self.head.pool.slot_bytes
        prefix = self.prefix_len * self.pooled_prefix.pool.slot_bytes if self.pooled_prefix is not None else 0
        return prefix + head + pooler + (self.lora.nbytes if self.lora is not None else 0)

    def facts(self) -> TaskFacts:
        return TaskFacts(self.prefix_len, self.num_labels, self.head_kind, self.problem_type, self.nbytes)

    def key_values(self) -> torch.Tensor | None:
        """The prefix read back from the pool, [L, 2, H, P, D] (tests and tools; serving never calls it)."""
        return self.pooled_prefix.read() if self.pooled_prefix is not None else None


class TaskTable:
    def __init__(self, shape: BackboneShape, prefix_pool: PrefixPool, head_pool: HeadPool, backbone_has_pooler: bool,
                 lora_pool: LoraPool | None = None):
        self.shape, self.prefix_pool, self.head_pool, self.lora_pool = shape, prefix_pool, head_pool, lora_pool
        self.backbone_has_pooler = backbone_has_pooler
        self._tasks: dict[int, LoadedTask] = {}
        self._lock = threading.Lock()  # loads and releases come from other threads than the forward's

    def __len__(self) -> int:
        return len(self._tasks)

    def load(self, handle: int, source: bytes | PrefixArtifact) -> LoadedTask:
        """Parses `source` (the artifact's bytes, validated as uploads are) into the pools under `handle`."""
        artifact = read_artifact(source, self.shape) if isinstance(source, bytes | bytearray | memoryview) else source
        own_pooler = artifact.pooler_weight is not None
        if HEAD_RULES[artifact.head].pooled and not own_pooler and not self.backbone_has_pooler:
            raise ArtifactError(  # read_artifact refuses these already; an artifact built in code may not have been read
                "tensors: expected 'pooler.weight' and 'pooler.bias' (this server's backbone has no pooler), got none"
            )
        if artifact.lora is not None and self.lora_pool is None:
            raise ArtifactError("tensors: expected no LoRA tensors (this engine has no LoRA pool), got some")
        device = self.prefix_pool.device
        task = LoadedTask(
            pooled_prefix=self.prefix_pool.add(artifact.key_values) if artifact.key_values is not None else None,
            head=self.head_pool.add(artifact.classifier_weight, artifact.classifier_bias),
            problem_type=artifact.problem_type,
            labels=artifact.labels,
            head_kind=artifact.head,
            pooler_weight=artifact.pooler_weight.to(device, torch.float32) if own_pooler else None,
            pooler_bias=artifact.pooler_bias.to(device, torch.float32) if own_pooler else None,
            lora=self.lora_pool.add(artifact.lora) if artifact.lora is not None else None,
        )
        with self._lock:
            self._tasks[handle] = task
        return task

    def add(self, handle: int, task: LoadedTask) -> None:
        """A task built in place of an artifact (benchmarks that fill the pools on the device)."""
        with self._lock:
            self._tasks[handle] = task

    def release(self, handles) -> None:
        with self._lock:
            for handle in handles:
                self._tasks.pop(handle, None)

    def resolve(self, handles: np.ndarray) -> list[LoadedTask | None]:
        """The task of each row, [B] (None for NO_TASK); KeyError names a handle never loaded or released."""
        tasks = self._tasks
        try:
            return [tasks[h] if h != NO_TASK else None for h in handles.tolist()]
        except KeyError as missing:
            raise KeyError(f"task handle {missing.args[0]} is not loaded in this engine") from None
