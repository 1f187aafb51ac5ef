"""Task heads on the shared forward pass's outputs, for every row of a batch at once (SPEC 1, 1b).

The head pool holds every loaded task's classifier in one float32 tensor `[slots, hidden + 1]`: one
slot is one label, its weight row then its bias. A batch applies each row's own head with one gather
and one batched matmul, whatever the number of tasks in it (on the CPU: as fast as copying each task's
head into a per-batch tensor with one task, 2.6x faster with 64; BENCHMARKS.md "Heads"). A head of n
labels owns n slots anywhere in the pool; they go back when the last reference to its HeadEntry goes,
and the pool grows by half when full.

The heads that are not "a classifier on the backbone's pooled output" run after it on the same states:
- a sequence task with its own pooler: tanh(W_task h_first + b_task) replaces its rows' pooled output
  (one matmul per such task in the batch);
- a token task: its classifier on every token's final state (one matmul for all token tasks).
Batches without such tasks never reach those functions, so the plain path pays nothing for them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from server.engine.scoring import score_rows


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
        """The current storage [N, C + 1]; read once per batch: a growth replaces it."""
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


def apply_own_poolers(pooled: torch.Tensor, first: torch.Tensor, tasks: list, own: list[int]) -> torch.Tensor:
    """pooled, first: [B, C] float32, caller row order; `own`: rows whose task has its own pooler."""
    pooled = pooled.clone()  # [B, C]
    for task, indices in _by_task(tasks, own).items():
        index = torch.tensor(indices, device=pooled.device)  # [n]
        pooled[index] = torch.tanh(first[index] @ task.pooler_weight.T + task.pooler_bias)  # [n, C]
    return pooled


def token_scores(
    hidden: torch.Tensor,  # [T, C] final states, packed order
    storage: torch.Tensor,  # [N, C + 1] the head pool
    tasks: list,  # [B] each row's LoadedTask
    token_rows: np.ndarray,  # [R] the rows whose head scores every token
    starts: np.ndarray,  # [B] where each row's tokens begin in `hidden`
    lengths: np.ndarray,  # [B] tokens per row
    functions: np.ndarray,  # [B] ScoreFunction codes
) -> torch.Tensor:
    """Scores of every token of the token rows, rows after row in caller order: [sum S, labels_max]
    float32 on hidden's device, each token's first num_labels columns its task's. The token tasks'
    heads are stacked into one matrix, so the tokens take one matmul and one gather of their own task's
    columns, however many token tasks the batch holds."""
    device = hidden.device
    rows = token_rows.tolist()
    distinct = list(_by_task(tasks, rows))
    column_start, columns = {}, 0
    for task in distinct:
        column_start[task] = columns
        columns += task.num_labels
    slots = torch.tensor([s for task in distinct for s in task.head.slots], device=device)  # [sum C_task]
    heads = storage.index_select(0, slots)  # [sum C_task, C + 1]
    C = heads.shape[1] - 1
    row_lengths = lengths[token_rows].astype(np.int64)  # [R]
    source = np.repeat(starts[token_rows] - (np.cumsum(row_lengths) - row_lengths), row_lengths) + np.arange(row_lengths.sum())  # [N]

    def per_token(values) -> torch.Tensor:  # [R] -> [N]: each token row's value on its tokens
        return torch.from_numpy(np.repeat(np.asarray(values, dtype=np.int64), row_lengths)).to(device)

    first_column = per_token([column_start[tasks[i]] for i in rows])  # [N]
    num_labels = per_token([tasks[i].num_labels for i in rows])  # [N]
    labels_max = max(task.num_labels for task in distinct)
    states = hidden[torch.from_numpy(source).to(device)].float()  # [N, C]
    every_task = states @ heads[:, :C].T + heads[:, C]  # [N, sum C_task]
    own = (first_column[:, None] + torch.arange(labels_max, device=device)[None, :]).clamp(max=columns - 1)  # [N, labels_max]
    logits = every_task.gather(1, own)  # [N, labels_max]; columns past a task's labels are masked or cut
    return score_rows(logits, num_labels, per_token(functions[token_rows]))  # [N, labels_max], on the device


def _by_task(tasks: list, indices: list[int]) -> dict:
    groups: dict = {}
    for i in indices:
        groups.setdefault(tasks[i], []).append(i)
    return groups
