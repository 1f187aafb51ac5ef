"""Original P-tuning v2 checkpoints -> artifacts.

The checkpoint is the state dict of one of P-tuning v2's models: `BertPrefixForSequenceClassification`
(the seed), `RobertaPrefixForSequenceClassification`, `BertPrefixForTokenClassification`,
`RobertaPrefixForTokenClassification`, `BertPrefixForQuestionAnswering`, `RobertaPrefixForQuestionAnswering`,
`BertPrefixForMultipleChoice` or `RobertaPrefixForMultipleChoice`. All hold
`prefix_encoder.embedding.weight` (`[P, 2L * hidden]`, or `[P, hidden]` when trained with
`prefix_projection`, then also `prefix_encoder.trans.0.*` and `.trans.2.*`, the tanh MLP), the head
(`classifier.*`, or `qa_outputs.*` [2, hidden] for question answering: a `span` head, SPEC 1d), and the
frozen backbone under `bert.*` or `roberta.*`. The MLP is run once here, in float32 as in training, and
only its output is kept.

The RoBERTa sequence and multiple-choice models keep `RobertaModel`'s pooler, which the released
RoBERTa weights do not train: it is randomly initialised per task and frozen, so `roberta.pooler.dense.*`
becomes the artifact's own pooler (SPEC 1b). The token and question-answering models build their
backbone with `add_pooling_layer=False` and put their head on every token's final hidden state. The
multiple-choice models' `classifier` [1, hidden] scores each (text, choice) pair: a `choice` head. The
head kind comes from `--head`, else the config's `architectures`, else `qa_outputs.*` (span), else the
absence of the backbone's pooler in a RoBERTa checkpoint (token); the family from the weight names,
else the config's `model_type`. (A multiple-choice checkpoint without `architectures` looks like a
one-output regression classifier: name it with `--head choice`.)

When the frozen backbone is present and the server's weights are given, they are compared: a prefix
trained on other weights is refused, a matching one is pinned to this backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from server.artifact import HEAD_RULES, BackboneShape, HeadKind, PrefixArtifact, ProblemType
from server.importers.common import (
    CheckpointError,
    build_artifact,
    check_family,
    check_flat_prefix,
    check_head,
    check_pooler,
    family_of_config,
    load_state_dict,
    resolve_labels,
    resolve_problem_type,
)

EMBEDDING = "prefix_encoder.embedding.weight"
TRANS = tuple(f"prefix_encoder.trans.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
FOREIGN_BACKBONES = ("deberta.", "deberta_v2.", "gpt2.", "transformer.")
BACKBONE_PREFIXES = {"bert": "bert.", "roberta": "roberta."}
ROBERTA_POOLER = ("roberta.pooler.dense.weight", "roberta.pooler.dense.bias")
ARCHITECTURES = {
    "ForTokenClassification": HeadKind.TOKEN,
    "ForSequenceClassification": HeadKind.SEQUENCE,
    "ForQuestionAnswering": HeadKind.SPAN,
    "ForMultipleChoice": HeadKind.CHOICE,
}


def read_ptuning_v2(
    source: Path,
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
    head: HeadKind | None = None,
) -> PrefixArtifact:
    """`source`: a checkpoint folder (weights + config.json) or a weights file."""
    weights_path, model_config = _locate(source)
    state = load_state_dict(weights_path.read_bytes(), weights_path.name)
    return convert_ptuning_v2(state, backbone, labels, problem_type, model_config, backbone_weights, source.name, head)


def convert_ptuning_v2(
    state: dict[str, torch.Tensor],
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    model_config: dict | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
    source: str = "p-tuning v2 checkpoint",
    head_kind: HeadKind | None = None,
) -> PrefixArtifact:
    model_config = model_config or {}
    foreign = sorted({k.split(".")[0] for k in state if k.startswith(FOREIGN_BACKBONES)})
    if foreign:
        raise CheckpointError(
            f"{source}: expected a BERT or RoBERTa checkpoint (bert.*, roberta.*), got weights of {foreign}"
        )
    family = _family(state, model_config, backbone, source)
    head_kind = head_kind or _head_kind(state, model_config, family)
    if EMBEDDING not in state:
        raise CheckpointError(f"{source}: not a P-tuning v2 checkpoint: expected {EMBEDDING}, got {sorted(state)[:8]}")
    flat = _prefix(state, source)  # [P, 2L * hidden]
    check_flat_prefix(flat, backbone, f"{source}: prefix_encoder output")
    rule = HEAD_RULES[head_kind]
    if rule.weight not in state or rule.bias not in state:
        module = rule.weight.removesuffix(".weight")
        raise CheckpointError(f"{source}: no {module} head: expected {rule.weight} and {rule.bias} for a {head_kind.value} head")
    head = (state[rule.weight], state[rule.bias])
    check_head(*head, backbone, f"{source}: {rule.weight.removesuffix('.weight')}", rule.fixed_outputs)
    pooler = _own_pooler(state, family, head_kind, backbone, source)
    fingerprint = _check_backbone(state, backbone, backbone_weights, source, family)
    num_labels = head[0].shape[0]
    metadata = {
        "source_format": "ptuning-v2",
        "source": source,
        "prefix_projection": "true" if TRANS[0] in state else "false",
    }
    if rule.default_labels is not None and labels is None:
        labels = rule.default_labels  # a head of fixed outputs: its config's id2label names nothing useful
    labels = resolve_labels(num_labels, labels, model_config)
    if rule.single_label_only:
        problem_type = problem_type or ProblemType.SINGLE_LABEL  # these models' one loss: cross-entropy
    problem_type = resolve_problem_type(problem_type, model_config, num_labels)
    # bert sequence checkpoints stay format 1 (no family written): what every v1 server reads.
    written_family = None if (family == "bert" and head_kind is HeadKind.SEQUENCE) else family
    return build_artifact(flat, head, backbone, labels, problem_type, metadata, fingerprint,
                          head_kind=head_kind, pooler=pooler, family=written_family)


def _family(state: dict[str, torch.Tensor], model_config: dict, backbone: BackboneShape, source: str) -> str:
    """The checkpoint's family: its backbone's weight names, else the config's model_type, else the server's."""
    present = [family for family, prefix in BACKBONE_PREFIXES.items() if any(k.startswith(prefix) for k in state)]
    if len(present) > 1:
        raise CheckpointError(f"{source}: expected one backbone, got weights of both bert.* and roberta.*")
    family = present[0] if present else family_of_config(model_config, f"{source}: config.json")
    family = family or backbone.family
    check_family(family, backbone, source)
    return family


def _head_kind(state: dict[str, torch.Tensor], model_config: dict, family: str) -> HeadKind:
    architectures = model_config.get("architectures") or []
    for suffix, kind in ARCHITECTURES.items():
        if any(str(a).endswith(suffix) for a in architectures):
            return kind
    if HEAD_RULES[HeadKind.SPAN].weight in state:
        return HeadKind.SPAN
    has_backbone = any(k.startswith("roberta.") for k in state)
    if family == "roberta" and has_backbone and ROBERTA_POOLER[0] not in state:
        return HeadKind.TOKEN  # RobertaPrefixForTokenClassification: add_pooling_layer=False
    return HeadKind.SEQUENCE


def _own_pooler(state, family: str, head_kind: HeadKind, backbone: BackboneShape, source: str):
    """The RoBERTa sequence and multiple-choice models' frozen task-specific pooler; None for the others."""
    if family != "roberta" or not HEAD_RULES[head_kind].pooled:
        return None
    missing = [k for k in ROBERTA_POOLER if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: a RoBERTa {head_kind.value} checkpoint expected its pooler {list(ROBERTA_POOLER)}, missing {missing} "
            "(P-tuning v2 initialises it at random per task: without it the head cannot be served)"
        )
    pooler = (state[ROBERTA_POOLER[0]], state[ROBERTA_POOLER[1]])
    check_pooler(*pooler, backbone, f"{source}: roberta.pooler.dense")
    return pooler


