"""Which attention path the engine runs, and packing rows into the one batch layout (layout.py) for it.

The `attention` option: auto | triton | varlen | sdpa. `sdpa` is the chunked scaled_dot_product_attention
of chunked.py (the CPU path); `triton` and `varlen` are ragged.py's GPU paths. `auto` takes triton, then
varlen, on CUDA, and sdpa anywhere else.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from server.engine.chunked import ChunkedAttention
from server.engine.layout import HostIndex, HostRows, PackedBatch, RowExtras
from server.engine.ragged import RaggedAttention, add_ragged_arrays

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


def pack(
    lengths: np.ndarray,  # [B] tokens per row, caller order
    prefix_lens: np.ndarray,  # [B]
    ids: np.ndarray,  # [T] the rows' token ids one after another, caller order
    types: np.ndarray,  # [T]
    row_slots: list[np.ndarray | None],  # [B] each row's prefix pool slots [P_r] (None: no prefix)
    prefix_storage: torch.Tensor | None,  # [L, N, 2C], read once: a pool growth replaces it
    path: str,  # "sdpa", "triton" or "varlen"
    merge_pairs: int,
    max_positions: int,
    device: torch.device,
    extra: HostIndex | None = None,  # the caller's own arrays (the heads' index), for the same one copy
    extras: RowExtras | None = None,  # the LoRA plan: a tie-break of the row order, arrays from the layout
) -> PackedBatch:
    """Orders the rows by (length, prefix length), concatenates their tokens in that order and lays the
    batch out for `path`; index math runs on the host, then everything moves to the device at once."""
    keys = (prefix_lens, lengths) if extras is None else (extras.sort_key, prefix_lens, lengths)
    order = np.lexsort(keys)  # [B] packed row -> caller row
    rows = HostRows.of(lengths[order], prefix_lens[order])
    caller_start = np.cumsum(lengths, dtype=np.int64) - lengths  # [B]
    token_source = np.repeat(caller_start[order] - rows.row_start, rows.lengths) + np.arange(rows.num_tokens)  # [T]
    restore = np.empty_like(order)
    restore[order] = np.arange(order.shape[0])  # [B] packed row of each caller row
    slots = [row_slots[i] for i in order if row_slots[i] is not None]
    slots = np.concatenate(slots) if slots else np.zeros(0, np.int64)  # [sum P]
    index = extra if extra is not None else HostIndex()
    index.add("input_ids", ids[token_source])
    index.add("token_type_ids", types[token_source])
    index.add("positions", rows.positions(max_positions))
    index.add("restore_order", restore)
    index.add("cls_index", rows.row_start)
    if extras is not None:
        extras.add_arrays(rows, order, index)
    storage = prefix_storage if slots.shape[0] else None
    if path == "sdpa":
        on_device = index.to(device)
        attention = ChunkedAttention(rows, storage, torch.from_numpy(slots), merge_pairs, device)
    else:
        block_m = add_ragged_arrays(index, rows, slots, path)
        on_device = index.to(device)
        attention = RaggedAttention(path, rows, on_device, block_m, storage)
    return PackedBatch(
        on_device["input_ids"], on_device["token_type_ids"], on_device["positions"], on_device["cls_index"],
        on_device["restore_order"], attention, rows, order, on_device,
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
    """The padded interface (training, tests) as a packed batch on the sdpa path; rows keep their own
    prefix, and under autograd gradients reach it."""
    lengths = token_mask.sum(dim=1).cpu().numpy()  # [B]
    P = prefix_lens.cpu().numpy().astype(np.int64)  # [B]
    storage, row_slots = None, [None] * len(lengths)
    if prefix_kv is not None:
        L, two, B, H, P_max, D = prefix_kv.shape
        storage = prefix_kv.permute(0, 2, 4, 1, 3, 5).reshape(L, B * P_max, two * H * D)  # [L, B * P_max, 2C]
        row_slots = [row * P_max + np.arange(p) if p else None for row, p in enumerate(P.tolist())]
    mask = token_mask.cpu()
    return pack(
        lengths, P, input_ids.cpu()[mask].numpy(), token_type_ids.cpu()[mask].numpy(), row_slots, storage, "sdpa",
        merge_pairs, max_positions, input_ids.device,
    )
