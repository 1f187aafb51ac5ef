"""The device-resident head pool: every loaded task's classifier rows in one float32 tensor, so a
batch applies each row's own head with one gather and one batched matmul, whatever the number of
distinct tasks in it (the per-task copy loop of engine._apply_heads costs a launch per task on CUDA).

Storage is `[slots, hidden + 1]`: one slot is one label, its weight row then its bias. A head with
n labels owns n slots anywhere in the pool; they are handed back when the last reference to its
HeadEntry goes (as prefix_pool.py does for prefixes), and the pool grows by half when full.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class HeadEntry:
    slots: tuple[int, ...]  # one per label, in label order
    pool: HeadPool


class HeadPool:
    def __init__(self, hidden_size: int, device, initial_slots: int = 1024):
        self.hidden_size, self.device = hidden_size, torch.device(device)
        self._lock = threading.Lock()
        self._storage = torch.zeros(initial_slots, hidden_size + 1, device=self.device)  # [N, C + 1] float32
        self._free: list[int] = list(range(initial_slots - 1, -1, -1))

    @property
    def storage(self) -> torch.Tensor:
        return self._storage

    @property
    def slot_bytes(self) -> int:
        return (self.hidden_size + 1) * 4

    def add(self, weight: torch.Tensor, bias: torch.Tensor) -> HeadEntry:
        """Copies a head (weight [labels, hidden], bias [labels]) into free slots, in float32."""
        labels = weight.shape[0]
        if weight.shape != (labels, self.hidden_size) or bias.shape != (labels,):
            raise ValueError(
                f"expected a head [labels, {self.hidden_size}] + [labels], got {list(weight.shape)} + {list(bias.shape)}"
            )
        rows = torch.cat([weight, bias[:, None]], dim=1).to(self.device, torch.float32)  # [labels, C + 1]
        with self._lock:
            if len(self._free) < labels:
                self._grow(labels - len(self._free))
            taken = self._free[len(self._free) - labels :][::-1]
            del self._free[len(self._free) - labels :]
            self._storage[torch.tensor(taken, device=self.device)] = rows
        entry = HeadEntry(tuple(taken), self)
        weakref.finalize(entry, self._release, taken)
        return entry

    def _grow(self, at_least: int) -> None:
        old = self._storage
        added = max(at_least, old.shape[0] // 2)
        grown = torch.zeros(old.shape[0] + added, old.shape[1], device=old.device)  # [N + added, C + 1]
        grown[: old.shape[0]] = old
        self._free[:0] = range(old.shape[0] + added - 1, old.shape[0] - 1, -1)
        self._storage = grown

    def _release(self, slots: list[int]) -> None:
        with self._lock:
            self._free.extend(slots)


def head_index(heads: list[HeadEntry]) -> tuple[list[int], int]:
    """Every row's label slots, padded to the batch's most labels with its own first slot (masked)."""
    labels_max = max(len(h.slots) for h in heads)
    flat: list[int] = []
    for head in heads:
        flat += head.slots + (head.slots[0],) * (labels_max - len(head.slots))
    return flat, labels_max  # [B * labels_max]


def apply_heads(storage: torch.Tensor, pooled: torch.Tensor, slots: torch.Tensor, labels_max: int) -> torch.Tensor:
    """Logits [B, labels_max] of each row's own head: storage [N, C + 1], pooled [B, C] float32."""
    B, C = pooled.shape
    rows = storage.index_select(0, slots).view(B, labels_max, C + 1)  # [B, labels_max, C + 1]
    return torch.bmm(rows[:, :, :C], pooled[:, :, None]).squeeze(2) + rows[:, :, C]  # [B, labels_max]
