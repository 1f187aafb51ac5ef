"""The registry lookups cache: hits never wait on the database, an expired entry is served once more
while a single read refreshes it, concurrent misses share one read, a task deleted elsewhere stops
being served, and local writes invalidate at once."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

from server.api.lookups import RETRY_AFTER_FAILURE_S, RegistryLookups
from server.registry import Change, NotFound, RegistryUnavailable


@dataclass
class CountingRegistry:
    """Stands in for the registry: counts reads, can be slowed down and made to forget a task."""

    reads: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    deleted: bool = False
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_task(self, tenant, task):
        with self.lock:
            self.reads.append(task)
        time.sleep(self.delay_s)
        if self.deleted:
            raise NotFound(f"task {task!r} not found")
        return f"{task}@{self.generation}"

    def tenant_for_key(self, api_key):
        with self.lock:
            self.reads.append("key")
        return None if api_key == "wrong" else f"tenant-of-{api_key}"


def _lookups(registry, ttl_s=60.0):
    lookups = RegistryLookups(registry, ttl_s=ttl_s)
    lookups._pick = lambda record: record  # routing is tested in tests/registry
    return lookups


def test_concurrent_misses_share_one_read_and_hits_read_nothing():
    registry = CountingRegistry(delay_s=0.05)
    lookups = _lookups(registry)

    async def main():
        first = await asyncio.gather(*(lookups.version("t", "a") for _ in range(50)))
        again = await asyncio.gather(*(lookups.version("t", "a") for _ in range(50)))
        return first, again

    first, again = asyncio.run(main())
    assert set(first) == set(again) == {"a@0"}
    assert registry.reads == ["a"]


def test_an_expired_entry_is_served_while_one_read_refreshes_it():
    registry = CountingRegistry()
    lookups = _lookups(registry, ttl_s=0.01)

    async def main():
        assert await lookups.version("t", "a") == "a@0"
        await asyncio.sleep(0.02)
        registry.generation, registry.delay_s = 1, 0.05
        served = await asyncio.gather(*(lookups.version("t", "a") for _ in range(20)))
        await asyncio.sleep(0.1)
        reads = len(registry.reads)
        lookups.ttl_s = 60.0
        return served, reads, await lookups.version("t", "a")

    served, reads, later = asyncio.run(main())
    assert set(served) == {"a@0"}  # nobody waited for the refresh
    assert reads == 2  # twenty requests on an expired entry: one refresh
    assert later == "a@1"


def test_a_task_deleted_elsewhere_stops_being_served():
    registry = CountingRegistry()
    lookups = _lookups(registry, ttl_s=0.01)

    async def main():
        await lookups.version("t", "a")
        registry.deleted = True
        await asyncio.sleep(0.02)
        assert await lookups.version("t", "a") == "a@0"  # stale, while the refresh learns of the deletion
        await asyncio.sleep(0.05)
        with pytest.raises(NotFound):
            await lookups.version("t", "a")

    asyncio.run(main())


def test_local_writes_invalidate_at_once_and_unknown_keys_are_remembered():
    registry = CountingRegistry()
    lookups = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.generation = 2
        lookups.invalidate_task("t", "a")
        assert await lookups.version("t", "a") == "a@2"
        assert await lookups.tenant("wrong") is None and await lookups.tenant("wrong") is None
        assert await lookups.tenant("k1") == "tenant-of-k1"

    asyncio.run(main())
    assert registry.reads == ["a", "a", "key", "key"]


@dataclass
class SnapshotRegistry:
    """A registry whose reads see the state as of when they began (as a database transaction does),
    slowly, and that can be taken down."""

    state: int = 0
    delay_s: float = 0.0
    down: bool = False
    reads: int = 0

    def get_task(self, tenant, task):
        self.reads += 1
        seen = self.state
        time.sleep(self.delay_s)
        if self.down:
            raise RegistryUnavailable("database", "connection refused")
        return f"{task}@{seen}"


def test_an_invalidation_during_a_refresh_is_not_undone_by_it():
    registry = SnapshotRegistry(delay_s=0.1)
    lookups = _lookups(registry, ttl_s=0.01)

    async def main():
        assert await lookups.version("t", "a") == "a@0"
        await asyncio.sleep(0.02)  # expired: the next hit starts a refresh that reads state 0
        assert await lookups.version("t", "a") == "a@0"
        await asyncio.sleep(0.03)
        registry.state = 1  # a write commits while that refresh is in flight...
        lookups.invalidate_task("t", "a")  # ...and its invalidation arrives
        lookups.ttl_s = 60.0
        after = await lookups.version("t", "a")  # a new read, not the one in flight
        await asyncio.sleep(0.15)  # the old refresh finishes now and must not store state 0
        return after, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@1", "a@1")


def test_a_failed_refresh_serves_the_last_record_and_backs_off():
    registry = SnapshotRegistry()
    lookups = _lookups(registry, ttl_s=0.01)

    async def main():
        await lookups.version("t", "a")
        registry.down = True
        await asyncio.sleep(0.02)
        served = []
        for _ in range(50):  # 50 hits within the backoff: one refresh attempt, not fifty
            served.append(await lookups.version("t", "a"))
            await asyncio.sleep(0.002)
        attempts = registry.reads - 1
        registry.down, registry.state = False, 1
        await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.05)
        await lookups.version("t", "a")  # past the backoff: this hit refreshes
        await asyncio.sleep(0.02)
        return set(served), attempts, await lookups.version("t", "a")

    served, attempts, recovered = asyncio.run(main())
    assert served == {"a@0"} and attempts == 1 and recovered == "a@1"


def test_a_miss_while_the_registry_is_down_fails_fast_then_retries():
    registry = SnapshotRegistry(down=True)
    lookups = _lookups(registry)

    async def main():
        for _ in range(20):
            with pytest.raises(RegistryUnavailable):
                await lookups.version("t", "a")
        reads_while_down = registry.reads
        registry.down = False
        await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.05)
        return reads_while_down, await lookups.version("t", "a")

    assert asyncio.run(main()) == (1, "a@0")


def test_mark_all_stale_refreshes_every_entry_on_its_next_hit():
    registry = SnapshotRegistry()
    lookups = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.state = 1
        lookups.mark_all_stale()
        stale = await lookups.version("t", "a")  # served once more while the refresh runs
        await asyncio.sleep(0.02)
        return stale, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@0", "a@1")


def test_changes_from_another_thread_invalidate_on_the_loop():
    registry = SnapshotRegistry()
    lookups = _lookups(registry)

    async def main():
        lookups.attach(asyncio.get_running_loop())
        await lookups.version("t", "a")
        registry.state = 1
        listener = threading.Thread(target=lookups.apply_change_threadsafe, args=(Change("task", "t", "a"),))
        listener.start()
        listener.join()
        await asyncio.sleep(0.01)
        fresh = await lookups.version("t", "a")
        registry.state = 2
        lookups.apply_change(Change("tenant", "t"))  # a tenant change drops its tasks too
        return fresh, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@1", "a@2")
