"""Batching: the one queue owner (Batcher) and the device-resident prefix cache.

Imports the engine; never the API layer or the registry (the registry's byte reader is injected)."""

from server.batching.batcher import (
    BatchLimits,
    Batcher,
    ClassifyJob,
    DeadlineExceeded,
    Overloaded,
    ShuttingDown,
)
from server.batching.prefix_cache import PrefixCache

__all__ = [
    "BatchLimits",
    "Batcher",
    "ClassifyJob",
    "DeadlineExceeded",
    "Overloaded",
    "PrefixCache",
    "ShuttingDown",
]
