"""A batch laid out for the model: no padding in the dense layers, little in attention.

Rows are ordered by (length, prefix length) and their tokens concatenated into one [T] sequence, so
the dense layers (most of the compute) run on real tokens only. Attention runs per *chunk* of
consecutive rows: queries are padded to the chunk's longest row (S) and keys to its longest
prefix + tokens (Lk). Rows join the chunk before them while the padded query-key pairs stay under
`merge_pairs` (what one more attention call costs) or a small fraction of the real ones.

A row's keys and values in its chunk are [its P_r prefix slots | its S_r token slots | padding]:
attention does not depend on key order (BERT adds positions at the embeddings). Per layer the batch
writes every token's k/v into its key buffer with one index copy, and gathers every row's prefix
from the prefix storage with one more: no per-row or per-chunk copies. Padded slots hold zeros, so
they are finite (a masked key still meets a zero weight, and 0 * NaN = NaN), and are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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


@dataclass
class PrefixGather:
    """Where each real prefix slot of the batch comes from and where it goes."""

    storage: torch.Tensor  # [L, N, 2C]: per layer, N slots of [keys | values]
    source: torch.Tensor  # [K_p] long: the storage slot of each real prefix slot, row after row
    dest: torch.Tensor  # [K_p] long: its slot in the batch's key layout


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T]
    token_type_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]: P_row + index within the row
    cls_index: torch.Tensor  # [B] where each row's [CLS] sits in [T], in packed row order
    restore_order: torch.Tensor  # [B] packed row index of each caller row
    chunks: list[Chunk]
    query_slots: int
    key_slots: int
    query_dest: torch.Tensor | None  # [T] each token's padded query slot; None when no chunk pads queries
    token_key_dest: torch.Tensor  # [T] each token's slot in the key layout
    key_valid: torch.Tensor  # [key_slots] bool, False on padding
    prefix: PrefixGather | None
    _buffers: tuple[torch.Tensor | None, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    def attention_inputs(self, layer: int, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [query_slots, C] and keys/values [key_slots, 2C] of one layer, from its qkv [T, 3C]."""
        C = qkv.shape[1] // 3
        queries, token_kv = qkv[:, :C], qkv[:, C:]  # [T, C], [T, 2C]
        prefix_kv = None
        if self.prefix is not None:
            prefix_kv = self.prefix.storage[layer].index_select(0, self.prefix.source)  # [K_p, 2C]
        if torch.is_grad_enabled():  # training: out-of-place, so autograd sees every write
            keys_values = qkv.new_zeros(self.key_slots, 2 * C).index_copy(0, self.token_key_dest, token_kv)
            if prefix_kv is not None:
                keys_values = keys_values.index_copy(0, self.prefix.dest, prefix_kv.to(qkv.dtype))
            if self.query_dest is not None:
                queries = qkv.new_zeros(self.query_slots, C).index_copy(0, self.query_dest, queries)
            return queries, keys_values
        if self._buffers is None:  # zeros once per batch: padded slots are never written, by any layer
            padded_queries = qkv.new_zeros(self.query_slots, C) if self.query_dest is not None else None
            self._buffers = (padded_queries, qkv.new_zeros(self.key_slots, 2 * C))
        padded_queries, keys_values = self._buffers
        keys_values.index_copy_(0, self.token_key_dest, token_kv)
        if prefix_kv is not None:
            keys_values.index_copy_(0, self.prefix.dest, prefix_kv)
        if padded_queries is not None:
            queries = padded_queries.index_copy_(0, self.query_dest, queries)
        return queries, keys_values

    def attention_mask(self, chunk: Chunk) -> torch.Tensor | None:
        """[n, 1, 1, Lk] bool, True on real keys; None when every row of the chunk has Lk keys."""
        if not chunk.masked:
            return None
        return self.key_valid[chunk.key_start : chunk.key_end].view(chunk.rows, 1, 1, chunk.key_len)

    def unpad(self, outputs: torch.Tensor) -> torch.Tensor:
        """Attention outputs in the padded query layout [query_slots, C] back to the tokens' [T, C]."""
        return outputs if self.query_dest is None else outputs.index_select(0, self.query_dest)


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


