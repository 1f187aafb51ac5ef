"""The P-tuning v2 prefix encoder and the one place that knows its output layout.

The encoder's output is `[P, 2 * L * hidden]`; seen as `(P, 2L, H, D)`, entry `2l` holds layer l's keys
and `2l + 1` its values (the seed's `get_prompt` permutes it to `[2L, B, H, P, D]` and splits it in
pairs). PEFT's `prompt_embeddings` and the original checkpoints use the same layout, so the importers
share `flat_to_key_values` with the trainer.
"""

from __future__ import annotations

import torch
from torch import nn

# The seed's model gets its new modules initialised by BertPreTrainedModel._init_weights: N(0, 0.02).
INIT_STD = 0.02


def flat_to_key_values(flat: torch.Tensor, num_layers: int, num_heads: int, head_dim: int) -> torch.Tensor:
    """`[P, 2 * L * H * D]` (the encoder's output) -> `[L, 2, H, P, D]` (the artifact's prefix.key_values)."""
    P = flat.shape[0]
    expected = 2 * num_layers * num_heads * head_dim
    if flat.dim() != 2 or flat.shape[1] != expected:
        raise ValueError(f"expected a prefix of shape [P, {expected}], got {list(flat.shape)}")
    grid = flat.view(P, 2 * num_layers, num_heads, head_dim)  # [P, 2L, H, D]
    per_layer = grid.permute(1, 2, 0, 3)  # [2L, H, P, D]
    return per_layer.reshape(num_layers, 2, num_heads, P, head_dim)  # [L, 2, H, P, D]


class PrefixEncoder(nn.Module):
    """The seed's PrefixEncoder without the batch dimension: every row gets the same prefix.

    Parameter names match the original checkpoints (`embedding.weight`, `trans.0.*`, `trans.2.*`).
    """

    def __init__(
        self,
        prefix_len: int,
        num_layers: int,
        hidden_size: int,
        projection: bool = False,
        projection_hidden: int = 512,
    ):
        super().__init__()
        self.prefix_len = prefix_len
        self.projection = projection
        out_dim = 2 * num_layers * hidden_size
        if projection:
            # The reparameterisation: a small embedding through a two-layer tanh MLP, folded at export.
            self.embedding = nn.Embedding(prefix_len, hidden_size)
            self.trans = nn.Sequential(
                nn.Linear(hidden_size, projection_hidden),
                nn.Tanh(),
                nn.Linear(projection_hidden, out_dim),
            )
        else:
            self.embedding = nn.Embedding(prefix_len, out_dim)
            self.trans = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self) -> torch.Tensor:
        """The prefix, `[P, 2 * L * hidden]`."""
        table = self.embedding.weight  # [P, hidden] or [P, 2 * L * hidden]
        return self.trans(table) if self.trans is not None else table
