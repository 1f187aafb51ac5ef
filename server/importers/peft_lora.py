"""PEFT `LORA` adapters -> artifacts with LoRA tensors (SPEC 1c, `format_version` 3).

PEFT saves `adapter_config.json` and `adapter_model.safetensors` with, per adapted Linear,
`base_model.model.{bert|roberta}.encoder.layer.{l}.{module}.lora_A.weight` `[r, in]` and `.lora_B.weight`
`[out, r]`, plus the head trained through `modules_to_save` (read as for prefix tuning: peft.py's
find_head, both families' layouts). PEFT computes `W x + b + scaling * B (A x)` with `scaling =
lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, where `r` and `lora_alpha` may be
overridden per module by `rank_pattern` / `alpha_pattern` (the first key, in order, that matches the
end of the module's name, as PEFT's get_pattern_key). The artifact carries one `lora_scaling`: the
scaling most modules share; any module whose scaling differs has the ratio folded into its B (exact
up to one float32 rounding).

Refused, each naming the field or tensor: what the shared frozen backbone cannot serve (DoRA, trained
biases, LoRA on embeddings or on a module outside SPEC 1c's list, other LoRA variants), a rank over
64, shapes that do not fit this backbone, and a rank that disagrees with the config.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

from server.artifact import HEAD_RULES, BackboneShape, HeadKind, PrefixArtifact, ProblemType
from server.artifact.lora import LORA_MODULES, MAX_RANK, LoraWeights, module_features
from server.importers.common import (
    CheckpointError,
    check_family,
    check_token_problem_type,
    family_of_config,
    load_state_dict,
    parse_json,
    resolve_labels,
    resolve_problem_type,
)
from server.importers.peft import ADAPTER_CONFIG, HEAD_KINDS, MODEL_CONFIG, WEIGHT_FILES, find_head

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:(?P<family>bert|roberta)\.)?(?P<module>.+?)\.lora_(?P<part>A|B)"
    r"(?:\.(?P<adapter>[^.]+))?\.weight$"
)
_LAYER_MODULE = re.compile(r"^encoder\.layer\.(?P<layer>\d+)\.(?P<module>.+)$")
_LORA_MARKERS = (".lora_", "lora_magnitude_vector", "lora_embedding")
# LoRA variants and options whose result is not `W x + scaling * B A x` on the listed Linears.
_VARIANT_FIELDS = (
    "lora_bias", "use_qalora", "layer_replication", "target_parameters", "trainable_token_indices",
    "alora_invocation_tokens", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config", "velora_config",
)


def convert_peft_lora(
    files: dict[str, bytes],
    config: dict,
    backbone: BackboneShape,
    labels: tuple[str, ...] | None,
    problem_type: ProblemType | None,
    source: str,
) -> PrefixArtifact:
    head_kind = _check_config(config, backbone)
    weights_name = next((name for name in WEIGHT_FILES if name in files), None)
    if weights_name is None:
        raise CheckpointError(f"{source}: expected {' or '.join(WEIGHT_FILES)}, found neither")
    state = load_state_dict(files[weights_name], weights_name)
    lora_state = {k: state.pop(k) for k in [k for k in state if any(m in k for m in _LORA_MARKERS)]}
    if not lora_state:
        raise CheckpointError(f"{weights_name}: expected LoRA tensors (*.lora_A.weight, *.lora_B.weight), found none")
    lora = _read_lora(lora_state, config, backbone, weights_name, source)
    head, pooler = find_head(state, weights_name, head_kind, backbone, adapter="the LoRA tensors")
    model_config = parse_json(files[MODEL_CONFIG], MODEL_CONFIG) if MODEL_CONFIG in files else {}
    family = family_of_config(model_config, MODEL_CONFIG)
    if family is not None:
        check_family(family, backbone, source)
    rule = HEAD_RULES[head_kind]
    if rule.single_label_only:
        problem_type = problem_type or ProblemType.SINGLE_LABEL  # token classification, spans: cross-entropy
    if rule.default_labels is not None and labels is None:
        labels = rule.default_labels
    num_labels = head[0].shape[0]
    problem_type = resolve_problem_type(problem_type, model_config, num_labels)
    check_token_problem_type(head_kind, problem_type)
    metadata = {"source_format": "peft-lora", "source": source}
    for key, meta_key in (("base_model_name_or_path", "base_model"), ("peft_version", "peft_version")):
        if isinstance(config.get(key), str) and config[key]:
            metadata[meta_key] = config[key]
    return PrefixArtifact(
        key_values=None,
        classifier_weight=head[0].float().contiguous(),
        classifier_bias=head[1].float().contiguous(),
        problem_type=problem_type,
        labels=resolve_labels(num_labels, labels, model_config),
        extra_metadata=metadata,
        head=head_kind,
        pooler_weight=pooler[0].float().contiguous() if pooler is not None else None,
        pooler_bias=pooler[1].float().contiguous() if pooler is not None else None,
        backbone_family=backbone.family,
        lora=lora,
    )


# PEFT's task types whose heads the server serves (a choice head has no PEFT task type).
LORA_TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")


def _check_config(config: dict, backbone: BackboneShape) -> HeadKind:
    task_type = config.get("task_type")
    if task_type not in LORA_TASK_TYPES:
        raise CheckpointError(f"{ADAPTER_CONFIG}: task_type expected SEQ_CLS, TOKEN_CLS or QUESTION_ANS, got {task_type!r}")
    if task_type == "QUESTION_ANS" and backbone.family != "roberta":
        # PeftModelForQuestionAnswering (peft 0.21) drops token_type_ids for LoRA: such an adapter was
        # trained and answers in PEFT with every token in segment 0, which BERT's question/context
        # windows (context in segment 1) on the shared backbone would not reproduce. RoBERTa has no
        # segments, so there the two agree.
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: task_type QUESTION_ANS with LoRA expected a RoBERTa backbone, got {backbone.family} "
            "(PEFT drops token_type_ids for LoRA question answering, so the adapter never saw BERT's segment ids)"
        )
    if config.get("use_dora"):
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: use_dora expected false, got true (DoRA rescales each adapted weight by a trained "
            "magnitude: it cannot share the frozen backbone's matmul)"
        )
    if config.get("bias", "none") != "none":
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: bias expected 'none', got {config['bias']!r} (trained backbone biases cannot be served "
            "on the shared frozen backbone)"
        )
    for field in _VARIANT_FIELDS:
        if config.get(field) not in (None, False, [], {}):
            raise CheckpointError(f"{ADAPTER_CONFIG}: {field} expected unset, got {config[field]!r} (not plain LoRA)")
    return HEAD_KINDS[task_type]


def _read_lora(state: dict[str, torch.Tensor], config: dict, backbone: BackboneShape, name: str, source: str) -> LoraWeights:
    """The adapter's (layer, module) -> (A, B), with every module's scaling folded as the docstring says."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    paths: dict[tuple[int, str], str] = {}  # the module's name in the model, as PEFT matched its patterns
    for key, tensor in state.items():
        layer, module, part, path = _locate(key, backbone, name, source)
        pairs.setdefault((layer, module), {})[part] = tensor
        paths[(layer, module)] = path
    scales: dict[tuple[int, str], float] = {}
    for (layer, module), parts in sorted(pairs.items()):
        stem = f"{name}: {paths[(layer, module)]}"
        a, _ = _check_pair(parts, module, backbone, stem)
        scales[(layer, module)] = _scaling(config, paths[(layer, module)], a.shape[0], stem)
    common = Counter(scales.values()).most_common(1)[0][0]
    modules = {}
    for key, parts in pairs.items():
        a, b = parts["A"].float(), parts["B"].float()
        modules[key] = (a.contiguous(), (b if scales[key] == common else b * (scales[key] / common)).contiguous())
    return LoraWeights(common, modules)


