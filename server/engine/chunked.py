"""The CPU's attention path (`sdpa`): little padding, through `scaled_dot_product_attention`.

Attention runs per *chunk* of consecutive packed rows (layout.py sorts them by length): queries are
padded to the chunk's longest row (S) and keys to its longest prefix + tokens (Lk). Rows join the
chunk before them while the padded query-key pairs stay under `merge_pairs` (what one more attention
call costs) or a small fraction of the real ones.

A row's keys and values in its chunk are [its P_r prefix slots | its S_r token slots | padding]:
attention does not depend on key order (BERT adds positions at the embeddings). Per layer the batch
writes every token's k/v into its key buffer with one index copy, and gathers every row's prefix
from the prefix storage with one more: no per-row or per-chunk copies. Padded slots hold zeros, so
they are finite (a masked key still meets a zero weight, and 0 * NaN = NaN), and are masked out.
Under autograd (training) the copies are out of place, so gradients reach the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from server.engine.layout import HostRows


@dataclass(frozen=True)
class Chunk:
    rows: int
    query_len: int  # S: the chunk's longest row
    key_len: int  # Lk: the chunk's longest prefix + tokens
    query_start: int  # where the chunk starts in the padded query layout
    key_start: int  # where the chunk starts in the key layout
    masked: bool  # some row has fewer than Lk keys

    @property
    def query_end(self) -> int:
        return self.query_start + self.rows * self.query_len

    @property
    def key_end(self) -> int:
        return self.key_start + self.rows * self.key_len


def plan_chunks(lengths: list[int], prefix_lens: list[int], merge_pairs: int, merge_fraction: float = 0.125) -> list[Chunk]:
    """Chunks of consecutive rows (in packed order, sorted by length); see the module docstring."""
    chunks: list[Chunk] = []
    rows = query_len = key_len = real_pairs = 0
    uniform = True  # every row so far has key_len keys
    query_start = key_start = 0
    for length, prefix_len in zip(lengths, prefix_lens):
        keys = prefix_len + length
        if rows:
            new_key_len = max(key_len, keys)
            padded = (rows + 1) * length * new_key_len  # length >= query_len: rows come sorted
            real = real_pairs + length * keys
            if padded - real <= max(merge_pairs, merge_fraction * real):
                uniform = uniform and keys == key_len
                rows, query_len, key_len, real_pairs = rows + 1, length, new_key_len, real
                continue
            chunks.append(Chunk(rows, query_len, key_len, query_start, key_start, not uniform))
            query_start, key_start = query_start + rows * query_len, key_start + rows * key_len
        rows, query_len, key_len, real_pairs, uniform = 1, length, keys, length * keys, True
    if rows:
        chunks.append(Chunk(rows, query_len, key_len, query_start, key_start, not uniform))
    return chunks


class ChunkedAttention:
    def __init__(
        self,
        rows: HostRows,
        prefix_storage: torch.Tensor | None,  # [L, N, 2C]: per layer, N slots of [keys | values]
        prefix_slots: torch.Tensor | None,  # [sum P] long: the storage slot of each prefix position, packed order
        merge_pairs: int,
        device: torch.device,
    ):
        self.chunks = plan_chunks(rows.lengths.tolist(), rows.prefix_lens.tolist(), merge_pairs)
        query_base, key_base = np.zeros(len(rows.lengths), np.int64), np.zeros(len(rows.lengths), np.int64)  # [B]
        for first, chunk in zip(np.cumsum([0] + [c.rows for c in self.chunks[:-1]]), self.chunks):
            query_base[first : first + chunk.rows] = np.arange(chunk.query_start, chunk.query_end, chunk.query_len)
            key_base[first : first + chunk.rows] = np.arange(chunk.key_start, chunk.key_end, chunk.key_len)
        self.query_slots = self.chunks[-1].query_end if self.chunks else 0
        self.key_slots = self.chunks[-1].key_end if self.chunks else 0
        token_key_dest = (key_base + rows.prefix_lens)[rows.token_row] + rows.within  # [T]
        key_valid = np.zeros(self.key_slots, dtype=bool)  # [key_slots]
        key_valid[token_key_dest] = True
        self.prefix_storage = self.prefix_source = self.prefix_dest = None
        if prefix_storage is not None and rows.prefix_row.shape[0]:
            prefix_dest = key_base[rows.prefix_row] + rows.prefix_within  # [sum P]
            key_valid[prefix_dest] = True
            self.prefix_storage, self.prefix_source = prefix_storage, prefix_slots.to(device)
            self.prefix_dest = torch.from_numpy(prefix_dest).to(device)
        pads_queries = self.query_slots != rows.num_tokens
        self.query_dest = torch.from_numpy(query_base[rows.token_row] + rows.within).to(device) if pads_queries else None  # [T]
        self.token_key_dest = torch.from_numpy(token_key_dest).to(device)
        self.key_valid = torch.from_numpy(key_valid).to(device)
        self._buffers: tuple[torch.Tensor | None, torch.Tensor] | None = None

    def attend(self, layer: int, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        C = qkv.shape[1] // 3
        H, D = num_heads, C // num_heads
        queries, keys_values = self._inputs(layer, qkv)  # [Q, C], [K, 2C]
        outputs = []
        for chunk in self.chunks:
            n, S, Lk = chunk.rows, chunk.query_len, chunk.key_len
            q = queries[chunk.query_start : chunk.query_end].view(n, S, H, D).transpose(1, 2)  # [n, H, S, D]
            kv = keys_values[chunk.key_start : chunk.key_end].view(n, Lk, 2, H, D)  # [n, Lk, 2, H, D]
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [n, H, Lk, D]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(chunk))  # [n, H, S, D]
            outputs.append(out.transpose(1, 2).reshape(n * S, C))  # [n * S, C]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # [Q, C]
        return out if self.query_dest is None else out.index_select(0, self.query_dest)  # [T, C]

    def _inputs(self, layer: int, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [query_slots, C] and keys/values [key_slots, 2C] of one layer, from its qkv [T, 3C]."""
        C = qkv.shape[1] // 3
        queries, token_kv = qkv[:, :C], qkv[:, C:]  # [T, C], [T, 2C]
        prefix_kv = None
        if self.prefix_storage is not None:
            prefix_kv = self.prefix_storage[layer].index_select(0, self.prefix_source)  # [K_p, 2C]
        if torch.is_grad_enabled():  # training: out-of-place, so autograd sees every write
            keys_values = qkv.new_zeros(self.key_slots, 2 * C).index_copy(0, self.token_key_dest, token_kv)
            if prefix_kv is not None:
                keys_values = keys_values.index_copy(0, self.prefix_dest, prefix_kv.to(qkv.dtype))
            if self.query_dest is not None:
                queries = qkv.new_zeros(self.query_slots, C).index_copy(0, self.query_dest, queries)
            return queries, keys_values
        if self._buffers is None:  # zeros once per batch: padded slots are never written, by any layer
            padded_queries = qkv.new_zeros(self.query_slots, C) if self.query_dest is not None else None
            self._buffers = (padded_queries, qkv.new_zeros(self.key_slots, 2 * C))
        padded_queries, keys_values = self._buffers
        keys_values.index_copy_(0, self.token_key_dest, token_kv)
        if prefix_kv is not None:
            keys_values.index_copy_(0, self.prefix_dest, prefix_kv)
        if padded_queries is not None:
            queries = padded_queries.index_copy_(0, self.query_dest, queries)
        return queries, keys_values

    def _mask(self, chunk: Chunk) -> torch.Tensor | None:
        """[n, 1, 1, Lk] bool, True on real keys; None when every row of the chunk has Lk keys."""
        if not chunk.masked:
            return None
        return self.key_valid[chunk.key_start : chunk.key_end].view(chunk.rows, 1, 1, chunk.key_len)
