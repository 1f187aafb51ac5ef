"""Batching: the one queue owner (Batcher) and the device-resident prefix cache.

Imports the engine; never the API layer or the registry (the registry's byte reader is injected)."""

from server.batching.batcher import Batcher, BatchLimits, ClassifyJob, TokenScores
from server.batching.prefix_cache import PrefixCache
from server.batching.queues import DeadlineExceeded, Overloaded, ShuttingDown

__all__ = [
    "BatchLimits",
    "Batcher",
    "ClassifyJob",
    "DeadlineExceeded",
    "Overloaded",
    "PrefixCache",
    "ShuttingDown",
    "TokenScores",
]
