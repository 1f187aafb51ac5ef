"""What the checkpoint importers share: the refusal type, safe weight loading, labels and problem
type, the head kind and backbone family of a checkpoint, the head checks, and the final build of a
validated artifact."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import torch
from safetensors.torch import load as load_safetensors_bytes

from server.artifact import (
    HEAD_RULES,
    ArtifactError,
    BackboneShape,
    HeadKind,
    PrefixArtifact,
    ProblemType,
)
from server.artifact.layout import flat_to_key_values
from server.engine.family import MODEL_TYPES


class CheckpointError(ArtifactError):
    """A checkpoint could not be converted into an artifact; the message says why."""


def load_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes, or from a torch pickle read with weights_only (no code runs)."""
    if name.endswith(".safetensors"):
        try:
            return load_safetensors_bytes(data)
        except Exception as exc:  # noqa: BLE001 — safetensors raises its own error types
            raise CheckpointError(f"{name}: expected a safetensors file, could not read it ({exc})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — UnpicklingError for refused objects, RuntimeError for corrupt files
        raise CheckpointError(
            f"{name}: expected a torch state dict of plain tensors, could not read it safely ({str(exc)[:300]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the wrapper some trainers save around the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: expected a dict of tensor names to tensors, got {type(state).__name__}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}  # DataParallel's prefix


def parse_json(data: bytes, name: str) -> dict:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name}: expected a JSON object, got invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{name}: expected a JSON object, got {type(value).__name__}")
    return value


def resolve_labels(num_labels: int, given: tuple[str, ...] | None, model_config: dict) -> tuple[str, ...]:
    """`--labels`, else the model config's id2label, else HF's default names LABEL_0, LABEL_1, ..."""
    if given is not None:
        if len(given) != num_labels:
            raise CheckpointError(f"--labels: the classifier has {num_labels} outputs, got {len(given)} names")
        return tuple(given)
    id2label = model_config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_labels:
        try:
            return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        except ValueError:
            pass
    return tuple(f"LABEL_{i}" for i in range(num_labels))


def resolve_problem_type(given: ProblemType | None, model_config: dict, num_labels: int) -> ProblemType:
    if given is not None:
        return given
    raw = model_config.get("problem_type")
    if raw:
        try:
            return ProblemType(raw)
        except ValueError:
            allowed = [p.value for p in ProblemType]
            raise CheckpointError(f"config.json problem_type: expected one of {allowed}, got {raw!r}") from None
    # The seed's rule when the config names none: one output is regression.
    return ProblemType.REGRESSION if num_labels == 1 else ProblemType.SINGLE_LABEL


def check_family(family: str, backbone: BackboneShape, what: str) -> None:
    if family != backbone.family:
        raise CheckpointError(
            f"{what}: expected a checkpoint of this server's {backbone.family!r} backbone family, got {family!r}"
        )


def family_of_config(model_config: dict, what: str) -> str | None:
    """The family a model config's `model_type` names, None when it names none."""
    model_type = model_config.get("model_type")
    if model_type is None:
        return None
    known = sorted(name for name in MODEL_TYPES if name is not None)  # the backbone's own rule (SPEC 1b)
    if model_type not in known:  # anything else is refused rather than guessed
        raise CheckpointError(f"{what}: model_type expected one of {known}, got {model_type!r}")
    return MODEL_TYPES[model_type].name


def check_token_problem_type(head: HeadKind, problem_type: ProblemType) -> None:
    if HEAD_RULES[head].single_label_only and problem_type is not ProblemType.SINGLE_LABEL:
        raise CheckpointError(
            f"a {head.value} head expected problem type single_label_classification, got {problem_type.value}"
        )


def check_pooler(weight: torch.Tensor, bias: torch.Tensor, backbone: BackboneShape, what: str) -> None:
    C = backbone.hidden_size
    if weight.shape != (C, C) or bias.shape != (C,):
        raise CheckpointError(
            f"{what}: expected weight [{C}, {C}] and bias [{C}], got {list(weight.shape)} and {list(bias.shape)}"
        )


def check_flat_prefix(flat: torch.Tensor, backbone: BackboneShape, what: str) -> None:
    width = 2 * backbone.num_layers * backbone.hidden_size
    if flat.dim() != 2 or flat.shape[1] != width:
        got = list(flat.shape)
        hint = ""
        if flat.dim() == 2 and flat.shape[1] % 2 == 0 and flat.shape[1] != width:
            hint = f" (this prefix would fit num_layers * hidden_size = {flat.shape[1] // 2}, another backbone)"
        raise CheckpointError(
            f"{what}: expected shape [P, 2 * num_layers * hidden_size = 2 * {backbone.num_layers} * "
            f"{backbone.hidden_size} = {width}] for this backbone, got {got}{hint}"
        )
    if not 1 <= flat.shape[0] <= backbone.max_prefix_len:
        raise CheckpointError(f"{what}: prefix length expected 1..{backbone.max_prefix_len}, got {flat.shape[0]}")


def check_head(weight: torch.Tensor, bias: torch.Tensor, backbone: BackboneShape, what: str, outputs: int | None = None) -> None:
    """`outputs`: the head's fixed number of outputs (span 2, choice 1), None for one per label."""
    rows = "num_labels" if outputs is None else str(outputs)
    if weight.dim() != 2 or weight.shape[1] != backbone.hidden_size or (outputs is not None and weight.shape[0] != outputs):
        raise CheckpointError(f"{what}.weight: expected shape [{rows}, {backbone.hidden_size}], got {list(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{what}.bias: expected shape [{weight.shape[0]}], got {list(bias.shape)}")


def build_artifact(
    flat: torch.Tensor,  # [P, 2 * L * hidden]
    head: tuple[torch.Tensor, torch.Tensor],
    backbone: BackboneShape,
    labels: tuple[str, ...],
    problem_type: ProblemType,
    metadata: dict[str, str],
    fingerprint: str | None = None,
    *,
    head_kind: HeadKind = HeadKind.SEQUENCE,
    pooler: tuple[torch.Tensor, torch.Tensor] | None = None,
    family: str | None = None,
) -> PrefixArtifact:
    """Lays the prefix out as `[L, 2, H, P, D]` and returns the artifact (not yet validated as a whole:
    whoever stores or writes it runs read_artifact on its bytes, once). `pooler`: a sequence head's own
    (weight, bias); `family` is written as `backbone_family`."""
    check_token_problem_type(head_kind, problem_type)
    dtype = flat.dtype if flat.dtype in (torch.float16, torch.bfloat16) else torch.float32
    key_values = flat_to_key_values(flat, backbone.num_layers, backbone.num_heads, backbone.head_dim)
    artifact = PrefixArtifact(
        key_values=key_values.to(dtype).contiguous(),  # [L, 2, H, P, D]
        classifier_weight=head[0].float().contiguous(),
        classifier_bias=head[1].float().contiguous(),
        problem_type=problem_type,
        labels=labels,
        extra_metadata={**metadata, "imported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        backbone_fingerprint=fingerprint,
        head=head_kind,
        pooler_weight=pooler[0].float().contiguous() if pooler is not None else None,
        pooler_bias=pooler[1].float().contiguous() if pooler is not None else None,
        backbone_family=family,
    )
    return artifact
