"""Original P-tuning v2 checkpoints -> artifacts.

The checkpoint is the state dict of the seed's `BertPrefixForSequenceClassification`:
`prefix_encoder.embedding.weight` (`[P, 2L * hidden]`, or `[P, hidden]` when trained with
`prefix_projection`, then also `prefix_encoder.trans.0.*` and `.trans.2.*`, the tanh MLP), the head
`classifier.*`, and the frozen `bert.*`. The MLP is run once here, in float32 as in training, and
only its output is kept. When `bert.*` is present and the server's weights are given, they are
compared: a prefix trained on other weights is refused, a matching one is pinned to this backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from server.artifact import BackboneShape, PrefixArtifact, ProblemType
from server.importers.common import (
    CheckpointError,
    build_artifact,
    check_flat_prefix,
    check_head,
    load_state_dict,
    resolve_labels,
    resolve_problem_type,
)

EMBEDDING = "prefix_encoder.embedding.weight"
TRANS = tuple(f"prefix_encoder.trans.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
FOREIGN_BACKBONES = ("roberta.", "deberta.", "deberta_v2.", "gpt2.", "transformer.")


def read_ptuning_v2(
    source: Path,
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
) -> PrefixArtifact:
    """`source`: a checkpoint folder (weights + config.json) or a weights file."""
    weights_path, model_config = _locate(source)
    state = load_state_dict(weights_path.read_bytes(), weights_path.name)
    return convert_ptuning_v2(state, backbone, labels, problem_type, model_config, backbone_weights, source.name)


def convert_ptuning_v2(
    state: dict[str, torch.Tensor],
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    model_config: dict | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
    source: str = "p-tuning v2 checkpoint",
) -> PrefixArtifact:
    model_config = model_config or {}
    foreign = sorted({k.split(".")[0] for k in state if k.startswith(FOREIGN_BACKBONES)})
    if foreign:
        raise CheckpointError(f"{source}: expected a BERT checkpoint (bert.*), got weights of {foreign}")
    if EMBEDDING not in state:
        raise CheckpointError(f"{source}: not a P-tuning v2 checkpoint: expected {EMBEDDING}, got {sorted(state)[:8]}")
    flat = _prefix(state, source)  # [P, 2L * hidden]
    check_flat_prefix(flat, backbone, f"{source}: prefix_encoder output")
    if "classifier.weight" not in state or "classifier.bias" not in state:
        raise CheckpointError(f"{source}: no classifier head: expected classifier.weight and classifier.bias")
    head = (state["classifier.weight"], state["classifier.bias"])
    check_head(*head, backbone, f"{source}: classifier")
    fingerprint = _check_backbone(state, backbone, backbone_weights, source)
    num_labels = head[0].shape[0]
    metadata = {
        "source_format": "ptuning-v2",
        "source": source,
        "prefix_projection": "true" if TRANS[0] in state else "false",
    }
    labels = resolve_labels(num_labels, labels, model_config)
    problem_type = resolve_problem_type(problem_type, model_config, num_labels)
    return build_artifact(flat, head, backbone, labels, problem_type, metadata, fingerprint)


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


def _check_backbone(state, backbone: BackboneShape, backbone_weights, source: str) -> str | None:
    """Compares the checkpoint's frozen bert.* with the server's; returns the fingerprint to pin."""
    theirs = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    if not theirs or backbone_weights is None:
        return None
    for name, tensor in sorted(theirs.items()):
        ours = backbone_weights.get(name)
        if ours is None:  # buffers (position_ids) and heads the backbone does not keep
            continue
        if ours.shape != tensor.shape or not torch.allclose(ours.float(), tensor.float(), atol=1e-3, rtol=1e-3):
            raise CheckpointError(
                f"{source}: bert.{name} differs from this server's backbone "
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
