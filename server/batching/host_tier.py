"""The host-memory tier (SPEC 6): artifact bytes kept in this process's memory, between the engine's
device cache (prefix_cache.py) and the registry's blob store (whose disk cache is the tier below).

An LRU bounded in bytes (`PREFIX_SERVER_HOST_CACHE_BYTES`), keyed by the artifact's sha256. A task
evicted from the device tier loads again from here without a blob-store round trip (on CPU the
parse is then the whole cost). Everything that reaches the store goes through `get`, so the fetch
latency histogram sees every cold fetch. The bytes are immutable (content-addressed), so an entry is
never stale. A budget of 0 keeps nothing and only counts.

Each entry is kept in an anonymous memory mapping of its own, not a `bytes` object: artifacts are 0.1
to 25 MB and come and go with the LRU from several fetch threads, and glibc's malloc serves such sizes
from per-thread heaps whose holes it seldom returns; an unmapped entry's pages go back to the system at
once. Measured with 5,000 MiniLM artifacts (720 MiB) churned under Zipf by 4 threads: the process grew
by 836 MiB as `bytes`, 795 MiB as mappings (the same as one thread's `bytes`). A hit hands out a copy
(a memcpy: 15 us for 150 KB).
"""

from __future__ import annotations

import mmap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from server import metrics

TIER = "host"


class HostTier:
    def __init__(self, read_bytes: Callable[[str], bytes], max_bytes: int):
        self._read_bytes = read_bytes
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        metrics.TIER_BUDGET_BYTES.labels(TIER).set(max_bytes)
        metrics.touch_tier(TIER)  # every series of the tier from the start: /metrics keeps its size
        self._publish()

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sha256: str) -> bytes:
        """The artifact's bytes: from memory, else fetched from the store (and kept within the budget).
        Blocking; the prefix cache calls it once per sha256 at a time, from its loader threads."""
        with self._lock:
            kept = self._entries.get(sha256)
            if kept is not None:
                self._entries.move_to_end(sha256)
                metrics.TIER_HITS.labels(TIER).inc()
                return kept[:]
        metrics.TIER_MISSES.labels(TIER).inc()
        started = time.perf_counter()
        data = self._read_bytes(sha256)
        metrics.STORE_FETCH_SECONDS.observe(time.perf_counter() - started)
        self._insert(sha256, data)
        return data

    def _insert(self, sha256: str, data: bytes) -> None:
        if not 0 < len(data) <= self.max_bytes:
            return  # larger than the whole tier (or the tier is off): served, not kept
        kept = mmap.mmap(-1, len(data))
        kept.write(data)
        with self._lock:
            if sha256 in self._entries:
                return
            self._entries[sha256] = kept
            self._bytes += len(kept)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
                evicted.close()
                metrics.TIER_EVICTIONS.labels(TIER).inc()
            self._publish()

    def _publish(self) -> None:
        metrics.TIER_BYTES.labels(TIER).set(self._bytes)
        metrics.TIER_ENTRIES.labels(TIER).set(len(self._entries))
