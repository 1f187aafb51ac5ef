"""The BERT / RoBERTa encoder with per-row deep prefixes, in one readable file.

Each batch row b carries its own prefix of length P_b that is prepended to the keys and values of
every layer, and its tokens take positions offset + P_b .. offset + P_b+S-1, exactly as HF BERT
(offset 0) and RoBERTa (offset padding_idx + 1) do when given past key/values (SPEC 1, 1b; the
family's rules are in family.py). Batches arrive packed (layout.py): dense layers see only real
tokens, and each layer's attention is the batch's own path (chunked `scaled_dot_product_attention` on
the CPU, chunked.py; with no padding on CUDA, the Triton kernel reading each row's prefix in the pool,
ragged.py). Nothing here depends on transformers' caches.
Rows whose task has LoRA adapters (SPEC 1c) get their deltas added to each adapted Linear's output
(lora.py; nothing at all when no row has one).
The same module serves inference (under inference_mode) and training (gradients flow into the prefix
or the LoRA weights).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from server.engine.attention import pack_padded
from server.engine.backbone import BackboneError, BertGeometry
from server.engine.layout import PackedBatch
from server.engine.lora import LoraDeltas, adapted


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

    def forward(self, x: torch.Tensor, batch: PackedBatch, layer_index: int) -> torch.Tensor:  # x: [T, C]
        lora, i = batch.lora, layer_index  # each Linear adds the LoRA deltas of the rows that have them
        qkv = adapted(self.qkv, x, lora, i, "qkv")  # [T, 3C]: per token [queries | keys | values], head h at h*D in each
        y = batch.attention.attend(i, qkv, self.num_heads)  # [T, C]: each row over [its prefix ; its tokens]
        x = self.attn_norm(x + adapted(self.attn_out, y, lora, i, "attn_out"))
        h = self.activation(adapted(self.ffn_in, x, lora, i, "ffn_in"))  # [T, I]
        return self.ffn_norm(x + adapted(self.ffn_out, h, lora, i, "ffn_out"))


class PrefixBert(nn.Module):
    def __init__(self, g: BertGeometry, with_pooler: bool = True):
        super().__init__()
        self.geometry = g
        self.position_offset = g.position_offset  # batches carry P + i; the family shifts it
        self.word_embeddings = nn.Embedding(g.vocab_size, g.hidden_size)
        self.position_embeddings = nn.Embedding(g.max_position_embeddings, g.hidden_size)
        self.token_type_embeddings = nn.Embedding(g.type_vocab_size, g.hidden_size)
        self.embed_norm = nn.LayerNorm(g.hidden_size, eps=g.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(g) for _ in range(g.num_layers))
        # None: a RoBERTa checkpoint without one; then every sequence task brings its own (SPEC 1b).
        self.pooler = nn.Linear(g.hidden_size, g.hidden_size) if with_pooler else None

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] long
        token_type_ids: torch.Tensor,  # [B, S] long
        token_mask: torch.Tensor,  # [B, S] bool, False on padding
        prefix_kv: torch.Tensor | None,  # [L, 2, B, H, P_max, D] or None for the bare backbone
        prefix_lens: torch.Tensor,  # [B] long, each row's true P (0 without a prefix)
        lora: LoraDeltas | None = None,  # one trainable adapter for every row (training)
    ) -> torch.Tensor:
        """The padded interface (training, tests): the pooled output [B, C], rows in the caller's order."""
        batch = pack_padded(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens, self.max_positions)
        batch.lora = lora
        return self.forward_packed(batch)

    @property
    def max_positions(self) -> int:
        """Positions P + i the packers may give (before the family's offset)."""
        return self.geometry.max_position_embeddings - self.position_offset

    def forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Returns the pooled output, tanh(W_pool h_CLS + b_pool): [B, C], rows in the caller's order
        (the first token's final state where the backbone has no pooler)."""
        return self.pool(self.hidden_states(batch)[batch.cls_index])[batch.restore_order]  # [B, C]

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """Every token's final hidden state, [T, C], rows in packed order (batch.cls_index: their starts)."""
        positions = batch.positions + self.position_offset if self.position_offset else batch.positions  # [T]
        x = (
            self.word_embeddings(batch.input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(batch.token_type_ids)
        )  # [T, C]
        x = self.embed_norm(x)
        for index, layer in enumerate(self.layers):
            x = layer(x, batch, index)
        return x

    def pool(self, first: torch.Tensor) -> torch.Tensor:
        """The backbone's pooler on first-token states [B, C]; it runs in its own dtype (float32 on
        CUDA, whatever the layers run in)."""
        if self.pooler is None:
            return first
        return torch.tanh(self.pooler(first.to(self.pooler.weight.dtype)))  # [B, C]

    @classmethod
    def from_backbone_weights(cls, g: BertGeometry, weights: dict[str, torch.Tensor]) -> PrefixBert:
        # Built on the meta device and given the loaded tensors themselves (assign=True): the weights
        # are held once, not once read and once more in the module (only the fused qkv is new).
        engine_weights = _to_engine_names(weights, g)
        with torch.device("meta"):
            model = cls(g, with_pooler="pooler.weight" in engine_weights)
        model.load_state_dict(engine_weights, assign=True)
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


def _to_engine_names(weights: dict[str, torch.Tensor], g: BertGeometry) -> dict[str, torch.Tensor]:
    """Maps HF BERT / RoBERTa names onto this module's, fusing query/key/value into one qkv projection."""
    num_layers = g.num_layers
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
    if "pooler.weight" not in out and g.family.pooler_required:
        raise BackboneError("the backbone has no pooler (pooler.dense.*), which P-tuning v2 classification needs")
    return out


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda t: F.gelu(t, approximate="tanh")
    return F.relu
