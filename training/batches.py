"""Tokenised training sets and their batches.

Rows are tokenised once, with the serving tokenizer (`server.engine.tokenize`), so training sees
exactly the ids the server will. Each epoch is shuffled with the run's seed, then rows of similar
length are grouped into batches (the batches' order is shuffled again), and every batch is padded
only to its own longest row: on a CPU most of a step's time is spent on padding otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.engine.tokenize import EncodedInput, TextEncoder
from training.data import Dataset

# Batches are length-sorted within windows of this many batches: enough to cut the padding, few
# enough that a batch still mixes rows from all over the shuffled epoch.
GROUP_WINDOW = 32


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, S] long
    token_type_ids: torch.Tensor  # [B, S] long
    token_mask: torch.Tensor  # [B, S] bool
    targets: torch.Tensor  # [B] long or [B, C] float

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class EncodedSet:
    encoded: list[EncodedInput]
    targets: torch.Tensor
    pad_token_id: int

    @classmethod
    def build(cls, dataset: Dataset, encoder: TextEncoder, max_tokens: int) -> EncodedSet:
        encoded = encoder.encode(dataset.inputs, max_tokens, truncate=True)
        return cls(encoded, dataset.targets, encoder.tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.encoded)

    def batch(self, indices: list[int]) -> Batch:
        ids, types, mask = pad_rows([self.encoded[i] for i in indices], self.pad_token_id)
        return Batch(ids, types, mask, self.targets[indices])


def epoch_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of row indices: shuffled, length-grouped within windows, order shuffled."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: rows sorted by length (results are put back in row order by the caller)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_rows(rows, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded rows (each with `input_ids` and `token_type_ids`) padded to the longest: ids, token
    types and the mask of real tokens, each `[B, S]`."""
    longest = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)  # [B, S]
    types = torch.zeros(len(rows), longest, dtype=torch.long)  # [B, S]
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)  # [B, S]
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        types[i, :n] = torch.tensor(row.token_type_ids)
        mask[i, :n] = True
    return ids, types, mask
