"""The device-resident LoRA pool: every loaded adapter's A and B in a few tensors, so a batch reads the
adapters of its rows where they lie (views, or one gather by index), with no per-request (let alone
per-token) weight copies.

The engine fuses query, key and value into one projection (model.py), so adapters are stored per
*engine* Linear: `qkv`, `attn_out`, `ffn_in`, `ffn_out` (ENGINE_TARGETS maps SPEC 1c's module names
onto them). For each, the storage is one rank *unit* per slot, over all layers:
    A  [L, N, in]   (a row of A)
    Bt [L, N, out]  (the matching column of B, times the adapter's scaling: the delta is just B A x)
An adapter of rank r on a module takes r units of the pool (paged as S-LoRA does, so mixed ranks
waste no storage): a free range of r consecutive units when there is one, so that a batch may read
the adapter as a view of the storage instead of gathering it (LoraEntry.span), and any r free units
when freeing has left no such range. On `qkv` its units are the query's, then the key's, then the
value's (in ascending unit order), each unit's B column non-zero only in its own column block. Where a layer has a
lower rank than the adapter's widest (PEFT's `rank_pattern`) or no LoRA on that module, its units hold
zeros there: they add exactly nothing. Unit 0 is zero forever: batches pad ranks with it.

Units go back when the last reference to their LoraEntry goes (as the prefix pool's slots do); the
storage grows by half when full, and a forward pass that started on the old tensors keeps them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from server.artifact.lora import LORA_MODULES, LoraWeights

# SPEC 1c module -> (engine Linear, its column block of that Linear's output)
ENGINE_TARGETS = {
    "attention.self.query": ("qkv", 0),
    "attention.self.key": ("qkv", 1),
    "attention.self.value": ("qkv", 2),
    "attention.output.dense": ("attn_out", 0),
    "intermediate.dense": ("ffn_in", 0),
    "output.dense": ("ffn_out", 0),
}
ENGINE_MODULES = ("qkv", "attn_out", "ffn_in", "ffn_out")
assert set(ENGINE_TARGETS) == set(LORA_MODULES)


@dataclass(frozen=True, eq=False)
class LoraEntry:
    """The units of one loaded adapter, per engine module (absent: not adapted). Dropping the last
    reference frees them."""

    units: dict[str, np.ndarray]  # engine module -> [r_m] int64 unit indices, ascending
    pool: LoraPool

    def span(self, module: str) -> tuple[int, int] | None:
        """(first, end) when the adapter's units of `module` are consecutive, else None."""
        units = self.units[module]
        first, last = int(units[0]), int(units[-1])
        return (first, last + 1) if last - first + 1 == units.shape[0] else None

    @property
    def nbytes(self) -> int:
        return sum(len(u) * self.pool.unit_bytes(module) for module, u in self.units.items())


