"""Garbage-collector settings for long-lived serving processes (the API process and the engine
process both apply them once they are up)."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Moves every object alive after start-up (torch, transformers, FastAPI: about a million) out of
    the garbage collector's reach, and collects the young generation 70x less often. Otherwise each
    full collection walks them all, stalling the event loop for tens of milliseconds at random
    requests. Measured at 64 tasks: p99 at 100 requests/s 181 -> 47 ms (p50 18-20 ms), server CPU per
    request 577 -> 353 us."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
