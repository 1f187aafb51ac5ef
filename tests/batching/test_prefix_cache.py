"""PrefixCache on its own, with a byte bound a few prefixes wide: LRU eviction by bytes, the newest
entry kept even when it alone is over the bound, and a request in flight keeping the prefix the
cache has since evicted (its scores unchanged); pinned prefixes, which the LRU never evicts; fetch
threads that hand a load to the engine and go on to the next fetch."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from prometheus_client import REGISTRY

from harness.processes import wait_until
from server.artifact import artifact_to_bytes
from server.batching import PinsOverBudget, PrefixCache
from server.engine import TokenBatch
from tests.helpers import make_artifact


def _cache(engine, prefix_lens, max_bytes):
    blobs = {f"sha{i}": artifact_to_bytes(make_artifact(engine.shape, p, 2, seed=i)) for i, p in enumerate(prefix_lens)}
    reads = []

    def read(sha):
        reads.append(sha)
        return blobs[sha]

    return PrefixCache(engine, read, max_bytes), reads


def _size(engine, prefix_len):
    return engine.task(engine.load(make_artifact(engine.shape, prefix_len, 2))).nbytes


def test_eviction_is_by_bytes_least_recently_used_first(tiny_engine):
    size = _size(tiny_engine, 8)
    cache, reads = _cache(tiny_engine, [8, 8, 8], max_bytes=2 * size)  # room for two
    cache.get("sha0"), cache.get("sha1")
    assert cache.resident_bytes == 2 * size
    cache.get("sha0")  # now sha1 is the least recently used
    cache.get("sha2")
    assert "sha0" in cache and "sha2" in cache and "sha1" not in cache
    assert cache.resident_bytes == 2 * size
    cache.get("sha1")  # evicted: read from the registry again
    assert reads == ["sha0", "sha1", "sha2", "sha1"]


def test_a_big_prefix_evicts_several_small_ones(tiny_engine):
    small, big = _size(tiny_engine, 2), _size(tiny_engine, 40)
    cache, _ = _cache(tiny_engine, [2, 2, 2, 40], max_bytes=big + small)
    for sha in ("sha0", "sha1", "sha2"):
        cache.get(sha)
    cache.get("sha3")
    assert [s for s in ("sha0", "sha1", "sha2", "sha3") if s in cache] == ["sha2", "sha3"]
    assert cache.resident_bytes == big + small <= cache.max_bytes


def test_the_newest_entry_stays_even_over_the_bound(tiny_engine):
    cache, _ = _cache(tiny_engine, [8, 16], max_bytes=1)
    cache.get("sha0")
    assert "sha0" in cache
    cache.get("sha1")
    assert "sha1" in cache and "sha0" not in cache and cache.resident_bytes == _size(tiny_engine, 16)


def test_a_request_in_flight_keeps_its_evicted_prefix(tiny_engine):
    size = _size(tiny_engine, 8)
    cache, _ = _cache(tiny_engine, [8, 8], max_bytes=size)
    held = cache.get("sha0")  # what a request takes at admission
    encoded = tiny_engine.encode(["the request in flight"], held.prefix_len)[0]

    def scores(task):
        return tiny_engine.score(TokenBatch.of([encoded], [task.handle])).rows.tolist()

    before = scores(held)
    other = cache.get("sha1")  # evicts sha0 from the cache
    assert "sha0" not in cache
    # The evicted prefix's pool slots are still its own: loading another prefix did not reuse them.
    assert scores(other) != before
    assert scores(held) == before
    assert cache.get("sha0") is not held  # a later request loads it afresh


def test_pinned_prefixes_outlive_the_lru_and_count_against_the_budget(tiny_engine):
    size = _size(tiny_engine, 8)
    cache, reads = _cache(tiny_engine, [8, 8, 8, 8], max_bytes=2 * size)  # room for two
    cache.pin({"sha0"})
    for sha in ("sha1", "sha2", "sha3", "sha1"):  # without the pin, each of these would have evicted sha0
        cache.get(sha)
    assert "sha0" in cache and cache.resident_bytes == 2 * size
    assert reads == ["sha0", "sha1", "sha2", "sha3", "sha1"]
    cache.pin(set())  # unpinned: the LRU's again, two misses from its end
    cache.get("sha2"), cache.get("sha3")
    assert "sha0" not in cache


def test_pins_beyond_the_budget_are_refused_and_the_old_ones_stay(tiny_engine):
    size = _size(tiny_engine, 8)
    cache, _ = _cache(tiny_engine, [8, 8, 8], max_bytes=2 * size)
    cache.pin({"sha0"})
    with pytest.raises(PinsOverBudget, match=f"expected pinned tasks within the device budget of {2 * size} bytes, got {3 * size} bytes"):
        cache.pin({"sha0", "sha1", "sha2"})
    assert cache.pinned == {"sha0"}
    cache.get("sha1"), cache.get("sha2")
    assert "sha0" in cache


def test_pinning_again_what_is_resident_is_not_counted_as_traffic(tiny_engine):
    cache, reads = _cache(tiny_engine, [8], max_bytes=1 << 20)
    cache.pin({"sha0"})
    hits = REGISTRY.get_sample_value("prefix_server_tier_hits_total", {"tier": "device"})
    cache.pin({"sha0"})
    assert REGISTRY.get_sample_value("prefix_server_tier_hits_total", {"tier": "device"}) == hits
    assert reads == ["sha0"]


class HeldLoads:
    """The engine, its loads answered only when the test says (as the engine process answers them
    after the forward pass it is in)."""

    def __init__(self, engine):
        self.engine, self.held = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def start_load(self, handle, data):
        pending = Future()
        self.held.append((pending, handle, data))
        return pending

    def answer_all(self):
        for pending, handle, data in self.held:
            pending.set_result(self.engine.load_task(handle, data))


def test_a_fetch_thread_does_not_wait_for_the_engine_to_take_a_load(tiny_engine):
    held = HeldLoads(tiny_engine)
    blobs = {f"sha{i}": artifact_to_bytes(make_artifact(tiny_engine.shape, 8, 2, seed=i)) for i in range(3)}
    reads = []
    cache = PrefixCache(held, lambda sha: reads.append(sha) or blobs[sha], 1 << 20, fetch_workers=1)
    flights = [cache.fetch(sha) for sha in blobs]
    wait_until(lambda: len(held.held) == 3, 30, "three loads sent through one fetch thread")
    assert sorted(reads) == sorted(blobs) and not any(f.done() for f in flights)
    held.answer_all()
    assert all(f.result(timeout=30).prefix_len == 8 for f in flights) and all(sha in cache for sha in blobs)
