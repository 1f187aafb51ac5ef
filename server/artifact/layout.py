"""The one home of the prefix layout rule: how the P-tuning v2 prefix encoder's output, PEFT's
`prompt_embeddings` and the original checkpoints' flat prefix map onto the artifact's key_values.

The flat prefix is `[P, 2 * L * hidden]`; seen as `(P, 2L, H, D)`, entry `2l` holds layer l's keys and
`2l + 1` its values (the seed's `get_prompt` permutes it to `[2L, B, H, P, D]` and splits it in pairs).
The trainer and the importers both use it.
"""

from __future__ import annotations

import torch


def flat_to_key_values(flat: torch.Tensor, num_layers: int, num_heads: int, head_dim: int) -> torch.Tensor:
    """`[P, 2 * L * H * D]` (the encoder's output) -> `[L, 2, H, P, D]` (the artifact's prefix.key_values)."""
    P = flat.shape[0]
    expected = 2 * num_layers * num_heads * head_dim
    if flat.dim() != 2 or flat.shape[1] != expected:
        raise ValueError(f"expected a prefix of shape [P, {expected}], got {list(flat.shape)}")
    grid = flat.view(P, 2 * num_layers, num_heads, head_dim)  # [P, 2L, H, D]
    per_layer = grid.permute(1, 2, 0, 3)  # [2L, H, P, D]
    return per_layer.reshape(num_layers, 2, num_heads, P, head_dim)  # [L, 2, H, P, D]
