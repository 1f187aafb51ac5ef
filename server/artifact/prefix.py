"""The prefix artifact (SPEC section 1): one safetensors file per task version.

Owns reading, validating against a backbone, and writing. Every refusal is an `ArtifactError` whose
message names what was expected and what came.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from server.artifact.safetensors_header import ArtifactError, SafetensorsHeader, parse_header

FORMAT_NAME = "ptv2-prefix"
FORMAT_VERSION = "1"
KEY_VALUES = "prefix.key_values"
CLASSIFIER_WEIGHT = "classifier.weight"
CLASSIFIER_BIAS = "classifier.bias"
REQUIRED_TENSORS = (KEY_VALUES, CLASSIFIER_WEIGHT, CLASSIFIER_BIAS)
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
RESERVED_METADATA = {"format", "format_version", "problem_type", "labels", "backbone_fingerprint"}


class ProblemType(str, enum.Enum):
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"
    REGRESSION = "regression"


@dataclass(frozen=True)
class BackboneShape:
    """What an artifact must fit: the backbone's geometry and the fingerprint of its weights."""

    num_layers: int
    num_heads: int
    head_dim: int
    max_position_embeddings: int
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def max_prefix_len(self) -> int:
        return self.max_position_embeddings - 2  # room for [CLS] and [SEP]


@dataclass(frozen=True)
class PrefixArtifact:
    key_values: torch.Tensor  # [L, 2, H, P, D]
    classifier_weight: torch.Tensor  # [C, hidden]
    classifier_bias: torch.Tensor  # [C]
    problem_type: ProblemType
    labels: tuple[str, ...]
    extra_metadata: dict[str, str] = field(default_factory=dict)
    backbone_fingerprint: str | None = None

    @property
    def prefix_len(self) -> int:
        return self.key_values.shape[3]

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def read_artifact(data: bytes, backbone: BackboneShape) -> PrefixArtifact:
    """Validates `data` against `backbone` and returns the artifact; raises ArtifactError."""
    header = parse_header(data)
    problem_type, labels = _check_metadata(header.metadata, backbone)
    _check_tensor_entries(header, backbone, num_labels=len(labels))
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # the header passed our checks, so this is a corrupt body
        raise ArtifactError(f"could not read the tensors: {exc}") from None
    for name in REQUIRED_TENSORS:
        if not torch.isfinite(tensors[name]).all():
            raise ArtifactError(f"tensor {name!r}: expected finite values, found NaN or Inf")
    extra = {k: v for k, v in header.metadata.items() if k not in RESERVED_METADATA}
    return PrefixArtifact(
        key_values=tensors[KEY_VALUES],
        classifier_weight=tensors[CLASSIFIER_WEIGHT],
        classifier_bias=tensors[CLASSIFIER_BIAS],
        problem_type=problem_type,
        labels=labels,
        extra_metadata=extra,
        backbone_fingerprint=header.metadata.get("backbone_fingerprint"),
    )


def read_artifact_file(path: str | Path, backbone: BackboneShape) -> PrefixArtifact:
    return read_artifact(Path(path).read_bytes(), backbone)


def artifact_to_bytes(artifact: PrefixArtifact) -> bytes:
    metadata = dict(artifact.extra_metadata)
    metadata.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        problem_type=artifact.problem_type.value,
        labels=json.dumps(list(artifact.labels)),
    )
    if artifact.backbone_fingerprint:
        metadata["backbone_fingerprint"] = artifact.backbone_fingerprint
    tensors = {
        KEY_VALUES: artifact.key_values.contiguous(),
        CLASSIFIER_WEIGHT: artifact.classifier_weight.contiguous(),
        CLASSIFIER_BIAS: artifact.classifier_bias.contiguous(),
    }
    return save_safetensors_bytes(tensors, metadata=metadata)


def write_artifact(artifact: PrefixArtifact, path: str | Path) -> None:
    Path(path).write_bytes(artifact_to_bytes(artifact))


def _check_metadata(metadata: dict[str, str], backbone: BackboneShape) -> tuple[ProblemType, tuple[str, ...]]:
    if metadata.get("format") != FORMAT_NAME:
        raise ArtifactError(f"metadata 'format': expected {FORMAT_NAME!r}, got {metadata.get('format')!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"metadata 'format_version': expected {FORMAT_VERSION!r}, got {metadata.get('format_version')!r}"
        )
    raw_problem = metadata.get("problem_type")
    try:
        problem_type = ProblemType(raw_problem)
    except ValueError:
        allowed = ", ".join(p.value for p in ProblemType)
        raise ArtifactError(f"metadata 'problem_type': expected one of {allowed}, got {raw_problem!r}") from None
    labels = _parse_labels(metadata.get("labels"))
    fingerprint = metadata.get("backbone_fingerprint")
    if fingerprint is not None and fingerprint != backbone.fingerprint:
        raise ArtifactError(
            f"metadata 'backbone_fingerprint': expected this server's {backbone.fingerprint!r}, got {fingerprint!r} "
            "(the prefix was trained on other backbone weights)"
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


def _check_tensor_entries(header: SafetensorsHeader, backbone: BackboneShape, num_labels: int) -> None:
    names = set(header.tensors)
    missing = [n for n in REQUIRED_TENSORS if n not in names]
    unknown = sorted(names - set(REQUIRED_TENSORS))
    if missing or unknown:
        raise ArtifactError(
            f"tensors: expected exactly {list(REQUIRED_TENSORS)}; missing {missing}, unknown {unknown}"
        )
    for name in REQUIRED_TENSORS:
        dtype = header.tensors[name].dtype
        if dtype not in FLOAT_DTYPES:
            raise ArtifactError(f"tensor {name!r}: expected dtype F32, F16 or BF16, got {dtype}")
    _check_key_values_shape(header.tensors[KEY_VALUES].shape, backbone)
    weight_shape = header.tensors[CLASSIFIER_WEIGHT].shape
    if weight_shape != (num_labels, backbone.hidden_size):
        raise ArtifactError(
            f"tensor {CLASSIFIER_WEIGHT!r}: expected shape [num_labels={num_labels}, hidden_size="
            f"{backbone.hidden_size}], got {list(weight_shape)}"
        )
    bias_shape = header.tensors[CLASSIFIER_BIAS].shape
    if bias_shape != (num_labels,):
        raise ArtifactError(f"tensor {CLASSIFIER_BIAS!r}: expected shape [{num_labels}], got {list(bias_shape)}")


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
