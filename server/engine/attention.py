"""Which attention the engine runs, and the ragged batch layout of the GPU paths.

Owns the `attention` option (auto | triton | varlen | sdpa), its resolution for a device, and
`RaggedBatch`: the packed rows of packing.py without any padding, whose index arrays are built once on
the host and reach the device in one pinned, non-blocking copy (`HostIndex`). Two paths read it:
- `triton`: triton_attention.py reads each row's prefix in the pool where it lies (no copy);
- `varlen`: `torch.nn.attention.varlen.varlen_attn` (FlashAttention 2 inside torch), which needs each
  row's keys as `[prefix ; tokens]` next to each other, so per layer one gather-and-copy into a
  `[T + sum P, C]` key and value buffer.
`sdpa` is today's chunked scaled_dot_product_attention over PackedBatch (packing.py), the CPU path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

ATTENTION_CHOICES = ("auto", "triton", "varlen", "sdpa")


def triton_unavailable_reason() -> str:
    """Empty when the triton path can run; imports triton (only called on CUDA or when asked for it)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from server.engine import triton_attention

    return triton_attention.UNAVAILABLE_REASON


def varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.10)
    except ImportError:
        return False
    return True


def resolve_attention(requested: str, device: torch.device, dtype: torch.dtype = torch.float16) -> str:
    """The path to run: `auto` takes triton, then varlen (half precision only), on CUDA, and sdpa on
    any other device."""
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"attention: expected one of {ATTENTION_CHOICES}, got {requested!r}")
    cuda = device.type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)  # FlashAttention 2, so varlen, takes nothing else
    if requested == "auto":
        if not cuda:
            return "sdpa"
        return "triton" if not triton_unavailable_reason() else "varlen" if half and varlen_available() else "sdpa"
    if requested == "triton":
        if triton_unavailable_reason():
            raise ValueError(f"attention 'triton': {triton_unavailable_reason()}")
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"attention 'triton': expected a CUDA device (or TRITON_INTERPRET=1), got {device}")
    if requested == "varlen" and not (cuda and half and varlen_available()):
        raise ValueError(
            f"attention 'varlen': expected CUDA, float16 or bfloat16 and torch.nn.attention.varlen, "
            f"got {device}, {dtype}, torch {torch.__version__}"
        )
    return requested


@dataclass(frozen=True)
class RowIndex:
    """Where each row's queries, tokens and prefix slots are, on the kernel's device (int32 each).

    Rows are in packed order; a row's tokens are consecutive in the packed `[T]` sequence."""

    row_start: torch.Tensor  # [B] first token of the row in [T]
    row_len: torch.Tensor  # [B] tokens of the row
    prefix_start: torch.Tensor  # [B] where the row's slots start in `slots`
    prefix_len: torch.Tensor  # [B] P of the row (0: no prefix)
    slots: torch.Tensor  # [sum P] pool slot of each prefix position, row after row
    block_row: torch.Tensor  # [NB] the row of each query block
    block_first: torch.Tensor  # [NB] the block's first query, counted within its row
    block_m: int  # queries per block


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


