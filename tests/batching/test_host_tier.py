"""The host tier (SPEC 6) on its own and under the device tier: an LRU of artifact bytes bounded in
bytes, a task the device evicted loading again without the store, the tiers' metrics per tier."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from server.artifact import artifact_to_bytes
from server.batching import PrefixCache
from server.batching.host_tier import HostTier
from server.engine import TokenBatch
from tests.helpers import make_artifact


class Store:
    """The blob store's reads, counted."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs, self.reads = blobs, []
        self._lock = threading.Lock()

    def __call__(self, sha: str) -> bytes:
        with self._lock:
            self.reads.append(sha)
        return self.blobs[sha]


def sample(name: str, tier: str) -> float:
    return REGISTRY.get_sample_value(name, {"tier": tier}) or 0.0


def test_bytes_are_kept_within_the_budget_least_recently_used_first():
    store = Store({f"sha{i}": bytes([i]) * 100 for i in range(4)})
    host = HostTier(store, max_bytes=250)  # room for two
    evictions = sample("prefix_server_tier_evictions_total", "host")
    assert host.get("sha0") == store.blobs["sha0"] and host.get("sha1") == store.blobs["sha1"]
    host.get("sha0")  # a hit: sha1 is now the least recently used
    host.get("sha2")
    assert "sha0" in host and "sha2" in host and "sha1" not in host
    assert host.resident_bytes == 200 <= host.max_bytes
    assert store.reads == ["sha0", "sha1", "sha2"]
    assert sample("prefix_server_tier_evictions_total", "host") == evictions + 1
    assert sample("prefix_server_tier_bytes", "host") == 200 and sample("prefix_server_tier_entries", "host") == 2


def test_an_artifact_larger_than_the_budget_is_served_not_kept():
    store = Store({"big": b"x" * 300, "small": b"y" * 10})
    host = HostTier(store, max_bytes=250)
    host.get("small")
    assert host.get("big") == b"x" * 300 and "big" not in host and "small" in host


def test_a_zero_budget_keeps_nothing_and_still_times_every_fetch():
    store = Store({"a": b"a" * 10})
    host = HostTier(store, max_bytes=0)
    fetches = REGISTRY.get_sample_value("prefix_server_store_fetch_seconds_count") or 0.0
    host.get("a"), host.get("a")
    assert len(host) == 0 and store.reads == ["a", "a"]
    assert REGISTRY.get_sample_value("prefix_server_store_fetch_seconds_count") == fetches + 2


def test_a_task_the_device_evicted_loads_again_from_host_memory(tiny_engine):
    blobs = {f"sha{i}": artifact_to_bytes(make_artifact(tiny_engine.shape, 8, 2, seed=i)) for i in range(3)}
    store = Store(blobs)
    host = HostTier(store, max_bytes=10 * max(len(b) for b in blobs.values()))
    size = tiny_engine.task(tiny_engine.load(make_artifact(tiny_engine.shape, 8, 2))).nbytes
    device = PrefixCache(tiny_engine, host.get, max_bytes=size)  # one task on the device
    encoded = tiny_engine.encode(["a plain sentence"], 8)
    first = tiny_engine.score(TokenBatch.of(encoded, [device.get("sha0").handle]))
    device.get("sha1"), device.get("sha2")  # each evicts the one before
    assert "sha0" not in device and "sha0" in host
    host_hits = sample("prefix_server_tier_hits_total", "host")
    again = tiny_engine.score(TokenBatch.of(encoded, [device.get("sha0").handle]))
    assert store.reads == ["sha0", "sha1", "sha2"]  # no second read of sha0 from the store
    assert sample("prefix_server_tier_hits_total", "host") == host_hits + 1
    assert again.rows.tolist() == first.rows.tolist()  # the same answer after eviction and reload
