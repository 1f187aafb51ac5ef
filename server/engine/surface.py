"""The engine surface: what the serving side (batcher, prefix cache, runtime) may ask of an engine.

Two implementations: `Engine` (in this process: tests, tools, `--no-engine-process`) and
`EngineProcess` (the same calls over a pipe to a child process). Both take a task's artifact as the
bytes the registry stored and parse it once, themselves; both take batches as arrays (batch.py).
Tokenizing is not part of it: the serving side owns its TextEncoder and asks the backbone's shape how
many tokens a row may hold.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from server.artifact import BackboneShape, HeadKind, ProblemType
from server.engine.batch import BatchScores, TokenBatch


@dataclass(frozen=True)
class TaskFacts:
    """What the engine reports of a task it loaded: what the batcher needs, and the bytes it holds."""

    prefix_len: int
    num_labels: int
    head: HeadKind
    problem_type: ProblemType
    nbytes: int


@runtime_checkable
class EngineSurface(Protocol):
    @property
    def shape(self) -> BackboneShape: ...

    @property
    def alive(self) -> bool: ...

    @property
    def generation(self) -> int:
        """Bumped when the engine restarts (a new process): tasks loaded before are gone from it."""
        ...

    @property
    def batches_in_flight(self) -> int:
        """How many `score` calls the batcher may have outstanding at once: 1, or 2 where the engine
        packs and launches the next batch while one runs on the device."""
        ...

    def info(self) -> dict: ...

    def load_task(self, handle: int, data: bytes) -> TaskFacts:
        """Parses an artifact's bytes into the engine under `handle` (the caller's, never reused)."""
        ...

    def start_load(self, handle: int, data: bytes) -> Future[TaskFacts]:
        """load_task without waiting for it: the engine process takes loads between forward passes, so a
        caller that waited would hold its thread for a whole pass; this one returns once it has sent."""
        ...

    def release_task(self, handle: int) -> None:
        """Lets the engine free a task; safe from any thread (a finalizer), and cheap."""
        ...

    def score(self, batch: TokenBatch) -> BatchScores: ...

    def pooled(self, batch: TokenBatch) -> np.ndarray:
        """The pooled output per row, [B, hidden] float32; rows may have no task (warm-up, baselines)."""
        ...

    def close(self) -> None: ...
