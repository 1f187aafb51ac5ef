"""The device-resident prefix cache: an LRU of loaded prefixes bounded in bytes, keyed by the
artifact's sha256 (so identical artifacts of different tenants share one copy).

A request takes a reference to its LoadedTask at admission; eviction only drops the cache's
reference, so a request in flight keeps the exact version it was routed to. Entries of an engine
process that has since restarted are stale and load again on their next request.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from server import metrics
from server.artifact import read_artifact
from server.engine.surface import EngineSurface, LoadedTask

log = logging.getLogger(__name__)


class PrefixCache:
    def __init__(self, engine: EngineSurface, read_bytes: Callable[[str], bytes], max_bytes: int):
        self._engine = engine
        self._read_bytes = read_bytes
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, LoadedTask] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # one loader per sha256: concurrent misses load once

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def peek(self, sha256: str) -> LoadedTask | None:
        """The loaded prefix if resident (counted as a hit), else None; never loads, never blocks long."""
        with self._lock:
            return self._lookup(sha256)

    def get(self, sha256: str) -> LoadedTask:
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
            metrics.CACHE_MISSES.inc()
            data = self._read_bytes(sha256)
            prefix = self._engine.load_prefix(read_artifact(data, self._engine.shape), data)  # parsed once here
            with self._lock:
                self._insert(sha256, prefix)
                self._loading.pop(sha256, None)
            return prefix

    def _lookup(self, sha256: str) -> LoadedTask | None:
        prefix = self._entries.get(sha256)
        if prefix is not None and prefix.stale:  # its engine process has restarted
            del self._entries[sha256]
            self._bytes -= prefix.nbytes
            return None
        if prefix is not None:
            self._entries.move_to_end(sha256)
            metrics.CACHE_HITS.inc()
        return prefix

    def _insert(self, sha256: str, prefix: LoadedTask) -> None:
        self._entries[sha256] = prefix
        self._bytes += prefix.nbytes
        # The newest entry stays even when it alone exceeds the bound: the request needs it.
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            evicted_sha, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            metrics.CACHE_EVICTIONS.inc()
            log.debug("evicted prefix %s (%d bytes)", evicted_sha[:12], evicted.nbytes)
        metrics.CACHE_BYTES.set(self._bytes)
        metrics.CACHE_ENTRIES.set(len(self._entries))
