"""The GPU's attention paths over packed rows with no padding at all:
- `triton`: triton_attention.py's kernel reads each row's prefix in the pool where it lies (no copy);
- `varlen`: `torch.nn.attention.varlen.varlen_attn` (FlashAttention 2 inside torch), which needs each
  row's keys as `[prefix ; tokens]` next to each other, so per layer one gather-and-copy into a
  `[T + sum P, C]` key and value buffer.
Their index arrays ride in the batch's one host-to-device copy (layout.HostIndex).
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.layout import HostIndex, HostRows, RowIndex


def query_blocks(lengths: list[int], block_m: int) -> tuple[list[int], list[int]]:
    """The (row, first query) of every block of `block_m` queries: rows never share a block."""
    rows: list[int] = []
    firsts: list[int] = []
    for row, length in enumerate(lengths):
        starts = range(0, length, block_m)
        rows += [row] * len(starts)
        firsts += starts
    return rows, firsts


def pick_block_m(lengths: list[int]) -> int:
    """Queries per program: small blocks waste less on short rows, large ones reread keys less."""
    mean = sum(lengths) / max(1, len(lengths))
    return 16 if mean <= 24 else 32 if mean <= 56 else 64


def add_ragged_arrays(index: HostIndex, rows: HostRows, slots: np.ndarray, path: str) -> int:
    """The rows' token and prefix ranges and query blocks (and varlen's key layout) into `index`;
    returns the queries per block."""
    lengths = rows.lengths.tolist()
    block_m = pick_block_m(lengths)
    block_row, block_first = query_blocks(lengths, block_m)
    for name, values in (("row_start", rows.row_start), ("row_len", rows.lengths), ("prefix_start", rows.prefix_start),
                         ("prefix_len", rows.prefix_lens), ("slots", slots), ("block_row", block_row),
                         ("block_first", block_first)):
        index.add(name, values)
    if path == "varlen":
        key_start = rows.row_start + rows.prefix_start  # [B] where the row's [prefix ; tokens] starts
        index.add("cu_seq_q", np.concatenate([[0], np.cumsum(rows.lengths)]))  # [B + 1]
        index.add("cu_seq_k", np.concatenate([[0], np.cumsum(rows.lengths + rows.prefix_lens)]))  # [B + 1]
        index.add("token_dest", (key_start + rows.prefix_lens)[rows.token_row] + rows.within)  # [T]
        index.add("prefix_dest", key_start[rows.prefix_row] + rows.prefix_within)  # [sum P]
    return block_m


class RaggedAttention:
    def __init__(self, path: str, rows: HostRows, on_device: dict[str, torch.Tensor], block_m: int,
                 prefix_storage: torch.Tensor | None):
        self.path = path
        self.index = RowIndex(
            on_device["row_start"], on_device["row_len"], on_device["prefix_start"], on_device["prefix_len"],
            on_device["slots"], on_device["block_row"], on_device["block_first"], block_m,
        )
        has_prefix = rows.prefix_row.shape[0] > 0
        self.prefix_storage = prefix_storage if has_prefix else None  # [L, N, 2C], read once: growth replaces it
        self.max_query = int(rows.lengths.max(initial=0))
        self.max_key = int((rows.lengths + rows.prefix_lens).max(initial=0))
        self.varlen = None
        if path == "varlen":  # index_copy_ takes int64 indices: widened on the device, no host round trip
            self.varlen = {name: on_device[name] for name in ("cu_seq_q", "cu_seq_k")}
            self.varlen |= {name: on_device[name].long() for name in ("token_dest", "prefix_dest")}

    def attend(self, layer: int, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        pool = self.prefix_storage[layer] if self.prefix_storage is not None else None  # [N, 2C]
        if self.path == "triton":
            from server.engine.triton_attention import prefix_attention  # imported once resolved: cheap after

            return prefix_attention(qkv, pool, self.index, num_heads)
        return self._varlen(pool, qkv, num_heads)

    def _varlen(self, pool: torch.Tensor | None, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        from torch.nn.attention.varlen import varlen_attn

        T, C = qkv.shape[0], qkv.shape[1] // 3
        H, D = num_heads, C // num_heads
        index = self.varlen
        keys = qkv.new_empty(T + self.index.slots.shape[0], C)  # [T + sum P, C]: per row [prefix ; tokens]
        values = torch.empty_like(keys)  # [T + sum P, C]
        keys.index_copy_(0, index["token_dest"], qkv[:, C : 2 * C])
        values.index_copy_(0, index["token_dest"], qkv[:, 2 * C :])
        if pool is not None:
            prefix = pool.index_select(0, self.index.slots)  # [sum P, 2C]
            keys.index_copy_(0, index["prefix_dest"], prefix[:, :C])
            values.index_copy_(0, index["prefix_dest"], prefix[:, C:])
        q = qkv[:, :C].contiguous().view(T, H, D)  # [T, H, D]
        keys, values = keys.view(-1, H, D), values.view(-1, H, D)  # each [T + sum P, H, D]
        out = varlen_attn(q, keys, values, index["cu_seq_q"], index["cu_seq_k"], self.max_query, self.max_key)  # [T, H, D]
        return out.reshape(T, C)  # [T, C]
