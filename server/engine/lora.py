"""LoRA in the forward pass (SPEC 1c): each targeted Linear runs its base matmul once for every row,
then adds the LoRA delta `B (A x)` of the rows whose task has an adapter there, in place.

The delta is computed per *segment* (the tokens of all rows of one adapter), in the batched form of
Punica's SGMV: the segments are cut into blocks of `block` tokens, each block gathers its adapter's
units from the pool (lora_pool.py: one index per block, never a weight copy per token), and two
`bmm` calls compute `x_block A^T` then `(.) B^T` for every block at once; one `index_add_` puts the
deltas back. So the work is a fixed handful of kernels per module whatever the number of adapters in
the batch (a loop over segments costs one launch per adapter, and the per-token gather of vLLM's CPU
path copies r x (in + out) weights per token: benchmarks/lora_kernels.py measures all three). Padding
tokens of a block's tail are masked to zero before the second matmul, so they add exactly 0.
When one adapter covers every token of the batch, it is two plain matmuls on the whole input.

Rows with no adapter are in no segment, so a batch without LoRA rows has no LoRA plan at all and
runs exactly the plain path. The index arrays are built on the host, once per batch, and ride in the
batch's one host-to-device copy (layout.HostIndex).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from server.engine.layout import HostIndex, HostRows
from server.engine.lora_pool import ENGINE_MODULES, LoraEntry, LoraPool

MIN_BLOCK, MAX_BLOCK = 16, 128  # tokens per block: short blocks pad less, long ones gather fewer units


class LoraDeltas(Protocol):
    """What a layer asks of a batch's LoRA: serving's (LoraBatch) or training's (one trainable adapter)."""

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, module: str) -> torch.Tensor:
        """`y` [T, out] = the engine Linear `module` of layer `layer` on `x` [T, in]; returns y plus
        the LoRA deltas of the rows that have them (in place where it can)."""
        ...


def adapted(linear: nn.Linear, x: torch.Tensor, lora: LoraDeltas | None, layer: int, module: str) -> torch.Tensor:
    """A layer's Linear with its LoRA deltas, if the batch has any (the one call the model makes)."""
    y = linear(x)  # [T, out]: the base matmul, once for every row
    return y if lora is None else lora.apply(y, x, layer, module)


@dataclass(frozen=True)
class _Blocks:
    """One token grouping (shared by the modules whose adapted rows are the same)."""

    name: str  # of its arrays in the HostIndex
    block: int  # tokens per block
    count: int  # blocks
    masked: bool  # some block ends in padding
    segment_of_block: np.ndarray  # [count]


@dataclass(frozen=True)
class _ModulePlan:
    blocks: _Blocks | None  # None: one adapter covers every token of the batch
    rank: int  # units per block (the widest adapter's; narrower ones pad with unit 0)
    units_name: str


class LoraPlanner:
    """Builds a batch's LoRA index arrays once the rows are laid out (attention.pack calls add_arrays),
    then the device-side LoraBatch from them."""

    def __init__(self, entries: list[LoraEntry | None], pool: LoraPool):
        self.entries = entries  # [B] caller order; None: the row's task has no LoRA
        self.pool = pool
        self.plans: dict[str, _ModulePlan] = {}
        self._groupings: dict[bytes, _Blocks] = {}

    def add_arrays(self, rows: HostRows, order: np.ndarray, index: HostIndex) -> None:
        packed_entries = [self.entries[i] for i in order.tolist()]  # [B] packed order
        for module in ENGINE_MODULES:
            distinct: dict[int, int] = {}  # id(entry) -> segment
            segment_of_row = np.full(len(packed_entries), -1, dtype=np.int64)  # [B]
            units = []
            for row, entry in enumerate(packed_entries):
                if entry is None or module not in entry.units:
                    continue
                if id(entry) not in distinct:
                    distinct[id(entry)] = len(units)
                    units.append(entry.units[module])
                segment_of_row[row] = distinct[id(entry)]
            if units:
                self.plans[module] = self._plan(module, rows, segment_of_row, units, index)

    def _plan(self, module: str, rows: HostRows, segment_of_row: np.ndarray, units: list[np.ndarray],
              index: HostIndex) -> _ModulePlan:
        rank = max(u.shape[0] for u in units)
        table = np.zeros((len(units), rank), dtype=np.int64)  # [S, rank], padded with unit 0
        for segment, u in enumerate(units):
            table[segment, : u.shape[0]] = u
        name = f"lora_{module}_units"
        if len(units) == 1 and (segment_of_row >= 0).all():
            index.add(name, table[0])  # [rank]
            return _ModulePlan(None, rank, name)
        key = segment_of_row.tobytes()
        if key not in self._groupings:
            self._groupings[key] = _group_tokens(rows, segment_of_row, len(units), f"lora_tokens_{len(self._groupings)}", index)
        blocks = self._groupings[key]
        index.add(name, table[blocks.segment_of_block])  # [count, rank]
        return _ModulePlan(blocks, rank, name)

    def deltas(self, on_device: dict[str, torch.Tensor]) -> LoraBatch:
        storage = {module: self.pool.storage(module) for module in self.plans}  # read once: growth replaces it
        return LoraBatch(self.plans, storage, on_device, self.pool.dtype)


