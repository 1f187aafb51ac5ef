"""The token-head model being trained: P-tuning v2's BertPrefixForTokenClassification on the
server's own `PrefixBert` layers.

The backbone runs with the prefix as past keys/values exactly as for sentence tasks (layout.py
lays the batch out), but instead of the pooled `[CLS]` the final hidden state of every token goes
through dropout and a linear head (the seed's token model: `classifier(dropout(sequence_output))`).
The hidden states are the engine's own (`PrefixBert.hidden_states`), so the family's positions
(BERT's P + i, RoBERTa's padding_idx + 1 + P + i) are those serving uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from server.engine.attention import pack_padded
from server.engine.lora import LoraDeltas
from server.engine.model import PrefixBert
from training.model import PrefixClassifier
from training.words import IGNORE


def unpack_tokens(packed: torch.Tensor, token_mask: torch.Tensor, restore_order: torch.Tensor) -> torch.Tensor:
    """Packed per-token values `[T, K]` back to the caller's padded layout `[B, S, K]` (zeros on padding).

    Packed rows are the caller's rows in the order `order = argsort(restore_order)`, each row's tokens
    contiguous (layout.py), so token t sits at row `order[r]`, column `s` of the padded input."""
    B, S = token_mask.shape
    order = torch.argsort(restore_order)  # [B] caller row of each packed row
    rows_cols = token_mask[order].nonzero()  # [T, 2]: (packed row, column), row-major as packed
    dest = order[rows_cols[:, 0]] * S + rows_cols[:, 1]  # [T] flat index into [B * S]
    out = packed.new_zeros(B * S, packed.shape[1]).index_copy(0, dest, packed)  # [B * S, K]
    return out.view(B, S, packed.shape[1])  # [B, S, K]


def token_logits(
    backbone: PrefixBert,
    prefix_kv: torch.Tensor | None,  # [L, 2, B, H, P, D]
    classifier: nn.Module,
    input_ids: torch.Tensor,  # [B, S]
    token_type_ids: torch.Tensor,  # [B, S]
    token_mask: torch.Tensor,  # [B, S] bool
    dropout: nn.Module | None = None,
    lora: LoraDeltas | None = None,
) -> torch.Tensor:
    """Logits of every token, `[B, S, num_labels]` (padding rows hold zeros)."""
    B, P = input_ids.shape[0], prefix_kv.shape[4] if prefix_kv is not None else 0
    prefix_lens = torch.full((B,), P, dtype=torch.long, device=input_ids.device)  # [B]
    batch = pack_padded(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens, backbone.max_positions)
    batch.lora = lora
    hidden = backbone.hidden_states(batch)  # [T, C], packed token order
    if dropout is not None:
        hidden = dropout(hidden)
    return unpack_tokens(classifier(hidden), token_mask, batch.restore_order)  # [B, S, num_labels]


class PrefixTokenClassifier(PrefixClassifier):
    """The sentence model's prefix, head and frozen backbone; only the forward pass differs."""

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Logits, `[B, S, num_labels]`."""
        prefix_kv = self.batch_prefix(input_ids.shape[0])  # [L, 2, B, H, P, D]
        dropout = self.dropout if self.training else None
        return token_logits(self.backbone, prefix_kv, self.classifier, input_ids, token_type_ids, token_mask, dropout, self.lora)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the words' first sub-tokens; the rest (IGNORE) count for nothing."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
