"""Shared test helpers: random artifacts, the transformers reference P-tuning v2 model, and loading and
scoring through any engine as the batcher does."""

from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, DynamicCache

from server.artifact import BackboneShape, HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes
from server.engine import TaskFacts, TokenBatch
from server.engine.scoring import default_score_function


def make_artifact(
    shape: BackboneShape,
    prefix_len: int = 4,
    num_labels: int = 2,
    problem_type: ProblemType = ProblemType.SINGLE_LABEL,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    head: HeadKind = HeadKind.SEQUENCE,
    own_pooler: bool = False,
    labels: tuple[str, ...] | None = None,
) -> PrefixArtifact:
    gen = torch.Generator().manual_seed(seed)
    kv = torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen) * scale
    weight = torch.randn(num_labels, shape.hidden_size, generator=gen) * 0.5
    bias = torch.randn(num_labels, generator=gen) * 0.1
    pooler_weight = torch.randn(shape.hidden_size, shape.hidden_size, generator=gen) * 0.2 if own_pooler else None
    pooler_bias = torch.randn(shape.hidden_size, generator=gen) * 0.1 if own_pooler else None
    return PrefixArtifact(
        key_values=kv.to(dtype),
        classifier_weight=weight.to(dtype),
        classifier_bias=bias.to(dtype),
        problem_type=problem_type,
        labels=labels or tuple(f"label_{i}" for i in range(num_labels)),
        extra_metadata={"author": "tests"},
        head=head,
        pooler_weight=pooler_weight.to(dtype) if own_pooler else None,
        pooler_bias=pooler_bias.to(dtype) if own_pooler else None,
    )


@functools.lru_cache(maxsize=4)
def _reference_model(folder: str):
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()  # BertModel or RobertaModel
    return model, AutoTokenizer.from_pretrained(folder)


def _position_offset(config) -> int:
    return config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0


@torch.no_grad()
def reference_outputs(folder: str | Path, artifact: PrefixArtifact, text: str | tuple[str, str]):
    """transformers' model of the backbone's family with the prefix as its past key/values in a
    DynamicCache and the attention mask extended by ones over the prefix (the seed's models in eval
    mode). Returns (last_hidden_state [S, C], pooler_output [C] or None, the tokenizer's encoding)."""
    model, tokenizer = _reference_model(str(folder))
    P = artifact.prefix_len
    pair = (text,) if isinstance(text, str) else tuple(text)
    limit = model.config.max_position_embeddings - _position_offset(model.config) - P
    enc = tokenizer(*pair, truncation=True, max_length=limit, return_tensors="pt", return_offsets_mapping=True)
    kv = artifact.key_values.float()  # [L, 2, H, P, D]
    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
    mask = torch.cat([torch.ones(1, P, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], dim=1)
    types = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    out = model(input_ids=enc["input_ids"], token_type_ids=types, attention_mask=mask, **past(model, cache))
    pooled = out.pooler_output[0] if out.pooler_output is not None else None
    return out.last_hidden_state[0], pooled, enc


def past(model, cache: DynamicCache) -> dict:
    """The prefix as the model's past key/values: `cache=` since transformers 5, `past_key_values=` before
    (the package serves on both; the suite runs on both)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _score(logits: torch.Tensor, problem_type: ProblemType) -> list:
    if problem_type is ProblemType.SINGLE_LABEL:
        return logits.softmax(-1).tolist()
    if problem_type is ProblemType.MULTI_LABEL:
        return logits.sigmoid().tolist()
    return logits.tolist()


def reference_scores(folder: str | Path, artifact: PrefixArtifact, text: str | tuple[str, str]) -> list:
    """The seed's P-tuning v2 model for the artifact's head: a sequence head on the backbone's pooler
    or on the artifact's own (SPEC 1b); a token head gives one score list per token."""
    hidden, pooled, _ = reference_outputs(folder, artifact, text)
    weight, bias = artifact.classifier_weight.float(), artifact.classifier_bias.float()
    if artifact.head is HeadKind.TOKEN:
        return _score(hidden @ weight.T + bias, artifact.problem_type)  # [S, C]
    if artifact.pooler_weight is not None:
        pooled = torch.tanh(hidden[0] @ artifact.pooler_weight.float().T + artifact.pooler_bias.float())
    return _score(pooled @ weight.T + bias, artifact.problem_type)


# --- an engine's calls as the batcher makes them, for Engine and EngineProcess alike ----------------

_HANDLES = itertools.count(1_000_000)  # apart from the handles the code under test gives out


@dataclass(frozen=True)
class Loaded:
    """A task loaded into an engine by a test: its handle there and what the engine said of it."""

    handle: int
    facts: TaskFacts


def load_task(engine, artifact: PrefixArtifact) -> Loaded:
    handle = next(_HANDLES)
    return Loaded(handle, engine.load_task(handle, artifact_to_bytes(artifact)))


def token_batch(rows: list, functions: list | None = None) -> TokenBatch:
    """A batch of (EncodedInput, Loaded) rows, each with its task's own score function unless given."""
    return TokenBatch.of(
        [encoded for encoded, _ in rows], [task.handle for _, task in rows], [task.facts.head for _, task in rows],
        [int(f) if f is not None else default_score_function(task.facts.head, task.facts.problem_type)
         for f, (_, task) in zip(functions or [None] * len(rows), rows)],
    )


def score_rows(engine, rows: list, functions: list | None = None) -> list:
    """Each row's scores cut to its task's labels (per token for a token task), via engine.score."""
    batch = token_batch(rows, functions)
    return engine.score(batch).split(batch, [task.facts.num_labels for _, task in rows])