class LoraPool:
    def __init__(self, num_layers: int, hidden_size: int, intermediate_size: int, device, dtype, initial_units: int = 64):
        self.num_layers, self.device, self.dtype = num_layers, torch.device(device), dtype
        C, F = hidden_size, intermediate_size
        self.features = {"qkv": (C, 3 * C), "attn_out": (C, C), "ffn_in": (C, F), "ffn_out": (F, C)}  # (in, out)
        self.block_width = {"qkv": C, "attn_out": C, "ffn_in": F, "ffn_out": C}
        self._initial_units = initial_units
        self._lock = threading.Lock()
        # Allocated on the first adapter: a server with none keeps no LoRA memory at all.
        self._storage: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._free: dict[str, list[int]] = {}

    def storage(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [L, N, in], Bt [L, N, out]) of an engine module; read once per batch (growth replaces them)."""
        return self._storage[module]

    @property
    def modules(self) -> tuple[str, ...]:
        """The engine modules some adapter has used (their storage exists)."""
        return tuple(self._storage)

    def unit_bytes(self, module: str) -> int:
        in_features, out_features = self.features[module]
        return self.num_layers * (in_features + out_features) * torch.tensor([], dtype=self.dtype).element_size()

    @property
    def used_units(self) -> int:
        return sum(self._storage[m][0].shape[1] - 1 - len(self._free[m]) for m in self._storage)

    def add(self, lora: LoraWeights) -> LoraEntry:
        """Copies an adapter (any dtype, any device) into free units, scaling folded into B."""
        ranks = _unit_ranks(lora, self.num_layers)  # engine module -> [(block, SPEC module, width)]
        units: dict[str, np.ndarray] = {}
        with self._lock:
            for module, parts in ranks.items():
                taken = self._take(module, sum(width for _, _, width in parts))
                units[module] = np.array(sorted(taken), dtype=np.int64)
                self._write(module, units[module], parts, lora)
        entry = LoraEntry(units, self)
        weakref.finalize(entry, self._release, {m: u.tolist() for m, u in units.items()})
        return entry

    def _write(self, module: str, units: np.ndarray, parts: list, lora: LoraWeights) -> None:
        """Fills the units of one engine module over every layer (zeros where a layer has less)."""
        in_features, out_features = self.features[module]
        block = self.block_width[module]
        L, r = self.num_layers, units.shape[0]
        a_rows = torch.zeros(L, r, in_features, dtype=torch.float32)  # [L, r, in]
        b_rows = torch.zeros(L, r, out_features, dtype=torch.float32)  # [L, r, out]: columns of B, transposed
        first = 0
        for block_index, spec_module, width in parts:
            for layer in range(L):
                pair = lora.modules.get((layer, spec_module))
                if pair is None:
                    continue
                a, b = pair[0].float(), pair[1].float()  # [r_l, in], [out_block, r_l]
                rank = a.shape[0]
                a_rows[layer, first : first + rank] = a
                b_rows[layer, first : first + rank, block_index * block : (block_index + 1) * block] = b.T * lora.scaling
            first += width
        a_storage, b_storage = self._storage[module]
        index = torch.from_numpy(units).to(self.device)
        a_storage[:, index] = a_rows.to(self.device, self.dtype)
        b_storage[:, index] = b_rows.to(self.device, self.dtype)

    def _take(self, module: str, count: int) -> list[int]:
        """`count` free units: the lowest range of consecutive ones that fits, growing the pool when
        fewer are free; scattered ones when freeing has left enough but no such range."""
        if module not in self._storage:
            self._allocate(module, max(self._initial_units, count + 1))
        if len(self._free[module]) < count:
            self._grow(module, count - len(self._free[module]))
        free = self._free[module]
        free.sort()
        start = _first_range(free, count)
        start = start if start is not None else 0
        taken = free[start : start + count]
        del free[start : start + count]
        return taken

    def _allocate(self, module: str, units: int) -> None:
        in_features, out_features = self.features[module]
        L = self.num_layers
        # Empty, not zeroed: a unit is written whole before any batch reads it (on the CPU the pages
        # stay uncommitted until then). Unit 0, the rank padding, is zeroed here once.
        a = torch.empty(L, units, in_features, device=self.device, dtype=self.dtype)
        b = torch.empty(L, units, out_features, device=self.device, dtype=self.dtype)
        a[:, 0].zero_()
        b[:, 0].zero_()
        self._storage[module] = (a, b)
        self._free[module] = list(range(1, units))

    def _grow(self, module: str, at_least: int) -> None:
        old_a, old_b = self._storage[module]
        old = old_a.shape[1]
        added = max(at_least, old // 2)
        grown = []
        for tensor in (old_a, old_b):
            new = torch.empty(tensor.shape[0], old + added, tensor.shape[2], device=tensor.device, dtype=tensor.dtype)
            new[:, :old] = tensor  # [L, N + added, features]
            grown.append(new)
        self._free[module].extend(range(old, old + added))
        self._storage[module] = (grown[0], grown[1])

    def _release(self, units: dict[str, list[int]]) -> None:
        with self._lock:
            for module, taken in units.items():
                self._free[module].extend(taken)


def _first_range(free: list[int], count: int) -> int | None:
    """Where in the sorted `free` the first run of `count` consecutive units starts, None if nowhere."""
    values = np.asarray(free, dtype=np.int64)  # [F]
    if values.shape[0] < count:
        return None
    fits = np.flatnonzero(values[count - 1 :] - values[: values.shape[0] - count + 1] == count - 1)  # [starts that fit]
    return int(fits[0]) if fits.shape[0] else None


def _unit_ranks(lora: LoraWeights, num_layers: int) -> dict[str, list[tuple[int, str, int]]]:
    """Per engine module, its adapted SPEC modules in block order: (block, module, widest rank over layers)."""
    out: dict[str, list[tuple[int, str, int]]] = {}
    for spec_module, (engine_module, block) in ENGINE_TARGETS.items():
        width = max((lora.rank(layer, spec_module) for layer in range(num_layers)), default=0)
        if width:
            out.setdefault(engine_module, []).append((block, spec_module, width))
    return out