def _locate(key: str, backbone: BackboneShape, name: str, source: str) -> tuple[int, str, str, str]:
    """(layer, SPEC 1c module, A or B, the module's path in the model) of a LoRA weight's name."""
    if "lora_magnitude_vector" in key:
        raise CheckpointError(f"{name}: {key}: a DoRA magnitude (use_dora), which cannot be served")
    if "lora_embedding" in key:
        raise CheckpointError(f"{name}: {key}: LoRA on an embedding, which cannot be served (SPEC 1c adapts Linears only)")
    match = _LORA_KEY.match(key)
    if match is None:
        raise CheckpointError(f"{name}: {key}: expected a LoRA weight named *.lora_A.weight or *.lora_B.weight")
    if match["family"]:
        check_family(match["family"], backbone, source)
    place = _LAYER_MODULE.match(match["module"])
    if place is None or place["module"] not in LORA_MODULES:
        where = place["module"] if place else match["module"]
        raise CheckpointError(
            f"{name}: {key}: LoRA on {where!r}, expected one of the layers' {list(LORA_MODULES)} "
            "(target_modules: name those, e.g. query, value, or attention.output.dense rather than a bare dense, "
            "which also takes the pooler)"
        )
    layer = int(place["layer"])
    if layer >= backbone.num_layers:
        raise CheckpointError(f"{name}: {key}: layer expected 0..{backbone.num_layers - 1} (this backbone), got {layer}")
    path = f"{match['family']}.{match['module']}" if match["family"] else match["module"]
    return layer, place["module"], match["part"], path


def _check_pair(parts: dict[str, torch.Tensor], module: str, backbone: BackboneShape, stem: str):
    if set(parts) != {"A", "B"}:
        missing = "lora_B" if "A" in parts else "lora_A"
        raise CheckpointError(f"{stem}: expected both lora_A and lora_B, {missing} is missing")
    a, b = parts["A"], parts["B"]
    in_features, out_features = module_features(module, backbone.hidden_size, backbone.intermediate_size)
    if a.dim() != 2 or a.shape[1] != in_features:
        raise CheckpointError(f"{stem}.lora_A.weight: expected shape [r, {in_features}] for this backbone, got {list(a.shape)}")
    if b.dim() != 2 or b.shape[0] != out_features or b.shape[1] != a.shape[0]:
        raise CheckpointError(
            f"{stem}.lora_B.weight: expected shape [{out_features}, r = {a.shape[0]}] for this backbone, got {list(b.shape)}"
        )
    if a.shape[0] > MAX_RANK:
        raise CheckpointError(f"{stem}: rank r expected 1..{MAX_RANK}, got {a.shape[0]} (r / rank_pattern in {ADAPTER_CONFIG})")
    return a, b


def _scaling(config: dict, module_key: str, rank: int, stem: str) -> float:
    """PEFT's scaling of one module; its rank from the config must be the tensors'."""
    r = _pattern_value(config.get("rank_pattern") or {}, module_key, config.get("r", 8))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module_key, config.get("lora_alpha", 8))
    if r != rank:
        raise CheckpointError(
            f"{stem}: {ADAPTER_CONFIG} r / rank_pattern says rank {r}, the tensors have rank {rank}"
        )
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise CheckpointError(f"{ADAPTER_CONFIG}: lora_alpha / alpha_pattern expected a number, got {alpha!r}")
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _pattern_value(patterns: dict, module_key: str, default):
    """PEFT's get_pattern_key: the first pattern (in order) matching the end of the module's name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return value
    return default