def _group_tokens(rows: HostRows, segment_of_row: np.ndarray, segments: int, name: str, index: HostIndex) -> _Blocks:
    """Lays the adapted tokens out segment by segment in blocks: `name` [count * block] token indices
    (padding: token 0) and `name`_mask [count * block] (1 on real tokens)."""
    token_segment = segment_of_row[rows.token_row]  # [T]
    adapted_tokens = np.flatnonzero(token_segment >= 0)  # [T_a]
    by_segment = adapted_tokens[np.argsort(token_segment[adapted_tokens], kind="stable")]  # [T_a] grouped
    counts = np.bincount(token_segment[by_segment], minlength=segments)  # [S]
    block = int(np.clip(1 << int(np.ceil(np.log2(max(1.0, counts.mean())))), MIN_BLOCK, MAX_BLOCK))
    blocks_per_segment = -(-counts // block)  # [S]
    first_block = np.cumsum(blocks_per_segment) - blocks_per_segment  # [S]
    segment_start = np.cumsum(counts) - counts  # [S]
    segment = token_segment[by_segment]  # [T_a]
    within = np.arange(by_segment.shape[0]) - segment_start[segment]  # [T_a]
    flat = (first_block[segment] + within // block) * block + within % block  # [T_a] slot in the block layout
    count = int(blocks_per_segment.sum())
    tokens = np.zeros(count * block, dtype=np.int64)  # [count * block]
    tokens[flat] = by_segment
    mask = np.zeros(count * block, dtype=np.int64)
    mask[flat] = 1
    masked = bool(by_segment.shape[0] != count * block)
    index.add(name, tokens)
    if masked:
        index.add(f"{name}_mask", mask)
    return _Blocks(name, block, count, masked, np.repeat(np.arange(segments), blocks_per_segment))


class LoraBatch:
    """A batch's LoRA on the device: per engine module, its plan, index arrays and pool tensors."""

    def __init__(self, plans: dict[str, _ModulePlan], storage: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 on_device: dict[str, torch.Tensor], dtype: torch.dtype):
        self.plans, self.storage, self.arrays = plans, storage, on_device
        self.masks = {plan.blocks.name: on_device[f"{plan.blocks.name}_mask"].to(dtype)
                      for plan in plans.values() if plan.blocks is not None and plan.blocks.masked}

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, module: str) -> torch.Tensor:
        plan = self.plans.get(module)
        if plan is None:
            return y
        a_storage, b_storage = self.storage[module]
        units = self.arrays[plan.units_name]
        a = a_storage[layer].index_select(0, units)  # [count * rank, in] (or [rank, in])
        b = b_storage[layer].index_select(0, units)  # [count * rank, out]: B's columns, scaled
        blocks = plan.blocks
        if blocks is None:  # one adapter for the whole batch
            return y.addmm_(x @ a.T, b)  # [T, out]
        n, block, in_features, out_features = blocks.count, blocks.block, x.shape[1], y.shape[1]
        tokens = self.arrays[blocks.name]
        xb = x.index_select(0, tokens).view(n, block, in_features)  # [n, block, in]
        h = torch.bmm(xb, a.view(n, plan.rank, in_features).transpose(1, 2))  # [n, block, rank]
        if blocks.masked:
            h.mul_(self.masks[blocks.name].view(n, block, 1))  # padding tokens: exactly 0 from here on
        delta = torch.bmm(h, b.view(n, plan.rank, out_features))  # [n, block, out]
        return y.index_add_(0, tokens, delta.view(n * block, out_features))  # [T, out]
