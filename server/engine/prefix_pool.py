"""The device-resident prefix pool: every loaded prefix's keys and values live in one tensor, so a
batch gathers all its rows' prefixes by index, one gather per layer, with no per-row Python work.

Storage is `[L, slots, 2C]`: one slot is one prefix position, holding that position's keys and
values for every head (`[2, H, D]` flattened). A prefix of length P owns P slots, anywhere in the
pool (the gather index says where), so freeing never fragments it. Slots are handed back when the
last reference to their PoolEntry goes away, i.e. after the cache has evicted the prefix AND every
request routed to it has finished: a request in flight keeps its slots.

The pool grows when it is full (by half, at least what is asked for): the new tensor is a copy, and
a forward pass that started on the old one keeps it alive until it ends, with every slot it needs.
Slots are written once, at load, and never change while they are in use.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from server.artifact.prefix import NUMPY_FLOATS


@dataclass(frozen=True, eq=False)
class PoolEntry:
    """The slots of one loaded prefix. Dropping the last reference frees them."""

    slots: np.ndarray  # [P] int64, on the host: built into each batch's gather index
    pool: PrefixPool

    @property
    def prefix_len(self) -> int:
        return self.slots.shape[0]

    def read(self) -> torch.Tensor:
        """The prefix back in artifact layout, [L, 2, H, P, D] (tests and tools; not used by serving)."""
        return self.pool.read(self)


class PrefixPool:
    def __init__(self, num_layers: int, num_heads: int, head_dim: int, device, dtype, initial_slots: int = 1024):
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.device, self.dtype = torch.device(device), dtype
        self._lock = threading.Lock()
        # Never-written slots are never gathered, so empty (not zeroed) storage: on the CPU its pages
        # stay uncommitted until a prefix lands in them.
        self._storage = torch.empty(num_layers, initial_slots, 2 * num_heads * head_dim, device=device, dtype=dtype)
        self._free: list[int] = list(range(initial_slots - 1, -1, -1))  # popped from the end: low slots first

    @property
    def storage(self) -> torch.Tensor:
        """The current storage, [L, slots, 2C]. Read once per batch: a later growth replaces it."""
        return self._storage

    @property
    def capacity(self) -> int:
        return self._storage.shape[1]

    @property
    def used_slots(self) -> int:
        return self.capacity - len(self._free)

    @property
    def slot_bytes(self) -> int:
        return self.num_layers * 2 * self.num_heads * self.head_dim * self._storage.element_size()

    def add(self, key_values: torch.Tensor) -> PoolEntry:
        """Copies a prefix `[L, 2, H, P, D]` (any dtype, any device) into free slots."""
        L, two, H, P, D = key_values.shape
        if (L, two, H, D) != (self.num_layers, 2, self.num_heads, self.head_dim):
            raise ValueError(
                f"expected a prefix of shape [{self.num_layers}, 2, {self.num_heads}, P, {self.head_dim}], "
                f"got {list(key_values.shape)}"
            )
        with self._lock:
            if len(self._free) < P:
                self._grow(P - len(self._free))
            taken = self._free[len(self._free) - P :][::-1]
            del self._free[len(self._free) - P :]
            slots = np.array(taken, dtype=np.int64)  # [P]
            self._write(slots, key_values)
        entry = PoolEntry(slots, self)
        weakref.finalize(entry, self._release, taken)
        return entry

    def _write(self, slots: np.ndarray, key_values: torch.Tensor) -> None:
        """Copies `[L, 2, H, P, D]` into `slots` of the storage, converting to the pool's dtype."""
        L, _, H, P, D = key_values.shape
        if self.device.type == "cpu" and {key_values.dtype, self.dtype} <= set(NUMPY_FLOATS):
            # In numpy, on this thread: a torch copy this size would start an OpenMP team beside the
            # forward pass's (artifact/prefix.py says what that costs).
            source = key_values.numpy().transpose(0, 3, 1, 2, 4).reshape(L, P, 2 * H * D)  # [L, P, 2C]
            self._storage.numpy()[:, slots] = source  # casts to the pool's dtype as it copies
            return
        rows = key_values.to(self.device, self.dtype).permute(0, 3, 1, 2, 4).reshape(L, P, 2 * H * D)  # [L, P, 2C]
        self._storage[:, torch.from_numpy(slots).to(self.device)] = rows

    def read(self, entry: PoolEntry) -> torch.Tensor:
        L, H, D = self.num_layers, self.num_heads, self.head_dim
        rows = self._storage[:, torch.from_numpy(entry.slots).to(self.device)]  # [L, P, 2C]
        return rows.view(L, -1, 2, H, D).permute(0, 2, 3, 1, 4).contiguous()  # [L, 2, H, P, D]

    def _grow(self, at_least: int) -> None:
        old = self._storage
        added = max(at_least, old.shape[1] // 2)
        grown = torch.empty(old.shape[0], old.shape[1] + added, old.shape[2], device=old.device, dtype=old.dtype)
        grown[:, : old.shape[1]] = old
        self._free[:0] = range(old.shape[1] + added - 1, old.shape[1] - 1, -1)  # new slots go after the old free ones
        self._storage = grown

    def _release(self, slots: list[int]) -> None:
        with self._lock:
            self._free.extend(slots)
