"""The engine: one forward pass over rows that each carry their own prefix, head and text.

Owns the device-resident model, the conversion of artifacts into device tensors (once, at load),
batch collation (padding only to the batch's longest row and longest prefix), the per-row heads
(gathered and applied as one batched matmul, no Python loop over rows) and the scores. It knows
nothing of HTTP, tenants or queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from server.artifact import BackboneShape, PrefixArtifact, ProblemType
from server.engine.backbone import BackboneFiles, read_backbone_folder
from server.engine.model import PrefixBert
from server.engine.tokenize import EncodedInput, TextEncoder, TextInput

_PROBLEM_CODES = {ProblemType.SINGLE_LABEL: 0, ProblemType.MULTI_LABEL: 1, ProblemType.REGRESSION: 2}


@dataclass(frozen=True, eq=False)
class LoadedPrefix:
    """A task version resident on the engine's device, in the engine's dtype (heads in float32)."""

    key_values: torch.Tensor  # [L, 2, H, P, D]
    classifier_weight: torch.Tensor  # [C, hidden] float32
    classifier_bias: torch.Tensor  # [C] float32
    problem_type: ProblemType
    labels: tuple[str, ...]

    @property
    def prefix_len(self) -> int:
        return self.key_values.shape[3]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        tensors = (self.key_values, self.classifier_weight, self.classifier_bias)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, slots=True)
class Row:
    encoded: EncodedInput
    prefix: LoadedPrefix | None  # None runs the bare backbone (baselines only)


class Engine:
    def __init__(self, files: BackboneFiles, encoder: TextEncoder, device: str = "cpu", dtype=torch.float32):
        self.files = files
        self.encoder = encoder
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = PrefixBert.from_backbone_weights(files.geometry, files.state_dict).to(self.device, dtype)
        self.pad_token_id = encoder.tokenizer.pad_token_id or 0

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype=torch.float32) -> "Engine":
        return cls(read_backbone_folder(folder), TextEncoder.from_folder(folder), device, dtype)

    @property
    def shape(self) -> BackboneShape:
        return self.files.shape()

    def max_tokens(self, prefix_len: int) -> int:
        return self.files.geometry.max_position_embeddings - prefix_len

    def load_prefix(self, artifact: PrefixArtifact) -> LoadedPrefix:
        return LoadedPrefix(
            key_values=artifact.key_values.to(self.device, self.dtype).contiguous(),
            classifier_weight=artifact.classifier_weight.to(self.device, torch.float32),
            classifier_bias=artifact.classifier_bias.to(self.device, torch.float32),
            problem_type=artifact.problem_type,
            labels=artifact.labels,
        )

    def encode(self, inputs: list[TextInput], prefix_len: int, truncate: bool = True) -> list[EncodedInput]:
        return self.encoder.encode(inputs, self.max_tokens(prefix_len), truncate)

    @torch.inference_mode()
    def score(self, rows: list[Row]) -> list[list[float]]:
        """Scores per row, in row order: probabilities, or raw values for regression."""
        prefixes, row_to_prefix = _unique_prefixes(rows)
        pooled = self._pooled(rows, prefixes, row_to_prefix).float()  # [B, C]
        scores = _apply_heads(pooled, prefixes, row_to_prefix.to(self.device))  # [B, labels_max]
        return [values[: row.prefix.num_labels] for values, row in zip(scores.tolist(), rows)]

    @torch.inference_mode()
    def pooled(self, rows: list[Row]) -> torch.Tensor:
        """The pooled output per row, [B, C]; rows may lack a prefix (the bare-backbone baseline)."""
        prefixes, row_to_prefix = _unique_prefixes(rows)
        return self._pooled(rows, prefixes, row_to_prefix)

    def _pooled(self, rows, prefixes, row_to_prefix) -> torch.Tensor:
        input_ids, token_type_ids, token_mask = self._collate_tokens(rows)
        prefix_kv, prefix_lens = self._gather_prefixes(prefixes, row_to_prefix)
        return self.model(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens)

    def _collate_tokens(self, rows: list[Row]):
        longest = max(len(row.encoded) for row in rows)
        ids, types, lengths = [], [], []
        for row in rows:
            pad = longest - len(row.encoded)
            ids.append(row.encoded.input_ids + [self.pad_token_id] * pad)
            types.append(row.encoded.token_type_ids + [0] * pad)
            lengths.append(len(row.encoded))
        token_mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]  # [B, S]
        return (
            torch.tensor(ids, device=self.device),  # [B, S]
            torch.tensor(types, device=self.device),  # [B, S]
            token_mask.to(self.device),
        )

    def _gather_prefixes(self, prefixes: list[LoadedPrefix | None], row_to_prefix: torch.Tensor):
        lens = torch.tensor([p.prefix_len if p else 0 for p in prefixes], dtype=torch.long)  # [U]
        row_lens = lens[row_to_prefix].to(self.device)  # [B]
        p_max = int(lens.max())
        if p_max == 0:
            return None, row_lens
        g = self.files.geometry
        shape = (g.num_layers, 2, len(row_to_prefix), g.num_heads, p_max, g.head_dim)  # [L, 2, B, H, P_max, D]
        # Padded slots must hold zeros, not garbage: masked-out values still meet a 0 weight, and 0 * NaN = NaN.
        ragged = bool((lens != p_max).any())
        prefix_kv = (torch.zeros if ragged else torch.empty)(shape, device=self.device, dtype=self.dtype)
        for index, prefix in enumerate(prefixes):
            if prefix is None:
                continue
            rows = (row_to_prefix == index).nonzero().squeeze(1).to(self.device)  # [rows of this prefix]
            # Each row receives its prefix once, straight into its slot: one copy per row in all.
            prefix_kv[:, :, rows, :, : prefix.prefix_len] = prefix.key_values.unsqueeze(2)  # [L, 2, 1, H, P, D]
        return prefix_kv, row_lens


def _unique_prefixes(rows: list[Row]) -> tuple[list[LoadedPrefix | None], torch.Tensor]:
    slot: dict[LoadedPrefix | None, int] = {}
    row_to_prefix = [slot.setdefault(row.prefix, len(slot)) for row in rows]
    return list(slot), torch.tensor(row_to_prefix, dtype=torch.long)  # [B]


def _apply_heads(pooled: torch.Tensor, prefixes: list[LoadedPrefix], row_to_prefix: torch.Tensor) -> torch.Tensor:
    """Applies each row's own classifier and score function in one batched pass: [B, labels_max]."""
    labels_max = max(p.num_labels for p in prefixes)
    U, C = len(prefixes), pooled.shape[1]
    weights = pooled.new_zeros(U, labels_max, C)  # [U, labels_max, C]
    biases = pooled.new_zeros(U, labels_max)  # [U, labels_max]
    num_labels = torch.tensor([p.num_labels for p in prefixes], device=pooled.device)  # [U]
    kinds = torch.tensor([_PROBLEM_CODES[p.problem_type] for p in prefixes], device=pooled.device)  # [U]
    for index, prefix in enumerate(prefixes):
        weights[index, : prefix.num_labels] = prefix.classifier_weight
        biases[index, : prefix.num_labels] = prefix.classifier_bias
    logits = torch.bmm(weights[row_to_prefix], pooled[:, :, None]).squeeze(2) + biases[row_to_prefix]  # [B, labels_max]
    label_valid = torch.arange(labels_max, device=pooled.device)[None, :] < num_labels[row_to_prefix][:, None]
    softmax = logits.masked_fill(~label_valid, float("-inf")).softmax(dim=-1)
    row_kind = kinds[row_to_prefix][:, None]  # [B, 1]
    return torch.where(row_kind == 0, softmax, torch.where(row_kind == 1, logits.sigmoid(), logits))
