"""The engine surface: what the serving side (batcher, prefix cache, runtime) may ask of an engine.

Two implementations: `Engine` (in this process: tests, tools, `--no-engine-process`) and
`EngineProcess` (the same calls over a pipe to a child process). Tokenizing is not part of it: the
serving side owns its TextEncoder and asks the backbone's shape how many tokens a row may hold.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from server.artifact import BackboneShape, PrefixArtifact


@runtime_checkable
class LoadedTask(Protocol):
    """A task version resident in an engine: the facts the batcher and the cache read."""

    @property
    def prefix_len(self) -> int: ...

    @property
    def num_labels(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def stale(self) -> bool: ...  # its engine (process) has restarted since it was loaded

    @property
    def token_head(self) -> bool: ...  # a token-classification task (SPEC 1b): one result per token


@runtime_checkable
class EngineSurface(Protocol):
    @property
    def shape(self) -> BackboneShape: ...

    @property
    def alive(self) -> bool: ...

    @property
    def batches_in_flight(self) -> int:
        """How many `score` calls the batcher may have outstanding at once: 1, or 2 where the engine
        packs and launches the next batch while one runs on the device."""
        ...

    def info(self) -> dict: ...

    def load_prefix(self, artifact: PrefixArtifact, data: bytes | None = None) -> LoadedTask:
        """`data`: the bytes `artifact` was read from, so an engine elsewhere gets them as stored."""
        ...

    def score(self, rows: list) -> list[list[float]]:
        """Scores per row (server.engine.Row), in row order, each cut to its task's labels."""
        ...

    def pooled(self, rows: list) -> torch.Tensor:
        """The pooled output per row, [B, hidden]; rows may lack a prefix (warm-up, baselines)."""
        ...

    def close(self) -> None: ...
