"""The P-tuning v2 prefix encoder: its output is the flat prefix `[P, 2 * L * hidden]`, laid out as
server.artifact.layout says (the importers read checkpoints with the same rule).
"""

from __future__ import annotations

import torch
from torch import nn

# The seed's model gets its new modules initialised by BertPreTrainedModel._init_weights: N(0, 0.02).
INIT_STD = 0.02


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
