"""Shared test helpers: random artifacts, the transformers reference P-tuning v2 model, and whether a
process that is not ours has exited."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertModel, DynamicCache

from server.artifact import BackboneShape, PrefixArtifact, ProblemType


def make_artifact(
    shape: BackboneShape,
    prefix_len: int = 4,
    num_labels: int = 2,
    problem_type: ProblemType = ProblemType.SINGLE_LABEL,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> PrefixArtifact:
    gen = torch.Generator().manual_seed(seed)
    kv = torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen) * scale
    weight = torch.randn(num_labels, shape.hidden_size, generator=gen) * 0.5
    bias = torch.randn(num_labels, generator=gen) * 0.1
    return PrefixArtifact(
        key_values=kv.to(dtype),
        classifier_weight=weight.to(dtype),
        classifier_bias=bias.to(dtype),
        problem_type=problem_type,
        labels=tuple(f"label_{i}" for i in range(num_labels)),
        extra_metadata={"author": "tests"},
    )


@functools.lru_cache(maxsize=4)
def _reference_model(folder: str):
    model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def reference_scores(folder: str | Path, artifact: PrefixArtifact, text: str | tuple[str, str]) -> list[float]:
    """The seed's BertPrefixForSequenceClassification in eval mode: HF BertModel with the prefix as its
    past key/values in a DynamicCache and the attention mask extended by ones over the prefix."""
    model, tokenizer = _reference_model(str(folder))
    P = artifact.prefix_len
    pair = (text,) if isinstance(text, str) else tuple(text)
    enc = tokenizer(*pair, truncation=True, max_length=model.config.max_position_embeddings - P, return_tensors="pt")
    kv = artifact.key_values.float()  # [L, 2, H, P, D]
    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
    mask = torch.cat([torch.ones(1, P, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], dim=1)
    out = model(
        input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"], attention_mask=mask, cache=cache
    )
    logits = out.pooler_output @ artifact.classifier_weight.float().T + artifact.classifier_bias.float()
    if artifact.problem_type is ProblemType.SINGLE_LABEL:
        return logits.softmax(-1)[0].tolist()
    if artifact.problem_type is ProblemType.MULTI_LABEL:
        return logits.sigmoid()[0].tolist()
    return logits[0].tolist()


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet (it is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
