"""The prefix pool: prefixes round-trip through their slots, slots come back only when the last
reference goes (a request in flight keeps its prefix after the cache lets go), growth keeps every
prefix and leaves a forward pass that started on the old storage intact."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from server.engine.prefix_pool import PrefixPool

L, H, D = 3, 4, 8


def _prefix(P: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(L, 2, H, P, D, generator=torch.Generator().manual_seed(seed)).to(dtype)  # [L, 2, H, P, D]


def test_prefix_round_trips_in_the_pool_dtype():
    pool = PrefixPool(L, H, D, "cpu", torch.bfloat16, initial_slots=16)
    kv = _prefix(5)
    entry = pool.add(kv)
    assert entry.prefix_len == 5 and entry.slots.dtype == np.int64
    assert torch.equal(entry.read(), kv.to(torch.bfloat16))
    assert pool.slot_bytes == L * 2 * H * D * 2


def test_storage_rows_are_keys_then_values_per_slot():
    pool = PrefixPool(L, H, D, "cpu", torch.float32, initial_slots=8)
    kv = _prefix(3, seed=1)
    entry = pool.add(kv)
    layer, position = 2, 1
    row = pool.storage[layer, entry.slots[position]]  # [2C]
    assert torch.equal(row, torch.cat([kv[layer, 0, :, position].reshape(-1), kv[layer, 1, :, position].reshape(-1)]))


def test_slots_are_freed_with_the_last_reference():
    pool = PrefixPool(L, H, D, "cpu", torch.float32, initial_slots=10)
    entry = pool.add(_prefix(6))
    held_by_a_request = entry
    del entry
    gc.collect()
    assert pool.used_slots == 6  # the cache let go; the request still holds it
    del held_by_a_request
    gc.collect()
    assert pool.used_slots == 0


def test_freed_slots_are_reused_without_growth():
    pool = PrefixPool(L, H, D, "cpu", torch.float32, initial_slots=8)
    for seed in range(20):
        entry = pool.add(_prefix(7, seed))
        assert torch.equal(entry.read(), _prefix(7, seed))
        del entry
        gc.collect()
    assert pool.capacity == 8


def test_growth_keeps_prefixes_and_the_old_storage_stays_readable():
    pool = PrefixPool(L, H, D, "cpu", torch.float32, initial_slots=4)
    first = pool.add(_prefix(3, seed=1))
    in_flight = pool.storage  # what a batch packed before the growth holds
    second = pool.add(_prefix(9, seed=2))
    assert pool.capacity >= 12 and pool.storage is not in_flight
    assert torch.equal(first.read(), _prefix(3, seed=1)) and torch.equal(second.read(), _prefix(9, seed=2))
    old_rows = in_flight[:, first.slots]  # [L, 3, 2C]
    assert torch.equal(old_rows, pool.storage[:, first.slots])


def test_concurrent_adds_never_share_a_slot():
    pool = PrefixPool(L, H, D, "cpu", torch.float32, initial_slots=4)
    entries, lock = [], threading.Lock()

    def load(seed):
        entry = pool.add(_prefix(5, seed))
        with lock:
            entries.append((seed, entry))

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots = np.concatenate([entry.slots for _, entry in entries])
    assert np.unique(slots).shape[0] == slots.shape[0] == 80
    assert all(torch.equal(entry.read(), _prefix(5, seed)) for seed, entry in entries)


def test_a_prefix_of_the_wrong_geometry_is_refused():
    pool = PrefixPool(L, H, D, "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"expected a prefix of shape \[3, 2, 4, P, 8\], got \[3, 2, 2, 5, 8\]"):
        pool.add(torch.zeros(3, 2, 2, 5, 8))
