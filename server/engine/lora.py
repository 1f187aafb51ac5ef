"""LoRA in the forward pass (SPEC 1c): each targeted Linear runs its base matmul once for every row,
then adds the LoRA delta `B (A x)` of the rows whose task has an adapter there, in place.

A batch reads its adapters' units where they lie in the pool (lora_pool.py), never a weight copy per
request or per token; the deltas are computed per *segment* of tokens that share an adapter, in one
of two forms (benchmarks/lora_kernels.py measures both against vLLM's per-token gather and a
per-adapter loop):
- `runs` (the CPU's): rows are packed with those of the same adapter next to each other where their
  lengths allow (a tie-break of the layout's order), so every run of consecutive rows of one adapter
  is a contiguous token range: two matmuls on views, `y[run] += (x[run] A^T) B^T`, with A and B views
  of the pool too (an adapter's units are consecutive unless freeing scattered them; then one gather).
  Nothing is copied: on a CPU a small matmul costs microseconds, while the gathers and scatters of a
  batched form move the whole `[T, out]` delta through memory twice (on MiniLM, 64 adapters in
  batches of 32 rows: 0.98x the throughput of no LoRA this way, 0.92x batched; BENCHMARKS.md);
- `blocks` (the GPU's, Punica's SGMV in torch): each segment is cut into blocks of `block` tokens; one
  gather of the tokens and of each block's units, two `bmm` for every block at once and one
  `index_add_`: a fixed handful of kernel launches whatever the number of adapters. The tails of blocks
  are padding, masked to zero before the second matmul, so they add exactly 0.
When one adapter covers the whole batch, both are two plain matmuls on the whole input.

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
MODES = ("runs", "blocks")


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
    """One token grouping in blocks (shared by the modules whose adapted rows are the same)."""

    name: str  # of its arrays in the HostIndex
    block: int  # tokens per block
    count: int  # blocks
    masked: bool  # some block ends in padding
    segment_of_block: np.ndarray  # [count]


@dataclass(frozen=True)
class _Runs:
    """Runs mode: the tokens cut into pieces (runs, and the gaps of rows without an adapter between
    them) and the gathered units cut per adapter; each run pairs a piece with an adapter."""

    token_pieces: list[int]  # sizes, summing to T
    unit_pieces: list[int]  # sizes, summing to U: each adapter's rank
    pairs: list[tuple[int, int]]  # (token piece, adapter) per run
    spans: list[tuple[int, int]] | None  # each adapter's consecutive units (views of the pool); None: gathered


@dataclass(frozen=True)
class _ModulePlan:
    units_name: str  # the units in the HostIndex: [U] (runs, unless spans) or [count * rank] (blocks)
    runs: _Runs | None = None
    blocks: _Blocks | None = None
    rank: int = 0  # units per block (blocks mode: the widest adapter's; the others pad with unit 0)


class LoraPlanner:
    """A batch's LoRA plan: it orders rows of one adapter next to each other and builds the index
    arrays once the rows are laid out (attention.pack calls add_arrays), then the device-side LoraBatch."""

    def __init__(self, entries: list[LoraEntry | None], pool: LoraPool, mode: str):
        self.entries = entries  # [B] caller order; None: the row's task has no LoRA
        self.pool, self.mode = pool, mode
        first_row: dict[int, int] = {}
        self.sort_key = np.array([first_row.setdefault(id(e), i) if e is not None else -1 for i, e in enumerate(entries)])  # [B]
        self.plans: dict[str, _ModulePlan] = {}
        self._groupings: dict[bytes, _Blocks] = {}

    def add_arrays(self, rows: HostRows, order: np.ndarray, index: HostIndex) -> None:
        packed_entries = [self.entries[i] for i in order.tolist()]  # [B] packed order
        for module in ENGINE_MODULES:
            distinct: dict[int, int] = {}  # id(entry) -> segment
            segment_of_row = np.full(len(packed_entries), -1, dtype=np.int64)  # [B]
            adapters: list[LoraEntry] = []
            for row, entry in enumerate(packed_entries):
                if entry is None or module not in entry.units:
                    continue
                if id(entry) not in distinct:
                    distinct[id(entry)] = len(adapters)
                    adapters.append(entry)
                segment_of_row[row] = distinct[id(entry)]
            if adapters:
                plan = self._runs if self.mode == "runs" or len(adapters) == 1 else self._blocks
                self.plans[module] = plan(module, rows, segment_of_row, adapters, index)

    def _runs(self, module: str, rows: HostRows, segment_of_row: np.ndarray, adapters: list[LoraEntry],
              index: HostIndex) -> _ModulePlan:
        """Consecutive packed rows of one segment merge into a run of tokens."""
        name, units = f"lora_{module}_units", [entry.units[module] for entry in adapters]
        spans = [entry.span(module) for entry in adapters]
        if any(span is None for span in spans):  # some adapter's units are scattered: gather them all
            index.add(name, np.concatenate(units))  # [U]
            spans = None
        pieces: list[int] = []  # token piece sizes: runs and gaps, in order
        pairs: list[tuple[int, int]] = []
        previous = -1  # the segment of the piece last added (-1: a gap)
        for length, segment in zip(rows.lengths.tolist(), segment_of_row.tolist()):
            if pieces and segment == previous:
                pieces[-1] += length  # the same adapter (or the same gap) goes on
                continue
            if segment >= 0:
                pairs.append((len(pieces), segment))
            pieces.append(length)
            previous = segment
        return _ModulePlan(name, runs=_Runs(pieces, [u.shape[0] for u in units], pairs, spans))

    def _blocks(self, module: str, rows: HostRows, segment_of_row: np.ndarray, adapters: list[LoraEntry],
                index: HostIndex) -> _ModulePlan:
        name, units = f"lora_{module}_units", [entry.units[module] for entry in adapters]
        rank = max(u.shape[0] for u in units)
        table = np.zeros((len(units), rank), dtype=np.int64)  # [S, rank], padded with unit 0
        for segment, u in enumerate(units):
            table[segment, : u.shape[0]] = u
        key = segment_of_row.tobytes()
        if key not in self._groupings:
            self._groupings[key] = _group_tokens(rows, segment_of_row, len(units), f"lora_tokens_{len(self._groupings)}", index)
        blocks = self._groupings[key]
        index.add(name, table[blocks.segment_of_block])  # [count, rank]
        return _ModulePlan(name, blocks=blocks, rank=rank)

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
    segment = token_segment[by_segment]  # [T_a]
    within = np.arange(by_segment.shape[0]) - (np.cumsum(counts) - counts)[segment]  # [T_a]
    flat = (first_block[segment] + within // block) * block + within % block  # [T_a] slot in the block layout
    count = int(blocks_per_segment.sum())
    tokens = np.zeros(count * block, dtype=np.int64)  # [count * block]
    tokens[flat] = by_segment
    masked = bool(by_segment.shape[0] != count * block)
    index.add(name, tokens)
    if masked:
        mask = np.zeros(count * block, dtype=np.int64)  # [count * block]
        mask[flat] = 1
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
        a_storage, b_storage = self.storage[module]  # [L, N, in], [L, N, out]: B's columns, scaled
        if plan.runs is not None:
            return self._runs(plan.runs, y, x, a_storage[layer], b_storage[layer], plan.units_name)
        units = self.arrays[plan.units_name]
        a = a_storage[layer].index_select(0, units)  # [count * rank, in]
        b = b_storage[layer].index_select(0, units)  # [count * rank, out]
        blocks = plan.blocks
        n, block, in_features, out_features = blocks.count, blocks.block, x.shape[1], y.shape[1]
        tokens = self.arrays[blocks.name]
        xb = x.index_select(0, tokens).view(n, block, in_features)  # [n, block, in]
        h = torch.bmm(xb, a.view(n, plan.rank, in_features).transpose(1, 2))  # [n, block, rank]
        if blocks.masked:
            h.mul_(self.masks[blocks.name].view(n, block, 1))  # padding tokens: exactly 0 from here on
        delta = torch.bmm(h, b.view(n, plan.rank, out_features))  # [n, block, out]
        return y.index_add_(0, tokens, delta.view(n * block, out_features))  # [T, out]

    def _runs(self, runs: _Runs, y: torch.Tensor, x: torch.Tensor, a_layer: torch.Tensor, b_layer: torch.Tensor,
              units_name: str) -> torch.Tensor:
        """Views all the way: of the input and output (split once), and of the pool where the adapters'
        units are consecutive (else one gather of them)."""
        if runs.spans is not None:
            a_pieces = [a_layer[first:end] for first, end in runs.spans]  # each [r, in]
            b_pieces = [b_layer[first:end] for first, end in runs.spans]  # each [r, out]
        else:
            units = self.arrays[units_name]
            a_pieces = a_layer.index_select(0, units).split(runs.unit_pieces)
            b_pieces = b_layer.index_select(0, units).split(runs.unit_pieces)
        y_pieces, x_pieces = y.split(runs.token_pieces), x.split(runs.token_pieces)
        for piece, adapter in runs.pairs:
            y_pieces[piece].addmm_(x_pieces[piece] @ a_pieces[adapter].T, b_pieces[adapter])  # [run, out] += [run, r] [r, out]
        return y
