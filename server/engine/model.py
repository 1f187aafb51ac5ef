"""The BERT encoder with per-row deep prefixes, in one readable file.

Each batch row b carries its own prefix of length P_b (padded to the batch's P_max and masked) that
is prepended to the keys and values of every layer, and its tokens take positions P_b .. P_b+S-1,
exactly as HF BERT does when given past key/values (SPEC section 1). Attention runs through
`scaled_dot_product_attention`, so nothing here depends on transformers' cache classes. The same
module serves inference (under inference_mode) and training (gradients flow into the prefix).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from server.engine.backbone import BackboneError, BertGeometry


class EncoderLayer(nn.Module):
    def __init__(self, g: BertGeometry):
        super().__init__()
        self.num_heads, self.head_dim = g.num_heads, g.head_dim
        self.qkv = nn.Linear(g.hidden_size, 3 * g.hidden_size)  # query, key, value fused: one matmul
        self.attn_out = nn.Linear(g.hidden_size, g.hidden_size)
        self.attn_norm = nn.LayerNorm(g.hidden_size, eps=g.layer_norm_eps)
        self.ffn_in = nn.Linear(g.hidden_size, g.intermediate_size)
        self.ffn_out = nn.Linear(g.intermediate_size, g.hidden_size)
        self.ffn_norm = nn.LayerNorm(g.hidden_size, eps=g.layer_norm_eps)
        self.activation = _activation(g.hidden_act)

    def forward(
        self,
        x: torch.Tensor,  # [T, C]: the batch's real tokens, packed without padding
        layout: "PackedLayout",
        prefix_kv: torch.Tensor | None,  # [2, B, H, P_max, D] or None
        attn_mask: torch.Tensor,  # [B, 1, 1, P_max + S] bool, True = attend
    ) -> torch.Tensor:
        B, S, C = layout.batch, layout.longest, x.shape[-1]
        qkv = layout.pad(self.qkv(x))  # [B * S, 3C]; only attention sees the padded shape
        q, k, v = qkv.view(B, S, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, S, D]
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[0], k], dim=2)  # [B, H, P_max + S, D]
            v = torch.cat([prefix_kv[1], v], dim=2)  # [B, H, P_max + S, D]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, S, D]
        y = layout.unpad(y.transpose(1, 2).reshape(B * S, C))  # [T, C]
        x = self.attn_norm(x + self.attn_out(y))
        return self.ffn_norm(x + self.ffn_out(self.activation(self.ffn_in(x))))


class PackedLayout:
    """Where a batch's T real tokens sit in its padded [B, S] grid. The dense layers (most of the
    compute) run on the packed [T, C] tokens, so padding costs only inside attention."""

    def __init__(self, token_mask: torch.Tensor):  # [B, S] bool, each row's tokens first
        self.batch, self.longest = token_mask.shape
        self.dense = bool(token_mask.all())
        self.flat_index = token_mask.reshape(-1).nonzero().squeeze(1)  # [T] into the flattened [B * S]
        lengths = token_mask.sum(dim=1)  # [B]
        self.row_starts = lengths.cumsum(0) - lengths  # [B]: where each row's [CLS] sits in [T]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:  # [B, S, ...] -> [T, ...]
        flat = padded.reshape(self.batch * self.longest, *padded.shape[2:])  # [B * S, ...]
        return flat if self.dense else flat.index_select(0, self.flat_index)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:  # [T, F] -> [B * S, F], zeros in the padding
        if self.dense:
            return packed
        return packed.new_zeros(self.batch * self.longest, packed.shape[-1]).index_copy(0, self.flat_index, packed)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:  # [B * S, F] -> [T, F]
        return padded if self.dense else padded.index_select(0, self.flat_index)


class PrefixBert(nn.Module):
    def __init__(self, g: BertGeometry):
        super().__init__()
        self.geometry = g
        self.word_embeddings = nn.Embedding(g.vocab_size, g.hidden_size)
        self.position_embeddings = nn.Embedding(g.max_position_embeddings, g.hidden_size)
        self.token_type_embeddings = nn.Embedding(g.type_vocab_size, g.hidden_size)
        self.embed_norm = nn.LayerNorm(g.hidden_size, eps=g.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(g) for _ in range(g.num_layers))
        self.pooler = nn.Linear(g.hidden_size, g.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] long
        token_type_ids: torch.Tensor,  # [B, S] long
        token_mask: torch.Tensor,  # [B, S] bool, False on padding
        prefix_kv: torch.Tensor | None,  # [L, 2, B, H, P_max, D] or None for the bare backbone
        prefix_lens: torch.Tensor,  # [B] long, each row's true P (0 without a prefix)
    ) -> torch.Tensor:
        """Returns the pooled output, tanh(W_pool h_CLS + b_pool): [B, C]."""
        S = input_ids.shape[1]
        layout = PackedLayout(token_mask)
        positions = prefix_lens[:, None] + torch.arange(S, device=input_ids.device)  # [B, S]
        # Padding slots of a long-prefix row can run past the table; they are masked, so any index will do.
        positions = positions.clamp_(max=self.geometry.max_position_embeddings - 1)
        x = (
            self.word_embeddings(layout.pack(input_ids))
            + self.position_embeddings(layout.pack(positions))
            + self.token_type_embeddings(layout.pack(token_type_ids))
        )  # [T, C]
        x = self.embed_norm(x)
        attn_mask = self._attention_mask(token_mask, prefix_kv, prefix_lens)
        for index, layer in enumerate(self.layers):
            x = layer(x, layout, None if prefix_kv is None else prefix_kv[index], attn_mask)
        return torch.tanh(self.pooler(x[layout.row_starts]))  # [B, C]

    @staticmethod
    def _attention_mask(token_mask, prefix_kv, prefix_lens) -> torch.Tensor:
        if prefix_kv is None:
            keys = token_mask  # [B, S]
        else:
            p_max = prefix_kv.shape[-2]
            # Padded prefix slots are masked out, never zero-filled: a zero key still takes softmax weight.
            prefix_valid = torch.arange(p_max, device=token_mask.device)[None, :] < prefix_lens[:, None]  # [B, P_max]
            keys = torch.cat([prefix_valid, token_mask], dim=1)  # [B, P_max + S]
        return keys[:, None, None, :]  # [B, 1, 1, P_max + S]

    @classmethod
    def from_backbone_weights(cls, g: BertGeometry, weights: dict[str, torch.Tensor]) -> "PrefixBert":
        model = cls(g)
        model.load_state_dict(_to_engine_names(weights, g.num_layers))
        model.requires_grad_(False)
        return model.eval()


_LAYER_RENAMES = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_TOP_RENAMES = {
    "embeddings.word_embeddings": "word_embeddings",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.token_type_embeddings": "token_type_embeddings",
    "embeddings.LayerNorm": "embed_norm",
    "pooler.dense": "pooler",
}


def _to_engine_names(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Maps HF BERT names onto this module's, fusing query/key/value into one qkv projection."""
    out: dict[str, torch.Tensor] = {}
    layer_re = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    for name, tensor in weights.items():
        match = layer_re.match(name)
        if match:
            index, module, kind = match.groups()
            if module in _LAYER_RENAMES:
                out[f"layers.{index}.{_LAYER_RENAMES[module]}.{kind}"] = tensor
            continue
        module, _, kind = name.rpartition(".")
        if module in _TOP_RENAMES:
            out[f"{_TOP_RENAMES[module]}.{kind}"] = tensor
    for index in range(num_layers):
        for kind in ("weight", "bias"):
            parts = [weights.get(f"encoder.layer.{index}.attention.self.{p}.{kind}") for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise BackboneError(f"layer {index}: missing attention.self query/key/value {kind}")
            out[f"layers.{index}.qkv.{kind}"] = torch.cat(parts, dim=0)  # [3C, C] or [3C]
    if "pooler.weight" not in out:
        raise BackboneError("the backbone has no pooler (pooler.dense.*), which P-tuning v2 classification needs")
    return out


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda t: F.gelu(t, approximate="tanh")
    return F.relu