class HostIndex:
    """Named int32 index arrays gathered on the host, then sent to the device in one copy."""

    ALIGN = 4  # int32 elements: every array starts 16-byte aligned, as Triton specializes pointers on it

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._names: list[str] = []

    def add(self, name: str, values) -> None:
        self._names.append(name)
        self._parts.append(torch.as_tensor(values, dtype=torch.int32).reshape(-1))  # [n]

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        cuda = device.type == "cuda"
        starts, size = [], 0
        for part in self._parts:
            starts.append(size)
            size += -(-part.shape[0] // self.ALIGN) * self.ALIGN
        # Pinned on CUDA, so the copy is a DMA the host does not wait for; the kernels that read it
        # queue behind it on the stream (and the caching host allocator keeps the buffer until then).
        flat = torch.zeros(size, dtype=torch.int32, pin_memory=cuda)  # [sum of aligned sizes]
        for start, part in zip(starts, self._parts):
            flat[start : start + part.shape[0]] = part
        if cuda:
            flat = flat.to(device, non_blocking=True)
        # Views, not copies: one allocation and one transfer for the whole batch.
        return {name: flat[start : start + part.shape[0]] for name, start, part in zip(self._names, starts, self._parts)}


@dataclass
class RaggedBatch:
    """Rows in packed order, their tokens concatenated: the model's PackedBatch surface for the GPU paths."""

    input_ids: torch.Tensor  # [T] int32
    token_type_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    cls_index: torch.Tensor  # [B] packed row order
    restore_order: torch.Tensor  # [B]
    rows: RowIndex
    path: str  # "triton" or "varlen"
    prefix_storage: torch.Tensor | None  # [L, N, 2C], read once: a pool growth replaces it
    max_query: int
    max_key: int
    varlen: dict[str, torch.Tensor] | None  # cu_seq_q, cu_seq_k [B+1]; token_dest [T], prefix_dest [sum P] long

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    def attend(self, layer: int, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """One layer's attention output [T, C] from its fused projection qkv [T, 3C]."""
        pool = self.prefix_storage[layer] if self.prefix_storage is not None else None  # [N, 2C]
        if self.path == "triton":
            from server.engine.triton_attention import prefix_attention  # imported once resolved: cheap after

            return prefix_attention(qkv, pool, self.rows, num_heads)
        return self._varlen(pool, qkv, num_heads)

    def _varlen(self, pool: torch.Tensor | None, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        from torch.nn.attention.varlen import varlen_attn

        T, C = qkv.shape[0], qkv.shape[1] // 3
        H, D = num_heads, C // num_heads
        index = self.varlen
        keys = qkv.new_empty(T + self.rows.slots.shape[0], C)  # [T + sum P, C]: per row [prefix ; tokens]
        values = torch.empty_like(keys)  # [T + sum P, C]
        keys.index_copy_(0, index["token_dest"], qkv[:, C : 2 * C])
        values.index_copy_(0, index["token_dest"], qkv[:, 2 * C :])
        if pool is not None and self.rows.slots.shape[0]:
            prefix = pool.index_select(0, self.rows.slots)  # [sum P, 2C]
            keys.index_copy_(0, index["prefix_dest"], prefix[:, :C])
            values.index_copy_(0, index["prefix_dest"], prefix[:, C:])
        q = qkv[:, :C].contiguous().view(T, H, D)  # [T, H, D]
        keys, values = keys.view(-1, H, D), values.view(-1, H, D)  # each [T + sum P, H, D]
        out = varlen_attn(q, keys, values, index["cu_seq_q"], index["cu_seq_k"], self.max_query, self.max_key)  # [T, H, D]
        return out.reshape(T, C)  # [T, C]


def pack_ragged(
    lengths: list[int],  # [B] tokens per row, packed order
    prefix_lens: list[int],  # [B]
    input_ids: list[int],  # [T] rows concatenated in packed order
    token_type_ids: list[int],  # [T]
    restore_order: list[int],  # [B] packed row of each caller row
    prefix_storage: torch.Tensor | None,  # [L, N, 2C]
    prefix_slots: torch.Tensor | None,  # [sum P] storage slots, packed order
    path: str,
    max_positions: int,
    device: torch.device,
    extra: HostIndex | None = None,  # more arrays for the same copy (the engine's heads)
) -> tuple[RaggedBatch, dict[str, torch.Tensor]]:
    """The batch for the triton or varlen path, and the device views of `extra`'s arrays."""
    index = extra if extra is not None else HostIndex()
    index.add("input_ids", input_ids)
    index.add("token_type_ids", token_type_ids)
    index.add("restore_order", restore_order)
    index.add("slots", prefix_slots if prefix_slots is not None else [])
    block_m = _add_row_arrays(index, lengths, prefix_lens, max_positions, varlen=path == "varlen")
    on_device = index.to(device)
    rows = RowIndex(
        on_device["row_start"], on_device["row_len"], on_device["prefix_start"], on_device["prefix_len"],
        on_device["slots"], on_device["block_row"], on_device["block_first"], block_m,
    )
    varlen = None
    if path == "varlen":  # index_copy_ takes int64 indices: widened on the device, no host round trip
        varlen = {name: on_device[name] for name in ("cu_seq_q", "cu_seq_k")}
        varlen |= {name: on_device[name].long() for name in ("token_dest", "prefix_dest")}
    batch = RaggedBatch(
        input_ids=on_device["input_ids"],
        token_type_ids=on_device["token_type_ids"],
        positions=on_device["positions"],
        cls_index=rows.row_start,
        restore_order=on_device["restore_order"],
        rows=rows,
        path=path,
        prefix_storage=prefix_storage if prefix_slots is not None and prefix_slots.shape[0] else None,
        max_query=max(lengths, default=0),
        max_key=max((a + b for a, b in zip(lengths, prefix_lens)), default=0),
        varlen=varlen,
    )
    return batch, on_device


def _add_row_arrays(index: HostIndex, lengths: list[int], prefix_lens: list[int], max_positions: int, varlen: bool) -> int:
    """Positions, the rows' token and prefix ranges, the query blocks (and varlen's key layout);
    returns the queries per block."""
    lengths_t, prefix_t = torch.tensor(lengths, dtype=torch.long), torch.tensor(prefix_lens, dtype=torch.long)  # [B]
    B, T = len(lengths), int(lengths_t.sum())
    row_start = lengths_t.cumsum(0) - lengths_t  # [B]
    prefix_start = prefix_t.cumsum(0) - prefix_t  # [B]
    token_row = torch.repeat_interleave(torch.arange(B), lengths_t)  # [T]
    within = torch.arange(T) - row_start[token_row]  # [T] index within the row
    block_m = pick_block_m(lengths)
    block_row, block_first = query_blocks(lengths, block_m)
    index.add("positions", (prefix_t[token_row] + within).clamp(max=max_positions - 1))  # HF: P .. P+S-1
    for name, values in (("row_start", row_start), ("row_len", lengths_t), ("prefix_start", prefix_start),
                         ("prefix_len", prefix_t), ("block_row", block_row), ("block_first", block_first)):
        index.add(name, values)
    if varlen:
        key_start = row_start + prefix_start  # [B] where the row's [prefix ; tokens] starts
        prefix_row = torch.repeat_interleave(torch.arange(B), prefix_t)  # [sum P]
        zero = torch.zeros(1, dtype=torch.long)
        index.add("cu_seq_q", torch.cat([zero, lengths_t.cumsum(0)]))  # [B + 1]
        index.add("cu_seq_k", torch.cat([zero, (lengths_t + prefix_t).cumsum(0)]))  # [B + 1]
        index.add("token_dest", (key_start + prefix_t)[token_row] + within)  # [T]
        index.add("prefix_dest", key_start[prefix_row] + torch.arange(prefix_row.shape[0]) - prefix_start[prefix_row])
    return block_m
