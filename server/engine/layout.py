"""The one batch layout every attention path reads: rows packed with no padding, and where each row's
tokens, prefix slots and positions are.

Rows are put in *packed order*, by (length, prefix length), and their tokens concatenated into one [T]
sequence, so the dense layers (most of the compute) run on real tokens only. `HostRows` works out, once
and on the host, where everything of every row is; each attention path (chunked.py for the CPU's sdpa,
ragged.py for the GPU's kernels) derives its own index arrays from it. Index arrays travel to the
device in one copy (`HostIndex`: pinned and non-blocking on CUDA, views of one buffer anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


class Attention(Protocol):
    """One attention path over a packed batch (chunked.py, ragged.py)."""

    def attend(self, layer: int, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """One layer's attention output [T, C] from its fused projection qkv [T, 3C]."""
        ...


class RowExtras(Protocol):
    """What a batch adds to the layout beyond attention (the LoRA plan, lora.py)."""

    sort_key: np.ndarray  # [B] caller order: rows of equal length and prefix length are ordered by it

    def add_arrays(self, rows: HostRows, order: np.ndarray, index: HostIndex) -> None:
        """Adds its index arrays, which depend on the packed layout, to the batch's one copy."""
        ...


@dataclass(frozen=True)
class HostRows:
    """The packed rows' geometry on the host (int64 numpy arrays)."""

    lengths: np.ndarray  # [B] tokens per row
    prefix_lens: np.ndarray  # [B] P per row (0: no prefix)
    row_start: np.ndarray  # [B] each row's first token in [T]
    prefix_start: np.ndarray  # [B] each row's first slot in the batch's [sum P] prefix slots
    token_row: np.ndarray  # [T] the row of each token
    within: np.ndarray  # [T] each token's index within its row
    prefix_row: np.ndarray  # [sum P] the row of each prefix slot
    prefix_within: np.ndarray  # [sum P] each prefix slot's index within its row's prefix

    @classmethod
    def of(cls, lengths: np.ndarray, prefix_lens: np.ndarray) -> HostRows:
        lengths, prefix_lens = lengths.astype(np.int64), prefix_lens.astype(np.int64)
        row_start, prefix_start = _starts(lengths), _starts(prefix_lens)
        rows = np.arange(lengths.shape[0])
        token_row, prefix_row = np.repeat(rows, lengths), np.repeat(rows, prefix_lens)  # [T], [sum P]
        return cls(
            lengths, prefix_lens, row_start, prefix_start, token_row,
            np.arange(token_row.shape[0]) - row_start[token_row],  # [T]
            prefix_row,
            np.arange(prefix_row.shape[0]) - prefix_start[prefix_row],  # [sum P]
        )

    @property
    def num_tokens(self) -> int:
        return self.token_row.shape[0]

    def positions(self, max_positions: int) -> np.ndarray:
        """Token i of a row with prefix length P takes position P + i (HF's, given past key/values)."""
        return np.minimum(self.prefix_lens[self.token_row] + self.within, max_positions - 1)  # [T]


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts  # [n] exclusive prefix sums


@dataclass(frozen=True)
class RowIndex:
    """Where each row's tokens and prefix slots are, on the kernel's device (int32 each): what the
    Triton kernel reads (triton_attention.py). Rows in packed order."""

    row_start: torch.Tensor  # [B] first token of the row in [T]
    row_len: torch.Tensor  # [B] tokens of the row
    prefix_start: torch.Tensor  # [B] where the row's slots start in `slots`
    prefix_len: torch.Tensor  # [B] P of the row (0: no prefix)
    slots: torch.Tensor  # [sum P] pool slot of each prefix position, row after row
    block_row: torch.Tensor  # [NB] the row of each query block
    block_first: torch.Tensor  # [NB] the block's first query, counted within its row
    block_m: int  # queries per block


class HostIndex:
    """Named int32 index arrays gathered on the host, then sent to the device in one copy."""

    ALIGN = 4  # int32 elements: every array starts 16-byte aligned, as Triton specializes pointers on it

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._names: list[str] = []

    def add(self, name: str, values) -> None:
        self._names.append(name)
        self._parts.append(np.asarray(values, dtype=np.int32).reshape(-1))  # [n]

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        cuda = device.type == "cuda"
        starts, size = [], 0
        for part in self._parts:
            starts.append(size)
            size += -(-part.shape[0] // self.ALIGN) * self.ALIGN
        # Pinned on CUDA, so the copy is a DMA the host does not wait for; the kernels that read it
        # queue behind it on the stream (and the caching host allocator keeps the buffer until then).
        flat = torch.zeros(size, dtype=torch.int32, pin_memory=cuda)  # [sum of aligned sizes]
        host = flat.numpy()
        for start, part in zip(starts, self._parts):
            host[start : start + part.shape[0]] = part
        if cuda:
            flat = flat.to(device, non_blocking=True)
        # Views, not copies: one allocation and one transfer for the whole batch.
        return {name: flat[start : start + part.shape[0]] for name, start, part in zip(self._names, starts, self._parts)}


@dataclass
class PackedBatch:
    """A batch as the model reads it: tokens in packed order and the attention path that serves it."""

    input_ids: torch.Tensor  # [T]
    token_type_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]: P_row + index within the row
    cls_index: torch.Tensor  # [B] where each row's first token sits in [T], packed row order
    restore_order: torch.Tensor  # [B] packed row index of each caller row
    attention: Attention
    rows: HostRows = field(repr=False)
    order: np.ndarray = field(repr=False)  # [B] the caller row of each packed row
    extra: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the caller's arrays, same copy
    # lora.py's LoraDeltas, or None: no row has a LoRA adapter. Typed loosely because lora.py imports
    # this module (HostRows, HostIndex), and the arrow runs one way.
    lora: object | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    def token_starts(self) -> np.ndarray:
        """Where each caller row's tokens begin in [T], [B] (host)."""
        restore = np.empty_like(self.order)
        restore[self.order] = np.arange(self.order.shape[0])
        return self.rows.row_start[restore]
