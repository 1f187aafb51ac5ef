"""Batching: the one queue owner (Batcher) and the device-resident prefix cache.

Imports the engine; never the API layer or the registry (the registry's byte reader is injected)."""

from server.batching.batcher import Batcher, BatchLimits, ClassifyJob, TokenScores
from server.batching.prefix_cache import PrefixCache
from server.batching.queues import DeadlineExceeded, Overloaded, ShuttingDown
from server.engine import (
    EngineUnavailable,  # raised through the batcher's calls; the API maps it to 503
    ScoreFunction,  # a job's choice of scores; the API passes it along
)

__all__ = [
    "BatchLimits",
    "Batcher",
    "ClassifyJob",
    "DeadlineExceeded",
    "EngineUnavailable",
    "Overloaded",
    "PrefixCache",
    "ScoreFunction",
    "ShuttingDown",
    "TokenScores",
]
