"""The model being trained: the seed's BertPrefixForSequenceClassification, built on the server's
own `PrefixBert` so that what is trained is what is served.

Differences from the seed, all deliberate: the frozen backbone runs without its internal dropout
(it is frozen, and the server runs it that way), and the prefix is one `[P, 2L*hidden]` table
broadcast over the batch instead of an embedding looked up once per row (same values). The prefix
dropout is still drawn independently for every row, as the seed's is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from server.artifact import ProblemType
from server.artifact.layout import flat_to_key_values
from server.engine.model import PrefixBert
from server.engine.scoring import score_logits
from training.lora_adapter import TrainableLora
from training.prefix_encoder import PrefixEncoder


class PrefixClassifier(nn.Module):
    """The prefix (None: none), the LoRA adapter (None: none; `--method lora`) and the head on the
    frozen backbone."""

    def __init__(self, backbone: PrefixBert, prefix_encoder: PrefixEncoder | None, num_labels: int, dropout: float,
                 lora: TrainableLora | None = None):
        super().__init__()
        g = backbone.geometry
        self.backbone = backbone.requires_grad_(False)
        self.prefix_encoder = prefix_encoder
        self.lora = lora
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(g.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)  # as BertPreTrainedModel._init_weights
        nn.init.zeros_(self.classifier.bias)

    def train(self, mode: bool = True) -> PrefixClassifier:
        super().train(mode)
        self.backbone.eval()  # frozen: it never leaves eval mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def key_values(self) -> torch.Tensor:
        """The prefix as the artifact stores it, `[L, 2, H, P, D]`."""
        g = self.backbone.geometry
        return flat_to_key_values(self.prefix_encoder(), g.num_layers, g.num_heads, g.head_dim)

    def batch_prefix(self, batch_size: int) -> torch.Tensor | None:
        """The prefix broadcast over the batch, `[L, 2, B, H, P, D]`, with the prefix dropout in training."""
        if self.prefix_encoder is None:
            return None
        kv = self.key_values()  # [L, 2, H, P, D]
        L, _, H, P, D = kv.shape
        prefix_kv = kv[:, :, None].expand(L, 2, batch_size, H, P, D)  # [L, 2, B, H, P, D], a view
        if self.training and self.dropout.p > 0:
            # Dropout of the expanded view draws a separate mask for every row, as the seed's does.
            prefix_kv = self.dropout(prefix_kv)  # [L, 2, B, H, P, D]
        return prefix_kv

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Logits, `[B, num_labels]`."""
        B = input_ids.shape[0]
        prefix_kv = self.batch_prefix(B)  # [L, 2, B, H, P, D] or None
        P = prefix_kv.shape[4] if prefix_kv is not None else 0
        prefix_lens = torch.full((B,), P, dtype=torch.long, device=input_ids.device)  # [B]
        # Autograd records nothing until the first op that touches the prefix (layer 0's key/value
        # concat) or a LoRA weight: the embeddings and the frozen projections before need no graph.
        pooled = self.backbone(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens, self.lora)  # [B, C]
        return self.classifier(self.dropout(pooled))  # [B, num_labels]

    @torch.no_grad()
    def scores(self, input_ids, token_type_ids, token_mask, problem_type: ProblemType) -> torch.Tensor:
        """What the server returns for these rows: probabilities, or raw values for regression."""
        logits = self.forward(input_ids, token_type_ids, token_mask)
        return score_logits(logits, problem_type)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, problem_type: ProblemType) -> torch.Tensor:
    """The seed's three losses: cross-entropy, binary cross-entropy on logits, mean squared error."""
    if problem_type is ProblemType.SINGLE_LABEL:
        return F.cross_entropy(logits, targets)
    if problem_type is ProblemType.MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.mse_loss(logits, targets)
