"""The prefix artifact (SPEC sections 1, 1b, 1c and 1d): one safetensors file per task version.

Owns reading, validating against a backbone, and writing. Three format versions are read: `1` (a
sequence head on the backbone's pooler, SPEC 1), `2` (adds the `head` and `backbone_family`
metadata, an optional own pooler, SPEC 1b, and the span and choice heads, SPEC 1d; what each head
holds is heads.py's table) and `3` (adds LoRA tensors, lora.py, and makes the prefix optional when
they are there, SPEC 1c). A version-1 file means what it always meant: `head` or
`backbone_family` keys in it are ordinary extra metadata. Writing picks the lowest version that holds
the artifact, so files that need nothing new stay readable by v1 servers. Every refusal is an
`ArtifactError` whose message names what was expected and what came.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from server.artifact.backbone_shape import BackboneShape
from server.artifact.heads import HEAD_NAMES, HEAD_RULES, HeadKind, ProblemType
from server.artifact.lora import LORA_SCALING, LoraWeights, check_lora_entries, is_lora_name, parse_scaling
from server.artifact.safetensors_header import ArtifactError, SafetensorsHeader, parse_header

FORMAT_NAME = "ptv2-prefix"
FORMAT_VERSIONS = ("1", "2", "3")
KEY_VALUES = "prefix.key_values"
POOLER_WEIGHT = "pooler.weight"
POOLER_BIAS = "pooler.bias"
POOLER_TENSORS = (POOLER_WEIGHT, POOLER_BIAS)
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
RESERVED_METADATA = {
    "1": {"format", "format_version", "problem_type", "labels", "backbone_fingerprint"},
    "2": {"format", "format_version", "problem_type", "labels", "backbone_fingerprint", "head", "backbone_family"},
    "3": {"format", "format_version", "problem_type", "labels", "backbone_fingerprint", "head", "backbone_family",
          LORA_SCALING},
}

FAMILIES = ("bert", "roberta")


@dataclass(frozen=True)
class PrefixArtifact:
    key_values: torch.Tensor | None  # [L, 2, H, P, D]; None: a LoRA task without a prefix (SPEC 1c)
    classifier_weight: torch.Tensor  # [C, hidden]: the head's weight (stored as qa_outputs.weight for a span head)
    classifier_bias: torch.Tensor  # [C]
    problem_type: ProblemType
    labels: tuple[str, ...]
    extra_metadata: dict[str, str] = field(default_factory=dict)
    backbone_fingerprint: str | None = None
    head: HeadKind = HeadKind.SEQUENCE
    pooler_weight: torch.Tensor | None = None  # [hidden, hidden]; replaces the backbone's pooler
    pooler_bias: torch.Tensor | None = None  # [hidden]
    backbone_family: str | None = None
    lora: LoraWeights | None = None  # SPEC 1c

    @property
    def prefix_len(self) -> int:
        return self.key_values.shape[3] if self.key_values is not None else 0

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def format_version(self) -> str:
        """The lowest format version that holds this artifact."""
        if self.lora is not None or self.key_values is None:
            return "3"
        uses_v2 = self.head is not HeadKind.SEQUENCE or self.pooler_weight is not None or self.backbone_family
        return "2" if uses_v2 else "1"


@dataclass(frozen=True)
class _Facts:
    """What the metadata says, checked."""

    version: str
    problem_type: ProblemType
    labels: tuple[str, ...]
    head: HeadKind
    backbone_family: str | None


def read_artifact(data: bytes, backbone: BackboneShape) -> PrefixArtifact:
    """Validates `data` against `backbone` and returns the artifact; raises ArtifactError."""
    header = parse_header(data)
    facts = _check_metadata(header.metadata, backbone)
    has_pooler = _check_tensor_entries(header, backbone, facts)
    lora_names = [name for name in header.tensors if is_lora_name(name)]
    scaling = parse_scaling(header.metadata.get(LORA_SCALING)) if lora_names else None
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # noqa: BLE001 — the header passed our checks, so this is a corrupt body
        raise ArtifactError(f"could not read the tensors: {exc}") from None
    for name in tensors:
        if not all_finite(tensors[name]):
            raise ArtifactError(f"tensor {name!r}: expected finite values, found NaN or Inf")
    extra = {k: v for k, v in header.metadata.items() if k not in RESERVED_METADATA[facts.version]}
    return PrefixArtifact(
        key_values=tensors.get(KEY_VALUES),
        classifier_weight=tensors[HEAD_RULES[facts.head].weight],
        classifier_bias=tensors[HEAD_RULES[facts.head].bias],
        problem_type=facts.problem_type,
        labels=facts.labels,
        extra_metadata=extra,
        backbone_fingerprint=header.metadata.get("backbone_fingerprint"),
        head=facts.head,
        pooler_weight=tensors[POOLER_WEIGHT] if has_pooler else None,
        pooler_bias=tensors[POOLER_BIAS] if has_pooler else None,
        backbone_family=facts.backbone_family,
        lora=LoraWeights.from_tensors({n: tensors[n] for n in lora_names}, scaling) if lora_names else None,
    )


# Loads run on a thread beside the forward pass. A torch op over more than its parallel grain (32,768
# elements; a MiniLM prefix of 16 positions has 73,728) starts an OpenMP team of its own there, which
# waits for the cores the forward's team holds: measured at 3x the wall time and 2x the CPU of the
# same check in numpy, which stays on the calling thread.
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def all_finite(tensor: torch.Tensor) -> bool:
    if tensor.device.type == "cpu" and tensor.dtype in NUMPY_FLOATS:
        return bool(np.isfinite(tensor.numpy()).all())
    return bool(torch.isfinite(tensor).all())


def read_head(data: bytes, backbone: BackboneShape) -> HeadKind:
    """The artifact's head by the rules read_artifact applies, from the header alone (no tensor is
    loaded): what the API asks of a stored version without the engine. Raises ArtifactError."""
    return _check_metadata(parse_header(data).metadata, backbone).head


def read_artifact_file(path: str | Path, backbone: BackboneShape) -> PrefixArtifact:
    return read_artifact(Path(path).read_bytes(), backbone)


def artifact_to_bytes(artifact: PrefixArtifact) -> bytes:
    if artifact.key_values is None and artifact.lora is None:
        raise ArtifactError(f"tensors: expected {KEY_VALUES!r}, LoRA tensors or both, got neither")
    version = artifact.format_version
    metadata = {k: v for k, v in artifact.extra_metadata.items() if k not in RESERVED_METADATA[version]}
    metadata.update(
        format=FORMAT_NAME,
        format_version=version,
        problem_type=artifact.problem_type.value,
        labels=json.dumps(list(artifact.labels)),
    )
    if artifact.backbone_fingerprint:
        metadata["backbone_fingerprint"] = artifact.backbone_fingerprint
    if version != "1":
        metadata["head"] = artifact.head.value
        if artifact.backbone_family:
            metadata["backbone_family"] = artifact.backbone_family
    rule = HEAD_RULES[artifact.head]
    tensors = {
        rule.weight: artifact.classifier_weight.contiguous(),
        rule.bias: artifact.classifier_bias.contiguous(),
    }
    if artifact.key_values is not None:
        tensors[KEY_VALUES] = artifact.key_values.contiguous()
    if artifact.lora is not None:
        metadata[LORA_SCALING] = repr(float(artifact.lora.scaling))
        tensors.update(artifact.lora.tensors())
    if (artifact.pooler_weight is None) != (artifact.pooler_bias is None):
        raise ArtifactError("pooler: expected both pooler.weight and pooler.bias or neither, got one")
    if artifact.pooler_weight is not None and not rule.pooled:
        raise ArtifactError(f"pooler: expected none for a {artifact.head.value} head, got pooler.weight and pooler.bias")
    if artifact.pooler_weight is not None:
        tensors[POOLER_WEIGHT] = artifact.pooler_weight.contiguous()
        tensors[POOLER_BIAS] = artifact.pooler_bias.contiguous()
    return save_safetensors_bytes(tensors, metadata=metadata)


def write_artifact(artifact: PrefixArtifact, path: str | Path) -> None:
    Path(path).write_bytes(artifact_to_bytes(artifact))


def _check_metadata(metadata: dict[str, str], backbone: BackboneShape) -> _Facts:
    if metadata.get("format") != FORMAT_NAME:
        raise ArtifactError(f"metadata 'format': expected {FORMAT_NAME!r}, got {metadata.get('format')!r}")
    version = metadata.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise ArtifactError(f"metadata 'format_version': expected '1', '2' or '3', got {version!r}")
    # `head` / `backbone_family` in a v1 file are plain extra metadata
    head = _parse_head(metadata.get("head")) if version != "1" else HeadKind.SEQUENCE
    problem_type, labels = _problem_and_labels(metadata, head)
    fingerprint = metadata.get("backbone_fingerprint")
    if fingerprint is not None and fingerprint != backbone.fingerprint:
        raise ArtifactError(
            f"metadata 'backbone_fingerprint': expected this server's {backbone.fingerprint!r}, got {fingerprint!r} "
            "(the prefix was trained on other backbone weights)"
        )
    if version == "1":
        return _Facts(version, problem_type, labels, head, None)
    family = metadata.get("backbone_family")
    if family is not None and family not in FAMILIES:
        raise ArtifactError(f"metadata 'backbone_family': expected 'bert' or 'roberta', got {family!r}")
    if family is not None and family != backbone.family:
        raise ArtifactError(
            f"metadata 'backbone_family': expected this server's {backbone.family!r}, got {family!r} "
            f"(the prefix was made for a {family} backbone)"
        )
    return _Facts(version, problem_type, labels, head, family)


def _parse_head(raw: str | None) -> HeadKind:
    try:
        return HeadKind(raw if raw is not None else HeadKind.SEQUENCE.value)
    except ValueError:
        raise ArtifactError(f"metadata 'head': expected one of {HEAD_NAMES}, got {raw!r}") from None


def _problem_and_labels(metadata: dict[str, str], head: HeadKind) -> tuple[ProblemType, tuple[str, ...]]:
    """The problem type and labels; a head of fixed outputs (span, choice) may leave both out."""
    rule = HEAD_RULES[head]
    raw_problem = metadata.get("problem_type")
    if raw_problem is None and rule.single_label_only and rule.default_labels is not None:
        problem_type = ProblemType.SINGLE_LABEL
    else:
        try:
            problem_type = ProblemType(raw_problem)
        except ValueError:
            allowed = ", ".join(p.value for p in ProblemType)
            raise ArtifactError(f"metadata 'problem_type': expected one of {allowed}, got {raw_problem!r}") from None
    if rule.single_label_only and problem_type is not ProblemType.SINGLE_LABEL:
        raise ArtifactError(
            f"metadata 'problem_type': expected {ProblemType.SINGLE_LABEL.value!r} for a {head.value} head, "
            f"got {problem_type.value!r}"
        )
    raw_labels = metadata.get("labels")
    labels = rule.default_labels if raw_labels is None and rule.default_labels else _parse_labels(raw_labels)
    if rule.fixed_outputs is not None and len(labels) != rule.fixed_outputs:
        raise ArtifactError(
            f"metadata 'labels': expected {rule.fixed_outputs} names for a {head.value} head "
            f"(e.g. {list(rule.default_labels)}), got {list(labels)}"
        )
    return problem_type, labels


def _parse_labels(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        raise ArtifactError("metadata 'labels': expected a JSON array of label names, got nothing")
    try:
        labels = json.loads(raw)
    except (ValueError, RecursionError):  # as in the header: huge integers, deep nesting
        raise ArtifactError(f"metadata 'labels': expected a JSON array of label names, got {raw[:80]!r}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ArtifactError(f"metadata 'labels': expected a non-empty JSON array of non-empty strings, got {raw[:80]!r}")
    if len(set(labels)) != len(labels):
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        raise ArtifactError(f"metadata 'labels': expected distinct names, got duplicates {dupes}")
    return tuple(labels)


def _check_tensor_entries(header: SafetensorsHeader, backbone: BackboneShape, facts: _Facts) -> bool:
    """Checks names, dtypes and shapes; returns whether the artifact carries its own pooler."""
    lora = {name: entry.shape for name, entry in header.tensors.items() if facts.version == "3" and is_lora_name(name)}
    names = set(header.tensors) - set(lora)
    rule = HEAD_RULES[facts.head]
    allowed = {KEY_VALUES, rule.weight, rule.bias}
    if facts.version != "1" and rule.pooled:
        allowed |= set(POOLER_TENSORS)
    required = [n for n in (KEY_VALUES, rule.weight, rule.bias) if not (n == KEY_VALUES and lora)]  # LoRA: prefix optional
    missing = [n for n in required if n not in names]
    unknown = sorted(names - allowed)
    if missing or unknown:
        raise ArtifactError(
            f"tensors: expected exactly {list(required)}{_optional_note(facts)}{_head_note(facts)}; "
            f"missing {missing}, unknown {unknown}"
        )
    if LORA_SCALING in header.metadata and facts.version == "3" and not lora:
        raise ArtifactError(f"metadata {LORA_SCALING!r}: given, but the artifact holds no lora.* tensors")
    check_lora_entries(lora, backbone.num_layers, backbone.hidden_size, backbone.intermediate_size)
    has_pooler = bool(names & set(POOLER_TENSORS))
    if has_pooler and not set(POOLER_TENSORS) <= names:
        raise ArtifactError(
            f"tensors: expected both {POOLER_WEIGHT!r} and {POOLER_BIAS!r} or neither, got only {sorted(names & set(POOLER_TENSORS))}"
        )
    if rule.pooled and not has_pooler and not backbone.pooler:
        raise ArtifactError(
            f"tensors: expected {POOLER_WEIGHT!r} and {POOLER_BIAS!r} (this server's backbone has no pooler, so a "
            f"{facts.head.value} task brings its own; format_version 2), got none"
        )
    for name in sorted(header.tensors):
        dtype = header.tensors[name].dtype
        if dtype not in FLOAT_DTYPES:
            raise ArtifactError(f"tensor {name!r}: expected dtype F32, F16 or BF16, got {dtype}")
    if KEY_VALUES in names:
        _check_key_values_shape(header.tensors[KEY_VALUES].shape, backbone)
    hidden, num_labels = backbone.hidden_size, len(facts.labels)
    weight_shape = header.tensors[rule.weight].shape
    if weight_shape != (num_labels, hidden):
        rows = f"num_labels={num_labels}" if rule.fixed_outputs is None else f"{num_labels} ({facts.head.value} head)"
        raise ArtifactError(
            f"tensor {rule.weight!r}: expected shape [{rows}, hidden_size={hidden}], got {list(weight_shape)}"
        )
    expected_shapes = {rule.bias: (num_labels,), POOLER_WEIGHT: (hidden, hidden), POOLER_BIAS: (hidden,)}
    for name, expected in expected_shapes.items():
        if name in names and header.tensors[name].shape != expected:
            got = list(header.tensors[name].shape)
            raise ArtifactError(f"tensor {name!r}: expected shape {list(expected)}, got {got}")
    return has_pooler


def _optional_note(facts: _Facts) -> str:
    pooler = f"optionally {list(POOLER_TENSORS)}" if facts.version != "1" and HEAD_RULES[facts.head].pooled else ""
    if facts.version != "3":
        return f" (and {pooler})" if pooler else ""
    lora = f"LoRA tensors lora.{{layer}}.{{module}}.A/.B, with which {KEY_VALUES!r} is optional"
    return f" (and {pooler + ', ' if pooler else ''}{lora})"


def _head_note(facts: _Facts) -> str:
    """A hint when a file holds another head's tensors (a span head's qa_outputs, say, in a sequence file)."""
    if facts.version == "1":
        return ""
    return f" for a {facts.head.value} head"


def _check_key_values_shape(shape: tuple[int, ...], backbone: BackboneShape) -> None:
    if len(shape) != 5:
        raise ArtifactError(f"tensor {KEY_VALUES!r}: expected 5 dims [L, 2, H, P, D], got shape {list(shape)}")
    layers, pair, heads, prefix_len, head_dim = shape
    checks = [
        ("L (layers)", layers, backbone.num_layers),
        ("dim 1 (keys, values)", pair, 2),
        ("H (attention heads)", heads, backbone.num_heads),
        ("D (head size)", head_dim, backbone.head_dim),
    ]
    for what, got, expected in checks:
        if got != expected:
            raise ArtifactError(f"tensor {KEY_VALUES!r}: {what} expected {expected}, got {got}")
    if not 1 <= prefix_len <= backbone.max_prefix_len:
        raise ArtifactError(
            f"tensor {KEY_VALUES!r}: prefix length P expected 1..{backbone.max_prefix_len}, got {prefix_len}"
        )