def _prefix(state: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    embedding = state[EMBEDDING]  # [P, hidden] or [P, 2L * hidden]
    present = [k for k in TRANS if k in state]
    if not present:
        return embedding
    if len(present) != len(TRANS):
        missing = sorted(set(TRANS) - set(present))
        raise CheckpointError(f"{source}: prefix projection expected {list(TRANS)}, missing {missing}")
    w0, b0, w2, b2 = (state[k].float() for k in TRANS)
    if w0.shape[1] != embedding.shape[1] or w2.shape[1] != w0.shape[0]:
        raise CheckpointError(
            f"{source}: prefix projection shapes do not chain: embedding {list(embedding.shape)}, "
            f"trans.0 {list(w0.shape)}, trans.2 {list(w2.shape)}"
        )
    with torch.no_grad():
        hidden = torch.tanh(embedding.float() @ w0.T + b0)  # [P, prefix_hidden]
        return hidden @ w2.T + b2  # [P, 2L * hidden]


def _check_backbone(state, backbone: BackboneShape, backbone_weights, source: str, family: str) -> str | None:
    """Compares the checkpoint's frozen backbone with the server's; returns the fingerprint to pin."""
    prefix = BACKBONE_PREFIXES[family]
    theirs = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if family == "roberta":  # its pooler is the task's own (the artifact carries it), not the backbone's
        theirs = {k: v for k, v in theirs.items() if not k.startswith("pooler.")}
    if not theirs or backbone_weights is None:
        return None
    for name, tensor in sorted(theirs.items()):
        ours = backbone_weights.get(name)
        if ours is None:  # buffers (position_ids) and heads the backbone does not keep
            continue
        if ours.shape != tensor.shape or not torch.allclose(ours.float(), tensor.float(), atol=1e-3, rtol=1e-3):
            raise CheckpointError(
                f"{source}: {prefix}{name} differs from this server's backbone "
                f"(expected shape {list(ours.shape)} with the same values, got {list(tensor.shape)}): "
                "the prefix was trained on other backbone weights"
            )
    return backbone.fingerprint


def _locate(source: Path) -> tuple[Path, dict]:
    if source.is_file():
        return source, {}
    if not source.is_dir():
        raise CheckpointError(f"{source}: expected a checkpoint folder or file, got no such path")
    weights = next((source / n for n in WEIGHT_FILES if (source / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{source}: expected {' or '.join(WEIGHT_FILES)} in the folder, found neither")
    config_path = source / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: expected a JSON object, got invalid JSON ({exc})") from None
    return weights, config if isinstance(config, dict) else {}
