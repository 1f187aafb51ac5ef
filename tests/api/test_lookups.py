"""The registry lookups cache: hits never wait on the database, an expired entry is served once more
while a single read refreshes it, concurrent misses share one read, a task deleted elsewhere stops
being served, and local writes invalidate at once.

Time is a clock the tests advance, and a registry read runs until the test lets it finish: nothing
here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from harness.processes import wait_until_async
from server.api.lookups import RETRY_AFTER_FAILURE_S, RegistryLookups
from server.registry import Change, NotFound, RegistryUnavailable

TTL_S = 5.0
WAIT_S = 30.0  # for a read in another thread: only a broken test waits this long


def _opened() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeRegistry:
    """Stands in for the registry's task and key reads. A read sees the state as of when it began (as a
    database transaction does); it waits at the gate that was current when it began, so a test can
    hold a read in flight; the registry can be taken down or made to forget the task."""

    state: int = 0
    down: bool = False
    deleted: bool = False
    reads: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=_opened)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold_reads(self) -> threading.Event:
        """Reads that begin from now on wait until the returned event is set."""
        self.gate = threading.Event()
        return self.gate

    def get_task(self, tenant, task):
        with self.lock:
            self.reads.append(task)
            seen, gate = self.state, self.gate
        assert gate.wait(WAIT_S), "a held read was never let through"
        if self.down:
            raise RegistryUnavailable("database", "connection refused")
        if self.deleted:
            raise NotFound(f"task {task!r} not found")
        return f"{task}@{seen}"

    def tenant_for_key(self, api_key):
        with self.lock:
            self.reads.append("key")
        return None if api_key == "wrong" else f"tenant-of-{api_key}"


def _lookups(registry) -> tuple[RegistryLookups, FakeClock]:
    clock = FakeClock()
    lookups = RegistryLookups(registry, ttl_s=TTL_S, clock=clock)
    lookups._pick = lambda record: record  # routing is tested in tests/registry
    return lookups, clock


async def reads_done(lookups: RegistryLookups) -> None:
    """Until the reads in flight have finished and stored (or dropped) what they read: each read's own
    done-callback runs before the ones `gather` adds."""
    await asyncio.wait_for(asyncio.gather(*list(lookups._reads.values()), return_exceptions=True), WAIT_S)


def test_concurrent_misses_share_one_read_and_hits_read_nothing():
    registry = FakeRegistry()
    lookups, _ = _lookups(registry)

    async def main():
        held = registry.hold_reads()
        first = asyncio.gather(*(lookups.version("t", "a") for _ in range(50)))
        await wait_until_async(lambda: registry.reads, WAIT_S, "the first miss to read")
        held.set()  # all fifty were waiting on the one read
        first = await first
        again = await asyncio.gather(*(lookups.version("t", "a") for _ in range(50)))
        return first, again

    first, again = asyncio.run(main())
    assert set(first) == set(again) == {"a@0"}
    assert registry.reads == ["a"]


def test_an_expired_entry_is_served_while_one_read_refreshes_it():
    registry = FakeRegistry()
    lookups, clock = _lookups(registry)

    async def main():
        assert await lookups.version("t", "a") == "a@0"
        clock.advance(TTL_S + 1)
        registry.state = 1
        held = registry.hold_reads()
        # Twenty hits while the refresh is held: none may wait for it (wait_for fails the test if one does).
        served = await asyncio.wait_for(asyncio.gather(*(lookups.version("t", "a") for _ in range(20))), WAIT_S)
        held.set()
        await reads_done(lookups)
        return served, len(registry.reads), await lookups.version("t", "a")

    served, reads, later = asyncio.run(main())
    assert set(served) == {"a@0"}  # nobody waited for the refresh
    assert reads == 2  # twenty requests on an expired entry: one refresh
    assert later == "a@1"


def test_a_task_deleted_elsewhere_stops_being_served():
    registry = FakeRegistry()
    lookups, clock = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.deleted = True
        clock.advance(TTL_S + 1)
        assert await lookups.version("t", "a") == "a@0"  # stale, while the refresh learns of the deletion
        await reads_done(lookups)
        with pytest.raises(NotFound):
            await lookups.version("t", "a")

    asyncio.run(main())


def test_local_writes_invalidate_at_once_and_unknown_keys_are_remembered():
    registry = FakeRegistry()
    lookups, _ = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.state = 2
        lookups.invalidate_task("t", "a")
        assert await lookups.version("t", "a") == "a@2"
        assert await lookups.tenant("wrong") is None and await lookups.tenant("wrong") is None
        assert await lookups.tenant("k1") == "tenant-of-k1"

    asyncio.run(main())
    assert registry.reads == ["a", "a", "key", "key"]


def test_an_invalidation_during_a_refresh_is_not_undone_by_it():
    registry = FakeRegistry()
    lookups, clock = _lookups(registry)

    async def main():
        assert await lookups.version("t", "a") == "a@0"
        clock.advance(TTL_S + 1)
        old_refresh = registry.hold_reads()
        assert await lookups.version("t", "a") == "a@0"  # expired: this hit starts a refresh that reads state 0
        await wait_until_async(lambda: len(registry.reads) == 2, WAIT_S, "the refresh to begin its read")
        registry.gate = _opened()  # reads from here on are not held
        registry.state = 1  # a write commits while that refresh is in flight...
        lookups.invalidate_task("t", "a")  # ...and its invalidation arrives
        after = await lookups.version("t", "a")  # a new read, not the one in flight
        old_refresh.set()
        await reads_done(lookups)  # the old refresh finishes now and must not store state 0
        return after, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@1", "a@1")


def test_a_failed_refresh_serves_the_last_record_and_backs_off():
    registry = FakeRegistry()
    lookups, clock = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.down = True
        clock.advance(TTL_S + 1)
        served = [await lookups.version("t", "a")]  # starts a refresh, which fails
        await reads_done(lookups)
        clock.advance(RETRY_AFTER_FAILURE_S / 2)
        for _ in range(49):  # 49 more hits within the backoff: no more refresh attempts
            served.append(await lookups.version("t", "a"))
        await reads_done(lookups)
        attempts = len(registry.reads) - 1
        registry.down, registry.state = False, 1
        clock.advance(RETRY_AFTER_FAILURE_S)
        await lookups.version("t", "a")  # past the backoff: this hit refreshes
        await reads_done(lookups)
        return set(served), attempts, await lookups.version("t", "a")

    served, attempts, recovered = asyncio.run(main())
    assert served == {"a@0"} and attempts == 1 and recovered == "a@1"


def test_a_miss_while_the_registry_is_down_fails_fast_then_retries():
    registry = FakeRegistry(down=True)
    lookups, clock = _lookups(registry)

    async def main():
        for _ in range(20):
            with pytest.raises(RegistryUnavailable):
                await lookups.version("t", "a")
        reads_while_down = len(registry.reads)
        registry.down = False
        clock.advance(RETRY_AFTER_FAILURE_S / 2)
        with pytest.raises(RegistryUnavailable):  # still within the backoff
            await lookups.version("t", "a")
        clock.advance(RETRY_AFTER_FAILURE_S)
        return reads_while_down, await lookups.version("t", "a")

    assert asyncio.run(main()) == (1, "a@0")


def test_mark_all_stale_refreshes_every_entry_on_its_next_hit():
    registry = FakeRegistry()
    lookups, _ = _lookups(registry)

    async def main():
        await lookups.version("t", "a")
        registry.state = 1
        lookups.mark_all_stale()
        stale = await lookups.version("t", "a")  # served once more while the refresh runs
        await reads_done(lookups)
        return stale, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@0", "a@1")


def test_changes_from_another_thread_invalidate_on_the_loop():
    registry = FakeRegistry()
    lookups, _ = _lookups(registry)

    async def main():
        loop = asyncio.get_running_loop()
        lookups.attach(loop)
        await lookups.version("t", "a")
        registry.state = 1
        applied = asyncio.Event()

        def listener() -> None:
            lookups.apply_change_threadsafe(Change("task", "t", "a"))
            loop.call_soon_threadsafe(applied.set)  # runs after the change: the loop takes callbacks in order

        threading.Thread(target=listener).start()
        await asyncio.wait_for(applied.wait(), WAIT_S)
        fresh = await lookups.version("t", "a")
        registry.state = 2
        lookups.apply_change(Change("tenant", "t"))  # a tenant change drops its tasks too
        return fresh, await lookups.version("t", "a")

    assert asyncio.run(main()) == ("a@1", "a@2")
