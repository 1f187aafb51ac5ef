"""The device-resident prefix cache: an LRU of the tasks loaded in the engine, bounded in bytes, keyed
by the artifact's sha256 (so identical artifacts of different tenants share one copy).

The registry's bytes go to the engine as they are; the engine parses them, once, and says what it
holds (TaskFacts). A request takes a reference to its ResidentTask at admission; eviction only drops
the cache's reference, and the engine frees the task when the last reference goes, so a request in
flight keeps the exact version it was routed to. Entries of an engine process that has since
restarted are stale and load again on their next request.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from server import metrics
from server.engine.surface import EngineSurface, TaskFacts

log = logging.getLogger(__name__)
_handles = itertools.count(1)  # never reused, across engine restarts too
TIER = "device"


@dataclass(frozen=True, eq=False)
class ResidentTask:
    """A task loaded in the engine: its handle there and what the engine said of it. When the last
    reference goes (the cache evicted it and no request holds it), the engine is told to free it."""

    handle: int
    facts: TaskFacts
    generation: int  # the engine's, when loaded
    engine: EngineSurface = field(repr=False)

    @property
    def prefix_len(self) -> int:
        return self.facts.prefix_len

    @property
    def nbytes(self) -> int:
        return self.facts.nbytes

    @property
    def stale(self) -> bool:
        return self.generation != self.engine.generation  # its engine process has restarted


def load_task(engine: EngineSurface, data: bytes) -> ResidentTask:
    generation, handle = engine.generation, next(_handles)
    task = ResidentTask(handle, engine.load_task(handle, data), generation, engine)
    weakref.finalize(task, engine.release_task, handle)
    return task


class PrefixCache:
    def __init__(self, engine: EngineSurface, read_bytes: Callable[[str], bytes], max_bytes: int):
        self._engine = engine
        self._read_bytes = read_bytes
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, ResidentTask] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # one loader per sha256: concurrent misses load once
        metrics.TIER_BUDGET_BYTES.labels(TIER).set(max_bytes)
        metrics.touch_tier(TIER)  # every series of the tier from the start: /metrics keeps its size

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def peek(self, sha256: str) -> ResidentTask | None:
        """The loaded prefix if resident (counted as a hit), else None; never loads, never blocks long."""
        with self._lock:
            return self._lookup(sha256)

    def get(self, sha256: str) -> ResidentTask:
        """The loaded prefix for `sha256`, loading it from the registry on a miss. Blocking."""
        with self._lock:
            hit = self._lookup(sha256)
            if hit is not None:
                return hit
            loader_lock = self._loading.setdefault(sha256, threading.Lock())
        with loader_lock:
            with self._lock:
                hit = self._lookup(sha256)  # another thread may have loaded it meanwhile
                if hit is not None:
                    return hit
            metrics.TIER_MISSES.labels(TIER).inc()
            try:
                prefix = load_task(self._engine, self._read_bytes(sha256))  # parsed once, by the engine
            except BaseException:
                with self._lock:
                    self._loading.pop(sha256, None)  # the next request tries again
                raise
            with self._lock:
                self._insert(sha256, prefix)
                self._loading.pop(sha256, None)
            return prefix

    def _lookup(self, sha256: str) -> ResidentTask | None:
        prefix = self._entries.get(sha256)
        if prefix is not None and prefix.stale:  # its engine process has restarted
            del self._entries[sha256]
            self._bytes -= prefix.nbytes
            return None
        if prefix is not None:
            self._entries.move_to_end(sha256)
            metrics.TIER_HITS.labels(TIER).inc()
        return prefix

    def _insert(self, sha256: str, prefix: ResidentTask) -> None:
        self._entries[sha256] = prefix
        self._bytes += prefix.nbytes
        # The newest entry stays even when it alone exceeds the bound: the request needs it.
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            evicted_sha, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            metrics.TIER_EVICTIONS.labels(TIER).inc()
            log.debug("evicted prefix %s (%d bytes)", evicted_sha[:12], evicted.nbytes)
        metrics.TIER_BYTES.labels(TIER).set(self._bytes)
        metrics.TIER_ENTRIES.labels(TIER).set(len(self._entries))
