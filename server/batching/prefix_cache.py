"""The device-resident prefix cache: an LRU of the tasks loaded in the engine, bounded in bytes, keyed
by the artifact's sha256 (so identical artifacts of different tenants share one copy).

The registry's bytes go to the engine as they are; the engine parses them, once, and says what it
holds (TaskFacts). A request takes a reference to its ResidentTask at admission; eviction only drops
the cache's reference, and the engine frees the task when the last reference goes, so a request in
flight keeps the exact version it was routed to. Entries of an engine process that has since
restarted are stale and load again on their next request.

Reads from the tier below run in a pool of their own (`fetch_workers` at once), never on the event
loop or the batch path; a thread hands the bytes to the engine (`start_load`) and goes on to the next
read without waiting (the engine process takes loads between forward passes). One load per sha256 is
in flight at a time, a `Future` that every request for it awaits: its
failure (a store that is down or timed out) fails those requests together, one store round trip for all
of them, and the next request after it tries again. Pinned tasks (SPEC 6, the operator's choice) are
never evicted by the LRU; they count against the budget like any other.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from server import metrics
from server.engine.surface import EngineSurface, TaskFacts

log = logging.getLogger(__name__)
_handles = itertools.count(1)  # never reused, across engine restarts too
TIER = "device"
# Artifacts handed to the engine and not answered yet: at most this many bytes of them, or one artifact
# however large. Enough for the loads of a full batch (about 55 MiniLM tasks at P=16), few enough that
# the tasks the engine holds beyond the device budget stay few (a 64 MiB bound let its prefix pool
# grow to 1.9x the budget's slots under Zipf at 128 requests in flight).
MAX_BYTES_IN_ENGINE = 8 * 1024 * 1024


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


def resident_task(engine: EngineSurface, handle: int, facts: TaskFacts, generation: int) -> ResidentTask:
    """The cache's reference to a task the engine has loaded; the engine frees it when the last one goes."""
    task = ResidentTask(handle, facts, generation, engine)
    weakref.finalize(task, engine.release_task, handle)
    return task


class PinsOverBudget(ValueError):
    """The pinned tasks alone would exceed the device budget."""


class PrefixCache:
    def __init__(self, engine: EngineSurface, read_bytes: Callable[[str], bytes], max_bytes: int, fetch_workers: int = 4):
        self._engine = engine
        self._read_bytes = read_bytes
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, ResidentTask] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, Future[ResidentTask]] = {}  # one load per sha256: concurrent misses share it
        self._pinned: frozenset[str] = frozenset()
        self._handed = _BytesInFlight(MAX_BYTES_IN_ENGINE)  # loads handed to the engine, not answered yet
        self._loads = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")
        metrics.TIER_BUDGET_BYTES.labels(TIER).set(max_bytes)
        metrics.touch_tier(TIER)  # every series of the tier from the start: /metrics keeps its size

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    @property
    def pinned(self) -> frozenset[str]:
        return self._pinned

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def peek(self, sha256: str) -> ResidentTask | None:
        """The loaded prefix if resident (counted as a hit), else None; never loads, never blocks long."""
        with self._lock:
            return self._lookup(sha256)

    def get(self, sha256: str) -> ResidentTask:
        """The loaded prefix for `sha256`, loading it from the tier below on a miss. Blocking."""
        return self.fetch(sha256).result()

    def fetch(self, sha256: str) -> Future[ResidentTask]:
        """The loaded prefix, as a future: done now when resident, else the one load in flight for it."""
        with self._lock:
            hit = self._lookup(sha256)
            if hit is not None:
                done: Future[ResidentTask] = Future()
                done.set_result(hit)
                return done
            flight = self._loading.get(sha256)
            if flight is None:
                metrics.TIER_MISSES.labels(TIER).inc()
                flight = self._loading[sha256] = Future()
                flight.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel it for the others
                self._loads.submit(self._load, sha256, flight)
            return flight

    def pin(self, sha256s: Iterable[str]) -> None:
        """Makes `sha256s` the pinned set (loading those not resident; blocking); the others go back to
        the LRU. Raises PinsOverBudget, pinning nothing new, when they would not fit the budget together."""
        wanted = frozenset(sha256s)
        with self._lock:  # resident ones are not looked up (a periodic re-pin is not traffic: no hits counted)
            resident = {sha: self._entries[sha] for sha in wanted if sha in self._entries and not self._entries[sha].stale}
        loaded = [resident.get(sha) or self.fetch(sha).result() for sha in wanted]  # a store error propagates: nothing changes
        needed = sum(task.nbytes for task in loaded)
        if needed > self.max_bytes:
            raise PinsOverBudget(f"expected pinned tasks within the device budget of {self.max_bytes} bytes, got {needed} bytes")
        with self._lock:
            self._pinned = wanted
            for sha, task in zip(wanted, loaded):
                if sha not in self._entries:  # evicted between its load and now
                    self._insert(sha, task)

    def close(self) -> None:
        self._loads.shutdown(wait=False, cancel_futures=True)

    def _load(self, sha256: str, flight: Future[ResidentTask]) -> None:
        """On a fetch thread: the read from the tier below, then the engine's load, which this thread
        does not wait for (the next fetch starts while the engine process is in a forward pass)."""
        try:
            data = self._read_bytes(sha256)
        except BaseException as error:  # noqa: BLE001 — handed to every waiter; the next request tries again
            self._settle(sha256, flight, error=error)
            return
        self._handed.acquire(len(data))  # past the bound, this thread waits for the engine to answer some
        generation, handle = self._engine.generation, next(_handles)

        def loaded(facts: Future[TaskFacts]) -> None:
            self._handed.release(len(data))
            if facts.exception() is not None:
                self._settle(sha256, flight, error=facts.exception())
            else:
                self._settle(sha256, flight, task=resident_task(self._engine, handle, facts.result(), generation))

        try:
            self._engine.start_load(handle, data).add_done_callback(loaded)  # parsed once, by the engine
        except BaseException as error:  # noqa: BLE001 — as above
            self._handed.release(len(data))
            self._settle(sha256, flight, error=error)

    def _settle(self, sha256: str, flight: Future[ResidentTask], task: ResidentTask | None = None,
                error: BaseException | None = None) -> None:
        with self._lock:
            if task is not None:
                self._insert(sha256, task)
            self._loading.pop(sha256, None)  # after a failure, the next request tries again
        if task is not None:
            flight.set_result(task)
        else:
            flight.set_exception(error)

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
        # The newest entry stays even when it alone exceeds the bound (the request needs it), and
        # pinned ones always stay: met at the LRU end, they move to the other.
        kept = 0
        while self._bytes > self.max_bytes and kept < len(self._entries):
            oldest = next(iter(self._entries))
            if oldest == sha256 or oldest in self._pinned:
                self._entries.move_to_end(oldest)
                kept += 1
                continue
            evicted = self._entries.pop(oldest)
            self._bytes -= evicted.nbytes
            metrics.TIER_EVICTIONS.labels(TIER).inc()
            log.debug("evicted prefix %s (%d bytes)", oldest[:12], evicted.nbytes)
        metrics.TIER_BYTES.labels(TIER).set(self._bytes)
        metrics.TIER_ENTRIES.labels(TIER).set(len(self._entries))


class _BytesInFlight:
    """A bound on bytes held at once: acquire waits while others hold any and this would pass the bound."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.held = max_bytes, 0
        self._changed = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + nbytes <= self.max_bytes)
            self.held += nbytes

    def release(self, nbytes: int) -> None:
        with self._changed:
            self.held -= nbytes
            self._changed.notify_all()
