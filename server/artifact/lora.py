"""LoRA adapters in the artifact (SPEC 1c, `format_version` 3): tensor names, shapes and the scaling.

A task may carry, per layer `l` and per Linear module of the layer (named by its path inside an HF
BERT / RoBERTa layer), `lora.{l}.{module}.A` `[r, in]` and `lora.{l}.{module}.B` `[out, r]`, with
`1 <= r <= MAX_RANK`; the metadata `lora_scaling` says what multiplies `B (A x)`. Each module may have
its own rank; modules and layers without tensors are not adapted. The checks here run on the
safetensors header, before any tensor is read, so a misfit upload costs nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from server.artifact.safetensors_header import ArtifactError

LORA_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
MAX_RANK = 64
LORA_SCALING = "lora_scaling"
ADAPTATIONS = ("prefix", "lora", "lora+prefix")  # what a task adapts the backbone with (the trainer's --method)
SHORT_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value"}
DEFAULT_TARGETS = ("attention.self.query", "attention.self.value")  # LoRA's own paper's choice, PEFT's for BERT
_NAME = re.compile(r"^lora\.(?P<layer>\d+)\.(?P<module>.+)\.(?P<part>A|B)$")


def is_lora_name(name: str) -> bool:
    return name.startswith("lora.")


def parse_targets(value: str) -> tuple[str, ...]:
    """`all`, or comma-separated module names of LORA_MODULES (query, key and value may be written short)."""
    if value.strip() == "all":
        return LORA_MODULES
    names = tuple(SHORT_NAMES.get(name.strip(), name.strip()) for name in value.split(","))
    unknown = [name for name in names if name not in LORA_MODULES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"expected 'all' or distinct names from {list(LORA_MODULES)} (or query, key, value), got {value!r}")
    return names


def module_features(module: str, hidden_size: int, intermediate_size: int | None) -> tuple[int, int | None]:
    """(in, out) features of a layer's Linear module; None where the backbone's intermediate size is unknown."""
    if module == "intermediate.dense":
        return hidden_size, intermediate_size
    if module == "output.dense":
        return intermediate_size, hidden_size
    return hidden_size, hidden_size


@dataclass(frozen=True)
class LoraWeights:
    """A task's LoRA: (layer, module) -> (A [r, in], B [out, r]); each module computes
    `W x + b + scaling * B (A x)`."""

    scaling: float
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The artifact's tensors, by name."""
        out = {}
        for (layer, module), (a, b) in sorted(self.modules.items()):
            out[f"lora.{layer}.{module}.A"] = a.contiguous()
            out[f"lora.{layer}.{module}.B"] = b.contiguous()
        return out

    def rank(self, layer: int, module: str) -> int:
        """The module's rank in that layer, 0 where it is not adapted."""
        pair = self.modules.get((layer, module))
        return pair[0].shape[0] if pair is not None else 0

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], scaling: float) -> LoraWeights:
        """From the artifact's `lora.*` tensors (already checked by check_lora_entries)."""
        modules: dict[tuple[int, str], list] = {}
        for name, tensor in tensors.items():
            match = _NAME.match(name)
            if match:
                pair = modules.setdefault((int(match["layer"]), match["module"]), [None, None])
                pair[0 if match["part"] == "A" else 1] = tensor
        return cls(scaling, {key: (a, b) for key, (a, b) in modules.items()})


def parse_scaling(raw: str | None) -> float:
    if raw is None:
        raise ArtifactError(f"metadata {LORA_SCALING!r}: expected a decimal number (the LoRA tensors need it), got nothing")
    try:
        value = float(raw)
    except ValueError:
        raise ArtifactError(f"metadata {LORA_SCALING!r}: expected a decimal number, got {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise ArtifactError(f"metadata {LORA_SCALING!r}: expected a finite number, got {raw[:40]!r}")
    return value


def check_lora_entries(shapes: dict[str, tuple[int, ...]], num_layers: int, hidden_size: int,
                       intermediate_size: int | None) -> None:
    """`shapes`: every `lora.*` tensor's shape, by name. Refuses unknown names, unpaired A/B, ranks out
    of 1..MAX_RANK and shapes that do not fit the backbone; each message names the tensor."""
    pairs: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    for name, shape in sorted(shapes.items()):
        match = _NAME.match(name)
        if match is None:
            raise ArtifactError(
                f"tensor {name!r}: expected a LoRA tensor named lora.{{layer}}.{{module}}.A or .B "
                "(DoRA magnitudes, biases and other LoRA variants cannot be served)"
            )
        layer, module = int(match["layer"]), match["module"]
        if module not in LORA_MODULES:
            raise ArtifactError(f"tensor {name!r}: module expected one of {list(LORA_MODULES)}, got {module!r}")
        if layer >= num_layers:
            raise ArtifactError(f"tensor {name!r}: layer expected 0..{num_layers - 1} (this backbone), got {layer}")
        pairs.setdefault((layer, module), {})[match["part"]] = shape
    for (layer, module), parts in sorted(pairs.items()):
        _check_pair(f"lora.{layer}.{module}", parts, module, hidden_size, intermediate_size)


def _check_pair(stem: str, parts: dict[str, tuple[int, ...]], module: str, hidden_size: int,
                intermediate_size: int | None) -> None:
    for part, other in (("A", "B"), ("B", "A")):
        if part not in parts:
            raise ArtifactError(f"tensor '{stem}.{part}': expected beside '{stem}.{other}', got none")
    in_features, out_features = module_features(module, hidden_size, intermediate_size)
    if in_features is None or out_features is None:
        raise ArtifactError(f"tensor '{stem}.A': this backbone's intermediate size is unknown, so {module} cannot be checked")
    a, b = parts["A"], parts["B"]
    if len(a) != 2 or a[1] != in_features:
        raise ArtifactError(f"tensor '{stem}.A': expected shape [r, {in_features}] for this backbone, got {list(a)}")
    if len(b) != 2 or b[0] != out_features:
        raise ArtifactError(f"tensor '{stem}.B': expected shape [{out_features}, r] for this backbone, got {list(b)}")
    if b[1] != a[0]:
        raise ArtifactError(f"tensor '{stem}.B': expected rank r = {a[0]} (as '{stem}.A'), got {b[1]}")
    if not 1 <= a[0] <= MAX_RANK:
        raise ArtifactError(f"tensor '{stem}.A': rank r expected 1..{MAX_RANK}, got {a[0]}")
