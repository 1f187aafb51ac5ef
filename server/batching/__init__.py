"""Batching: the one queue owner (Batcher) and the device-resident prefix cache.

Imports the engine; never the API layer or the registry (the registry's byte reader is injected)."""

from server.batching.batcher import Batcher, BatchLimits, ClassifyJob
from server.batching.inputs import ChoiceInput, Input, QuestionInput, TokenScores
from server.batching.prefix_cache import PinsOverBudget, PrefixCache
from server.batching.queues import DeadlineExceeded, Overloaded, ShuttingDown
from server.decoding import ChoiceScores, SpanAnswer, SpanOptions

__all__ = [
    "BatchLimits",
    "Batcher",
    "ChoiceInput",
    "ChoiceScores",
    "ClassifyJob",
    "DeadlineExceeded",
    "Input",
    "Overloaded",
    "PinsOverBudget",
    "PrefixCache",
    "QuestionInput",
    "ShuttingDown",
    "SpanAnswer",
    "SpanOptions",
    "TokenScores",
]
