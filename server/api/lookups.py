"""A short-lived cache in front of the registry's two per-request reads: API key -> tenant and
task -> route. Every classify request needs both; without the cache each costs a database round trip
on a thread. Writes made through this process invalidate at once (a new version serves as soon as
its upload returned 201); writes by another process are seen within `ttl_s`."""

from __future__ import annotations

import hashlib
import random
import threading
import time

from server.registry import Registry, TaskRecord, Tenant, VersionRecord
from server.registry.routing import pick_version


class RegistryLookups:
    def __init__(self, registry: Registry, ttl_s: float = 1.0, max_entries: int = 100_000):
        self.registry, self.ttl_s, self.max_entries = registry, ttl_s, max_entries
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}
        self._tasks: dict[tuple[str, str], tuple[float, TaskRecord]] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()

    def cached_tenant(self, api_key: str) -> tuple[bool, Tenant | None]:
        """(hit, tenant) without touching the database; a miss is answered by tenant_for_key."""
        cached = self._tenants.get(_key_digest(api_key))
        if cached is not None and cached[0] > time.monotonic():
            return True, cached[1]
        return False, None

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        tenant = self.registry.tenant_for_key(api_key)
        self._store(self._tenants, _key_digest(api_key), tenant)
        return tenant

    def cached_version(self, tenant: str, task: str) -> VersionRecord | None:
        """The routed version from the cached route, or None on a miss (then call resolve)."""
        cached = self._tasks.get((tenant, task))
        if cached is None or cached[0] <= time.monotonic():
            return None
        return self._pick(cached[1])

    def resolve(self, tenant: str, task: str) -> VersionRecord:
        record = self.registry.get_task(tenant, task)  # NotFound is not cached: uploads appear at once
        self._store(self._tasks, (tenant, task), record)
        return self._pick(record)

    def _pick(self, record: TaskRecord) -> VersionRecord:
        version = record.route.pinned
        if version is None:
            with self._lock:
                version = pick_version(record.route, self._rng)
        return next(v for v in record.versions if v.version == version)

    def invalidate_task(self, tenant: str, task: str) -> None:
        self._tasks.pop((tenant, task), None)

    def _store(self, table: dict, key, value) -> None:
        with self._lock:
            if len(table) >= self.max_entries:
                table.clear()  # crude but bounded: a full cache simply starts over
            table[key] = (time.monotonic() + self.ttl_s, value)


def _key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()  # raw keys are never kept in memory
