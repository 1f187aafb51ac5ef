"""What the span and choice trainers share: the start of a run (checks, seed, engine) and the export
of a head of fixed outputs (SPEC 1d: `span` [2, hidden] start/end, `choice` [1, hidden]), single-label,
its labels the head's own names, the prefix folded once into --dtype, the head in float32."""

from __future__ import annotations

import torch

from server.artifact import HEAD_RULES, HeadKind, PrefixArtifact, ProblemType
from server.engine import Engine
from training.model import PrefixClassifier
from training.trainer import DTYPES, TrainConfig, _check_config, _default_backbone


def start_run(config: TrainConfig, engine: Engine | None) -> Engine:
    """Checks the configuration, seeds torch and returns the engine (loading the backbone if none)."""
    _check_config(config)
    torch.manual_seed(config.seed)
    engine = engine or Engine.from_folder(config.backbone or _default_backbone())
    if not 1 <= config.prefix_len <= engine.shape.max_prefix_len:
        raise ValueError(f"--prefix-len: expected 1..{engine.shape.max_prefix_len}, got {config.prefix_len}")
    return engine


def export_fixed_head(model: PrefixClassifier, config: TrainConfig, engine: Engine, head: HeadKind) -> PrefixArtifact:
    model.eval()
    with torch.no_grad():
        key_values = model.key_values().to(DTYPES[config.dtype]).contiguous()  # [L, 2, H, P, D]
    return PrefixArtifact(
        key_values=key_values,
        classifier_weight=model.classifier.weight.detach().float().clone(),  # [outputs, hidden]
        classifier_bias=model.classifier.bias.detach().float().clone(),  # [outputs]
        problem_type=ProblemType.SINGLE_LABEL,
        labels=HEAD_RULES[head].default_labels,
        backbone_fingerprint=engine.shape.fingerprint,
        head=head,
        backbone_family=engine.shape.family,
    )
