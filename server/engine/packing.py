"""A batch laid out for the model without padding.

Rows are ordered by (length, prefix) and their tokens concatenated into one [T] sequence, so the
dense layers (most of the compute) run on real tokens only. Attention runs per *chunk*: the rows of
one length, contiguous in [T], whose [n, S] block is a view with no copy and no mask. Inside a
chunk, each *run* of rows sharing one prefix receives it by a single broadcast copy straight into the
chunk's key/value buffer: one copy of the prefix per row, no per-batch [L, 2, B, H, P, D] tensor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch


@dataclass
class PrefixRun:
    row_start: int  # within the chunk
    row_end: int
    key_values: torch.Tensor | None  # [L, 2, H, P, D] shared by the run, or [L, 2, n, H, P, D] per row
    prefix_len: int


@dataclass
class Chunk:
    token_start: int  # where the chunk's tokens start in [T]
    num_rows: int
    length: int  # tokens per row, identical within the chunk
    runs: list[PrefixRun] = field(default_factory=list)
    _mask: torch.Tensor | None = field(default=None, repr=False)

    # Read by every layer: computed once, after build_chunks has finished the chunk.
    @functools.cached_property
    def prefix_max(self) -> int:
        return max((run.prefix_len for run in self.runs), default=0)

    @functools.cached_property
    def ragged(self) -> bool:
        return any(run.prefix_len != self.prefix_max for run in self.runs)

    def attention_mask(self, device) -> torch.Tensor | None:
        """[n, 1, 1, P_max + S] bool where rows' prefixes differ in length; None when all match.
        Built once per batch and reused by every layer."""
        if not self.ragged:
            return None
        if self._mask is None:
            p_max = self.prefix_max
            mask = torch.ones(self.num_rows, 1, 1, p_max + self.length, dtype=torch.bool, device=device)
            for run in self.runs:
                mask[run.row_start : run.row_end, :, :, run.prefix_len : p_max] = False  # padded prefix slots
            self._mask = mask
        return self._mask

    def with_prefix(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [n, H, P_max + S, D]: each row's prefix, then its tokens' k, v ([n, H, S, D])."""
        p_max = self.prefix_max
        if p_max == 0:
            return k, v
        n, H, S, D = k.shape
        keys, values = k.new_empty(n, H, p_max + S, D), v.new_empty(n, H, p_max + S, D)
        keys[:, :, p_max:], values[:, :, p_max:] = k, v
        for run in self.runs:
            rows, p = slice(run.row_start, run.row_end), run.prefix_len
            if run.key_values is not None:
                keys[rows, :, :p] = run.key_values[layer, 0]
                values[rows, :, :p] = run.key_values[layer, 1]
            if p < p_max:
                # Masked slots still meet a zero weight, and 0 * NaN = NaN: they must hold finite values.
                keys[rows, :, p:p_max].zero_()
                values[rows, :, p:p_max].zero_()
        return keys, values


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T]
    token_type_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]: P_row + index within the row
    chunks: list[Chunk]
    cls_index: torch.Tensor  # [B] where each row's [CLS] sits in [T], in packed row order
    restore_order: torch.Tensor  # [B] packed row index of each caller row

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]


def build_chunks(lengths: list[int], prefix_keys: list[object], prefixes: list) -> list[Chunk]:
    """Chunks of equal-length rows, runs of equal prefix key; rows must already be in packed order.

    `prefixes[i]` is (key_values, prefix_len) for packed row i, or (None, 0) for a bare row."""
    chunks: list[Chunk] = []
    token_start = 0
    for row, length in enumerate(lengths):
        if not chunks or chunks[-1].length != length:
            chunks.append(Chunk(token_start, 0, length))
        chunk = chunks[-1]
        key_values, prefix_len = prefixes[row]
        last = chunk.runs[-1] if chunk.runs else None
        if last is not None and prefix_keys[row] is prefix_keys[row - 1] and last.key_values is key_values:
            last.row_end += 1
        else:
            chunk.runs.append(PrefixRun(chunk.num_rows, chunk.num_rows + 1, key_values, prefix_len))
        chunk.num_rows += 1
        token_start += length
    return chunks


def pack_padded(
    input_ids: torch.Tensor,  # [B, S]
    token_type_ids: torch.Tensor,  # [B, S]
    token_mask: torch.Tensor,  # [B, S] bool, each row's tokens first
    prefix_kv: torch.Tensor | None,  # [L, 2, B, H, P_max, D], per row (e.g. with per-row dropout)
    prefix_lens: torch.Tensor,  # [B]
    max_positions: int,
) -> PackedBatch:
    """The padded interface (training, tests) turned into a PackedBatch; rows keep their own prefix."""
    lengths = token_mask.sum(dim=1)  # [B]
    order = torch.argsort(lengths, stable=True)  # [B] packed row -> caller row
    sorted_lengths = lengths[order].tolist()
    flat = token_mask[order].reshape(-1).nonzero().squeeze(1)  # [T] into the sorted [B * S]
    row_prefix_lens = prefix_lens[order]  # [B]
    positions = row_prefix_lens[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)  # [B, S]
    prefixes = []
    for packed_row, caller_row in enumerate(order.tolist()):
        p = int(row_prefix_lens[packed_row])
        kv = None if prefix_kv is None or p == 0 else prefix_kv[:, :, caller_row, :, :p]  # [L, 2, H, p, D]
        prefixes.append((kv, p))
    keys = [object() for _ in prefixes]  # every row its own run: prefixes may differ row by row
    lengths_t = torch.tensor(sorted_lengths, device=input_ids.device)
    return PackedBatch(
        input_ids=input_ids[order].reshape(-1)[flat],
        token_type_ids=token_type_ids[order].reshape(-1)[flat],
        positions=positions.clamp(max=max_positions - 1).reshape(-1)[flat],
        chunks=build_chunks(sorted_lengths, keys, prefixes),
        cls_index=lengths_t.cumsum(0) - lengths_t,
        restore_order=torch.argsort(order),
    )