def pack(
    lengths: list[int],  # [B] tokens per row, packed order (sorted by length)
    prefix_lens: list[int],  # [B]
    input_ids: torch.Tensor,  # [T], rows concatenated in packed order
    token_type_ids: torch.Tensor,  # [T]
    restore_order: torch.Tensor,  # [B]
    prefix_storage: torch.Tensor | None,  # [L, N, 2C]
    prefix_source: torch.Tensor | None,  # [sum P] long: storage slots of every row's prefix, packed order
    merge_pairs: int,
    max_positions: int,
) -> PackedBatch:
    """The layout for rows already in packed order. Index math runs on the CPU, then moves once."""
    device = input_ids.device
    chunks = plan_chunks(lengths, prefix_lens, merge_pairs)
    row_query_base, row_key_base = [], []
    for chunk in chunks:
        row_query_base += range(chunk.query_start, chunk.query_end, chunk.query_len)
        row_key_base += range(chunk.key_start, chunk.key_end, chunk.key_len)
    lengths_t, prefix_t = torch.tensor(lengths), torch.tensor(prefix_lens)  # [B]
    query_base, key_base = torch.tensor(row_query_base), torch.tensor(row_key_base)  # [B]
    token_row = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)  # [T]
    row_token_start = lengths_t.cumsum(0) - lengths_t  # [B]
    within = torch.arange(token_row.shape[0]) - row_token_start[token_row]  # [T] index within the row
    query_dest = query_base[token_row] + within  # [T]
    token_key_dest = (key_base + prefix_t)[token_row] + within  # [T]
    key_slots = chunks[-1].key_end if chunks else 0
    key_valid = torch.zeros(key_slots, dtype=torch.bool)
    key_valid[token_key_dest] = True
    gather = None
    if prefix_storage is not None and int(prefix_t.sum()) > 0:
        prefix_row = torch.repeat_interleave(torch.arange(len(lengths)), prefix_t)  # [K_p]
        prefix_within = torch.arange(prefix_row.shape[0]) - (prefix_t.cumsum(0) - prefix_t)[prefix_row]  # [K_p]
        prefix_dest = key_base[prefix_row] + prefix_within  # [K_p]
        key_valid[prefix_dest] = True
        gather = PrefixGather(prefix_storage, prefix_source.to(device), prefix_dest.to(device))
    query_slots = chunks[-1].query_end if chunks else 0
    pads_queries = query_slots != token_row.shape[0]
    positions = (prefix_t[token_row] + within).clamp(max=max_positions - 1)  # [T]
    return PackedBatch(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        positions=positions.to(device),
        cls_index=row_token_start.to(device),
        restore_order=restore_order.to(device),
        chunks=chunks,
        query_slots=query_slots,
        key_slots=key_slots,
        query_dest=query_dest.to(device) if pads_queries else None,
        token_key_dest=token_key_dest.to(device),
        key_valid=key_valid.to(device),
        prefix=gather,
    )


def pack_padded(
    input_ids: torch.Tensor,  # [B, S]
    token_type_ids: torch.Tensor,  # [B, S]
    token_mask: torch.Tensor,  # [B, S] bool, each row's tokens first
    prefix_kv: torch.Tensor | None,  # [L, 2, B, H, P_max, D], per row (e.g. with per-row dropout)
    prefix_lens: torch.Tensor,  # [B]
    max_positions: int,
    merge_pairs: int = 0,
) -> PackedBatch:
    """The padded interface (training, tests) turned into a PackedBatch; rows keep their own prefix."""
    lengths = token_mask.sum(dim=1)  # [B]
    order = torch.argsort(lengths * (prefix_lens.max() + 1) + prefix_lens, stable=True)  # [B] packed -> caller row
    flat = token_mask[order].reshape(-1).nonzero().squeeze(1)  # [T] into the sorted [B * S]
    storage = source = None
    sorted_prefix_lens = prefix_lens[order].cpu()
    if prefix_kv is not None:
        L, two, B, H, P_max, D = prefix_kv.shape
        storage = prefix_kv.permute(0, 2, 4, 1, 3, 5).reshape(L, B * P_max, two * H * D)  # [L, B * P_max, 2C]
        source = torch.cat([caller * P_max + torch.arange(int(p)) for caller, p in zip(order.tolist(), sorted_prefix_lens)])
    return pack(
        lengths[order].tolist(),
        sorted_prefix_lens.tolist(),
        input_ids[order].reshape(-1)[flat],
        token_type_ids[order].reshape(-1)[flat],
        torch.argsort(order),
        storage,
        source.long() if source is not None else None,
        merge_pairs,
        max_positions,
    )
