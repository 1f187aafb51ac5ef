"""Format version 3 (SPEC 1c): LoRA tensors `lora.{l}.{module}.A [r, in]` / `.B [out, r]` and the
`lora_scaling` metadata; the prefix becomes optional. Every refusal names the tensor or field; the
header is checked before any tensor is read; writing round-trips and picks version 3 only when needed."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from server.artifact import ArtifactError, PrefixArtifact, artifact_to_bytes, read_artifact
from server.artifact.lora import MAX_RANK, LoraWeights
from tests.artifact.builders import SHAPE, good_metadata, good_tensors, save_file

SHAPE3 = dataclasses.replace(SHAPE, intermediate_size=64)
C, F = SHAPE3.hidden_size, 64


def lora_tensors(module: str = "attention.self.query", layer: int = 0, rank: int = 4, in_features: int = C,
                 out_features: int = C) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(layer)
    return {
        f"lora.{layer}.{module}.A": torch.randn(rank, in_features, generator=gen),
        f"lora.{layer}.{module}.B": torch.randn(out_features, rank, generator=gen),
    }


def v3(tensors: dict, **metadata) -> bytes:
    """A version-3 file; metadata given as None is left out."""
    return save_file(tensors, good_metadata(format_version="3", **{"lora_scaling": "2.0", **metadata}))


def refused(data: bytes, *fragments: str, shape=SHAPE3) -> str:
    with pytest.raises(ArtifactError) as caught:
        read_artifact(data, shape)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    return str(caught.value)


def test_a_lora_task_needs_no_prefix_and_round_trips():
    tensors = {k: v for k, v in good_tensors().items() if k != "prefix.key_values"}
    tensors |= lora_tensors() | lora_tensors("intermediate.dense", 1, 2, C, F) | lora_tensors("output.dense", 1, 3, F, C)
    artifact = read_artifact(v3(tensors), SHAPE3)
    assert artifact.key_values is None and artifact.prefix_len == 0 and artifact.format_version == "3"
    assert artifact.lora.scaling == 2.0 and artifact.lora.rank(1, "intermediate.dense") == 2
    assert artifact.lora.rank(0, "output.dense") == 0
    again = read_artifact(artifact_to_bytes(artifact), SHAPE3)
    assert again.lora.scaling == 2.0 and set(again.lora.modules) == set(artifact.lora.modules)
    for key, (a, b) in artifact.lora.modules.items():
        assert torch.equal(again.lora.modules[key][0], a) and torch.equal(again.lora.modules[key][1], b)
    assert "lora_scaling" not in again.extra_metadata


def test_lora_and_prefix_together():
    artifact = read_artifact(v3(good_tensors() | lora_tensors("attention.self.value")), SHAPE3)
    assert artifact.prefix_len == 4 and artifact.lora.rank(0, "attention.self.value") == 4


def test_versions_1_and_2_stay_as_they_were():
    plain = read_artifact(save_file(), SHAPE3)
    assert plain.format_version == "1" and plain.lora is None
    refused(save_file(good_tensors() | lora_tensors(), good_metadata(format_version="2")), "unknown ['lora.0.")


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        (lora_tensors("attention.self.query", rank=MAX_RANK + 1), {}, f"rank r expected 1..{MAX_RANK}, got {MAX_RANK + 1}"),
        (lora_tensors("attention.self.qkv"), {}, "module expected one of"),
        (lora_tensors("embeddings.word_embeddings"), {}, "'lora.0.embeddings.word_embeddings.A': module expected one of"),
        (lora_tensors(layer=2), {}, "layer expected 0..1 (this backbone), got 2"),
        (lora_tensors(in_features=C + 1), {}, f"'lora.0.attention.self.query.A': expected shape [r, {C}] for this backbone, got [4, {C + 1}]"),
        (lora_tensors("intermediate.dense", out_features=C), {}, f"'lora.0.intermediate.dense.B': expected shape [{F}, r]"),
        ({"lora.0.output.dense.A": torch.zeros(2, F), "lora.0.output.dense.B": torch.zeros(C, 3)}, {}, "expected rank r = 2"),
        ({"lora.0.attention.self.key.A": torch.zeros(2, C)}, {}, "'lora.0.attention.self.key.B': expected beside"),
        ({"lora.0.attention.self.key.magnitude": torch.zeros(C)}, {}, "DoRA magnitudes, biases"),
        (lora_tensors(), {"lora_scaling": None}, "'lora_scaling': expected a decimal number (the LoRA tensors need it), got nothing"),
        (lora_tensors(), {"lora_scaling": "alpha/r"}, "'lora_scaling': expected a decimal number, got 'alpha/r'"),
        (lora_tensors(), {"lora_scaling": "inf"}, "'lora_scaling': expected a finite number"),
        ({}, {}, "missing ['prefix.key_values']"),
        ({k: v.long() for k, v in lora_tensors().items()}, {}, "expected dtype F32, F16 or BF16, got I64"),
    ],
)
def test_refusals_name_the_tensor_or_field(tensors, metadata, message):
    base = {k: v for k, v in good_tensors().items() if k != "prefix.key_values"}
    refused(v3(base | tensors, **metadata), message)


def test_a_stray_scaling_without_lora_is_refused():
    refused(v3(good_tensors()), "'lora_scaling': given, but the artifact holds no lora.* tensors")


def test_the_header_is_checked_before_the_body_is_read(monkeypatch):
    import server.artifact.prefix as prefix_module

    def forbidden(data):
        raise AssertionError("the body was read for a refused artifact")

    monkeypatch.setattr(prefix_module, "load_safetensors_bytes", forbidden)
    refused(v3(good_tensors() | lora_tensors(rank=MAX_RANK + 1)), "rank r expected")


def test_writing_refuses_an_artifact_with_neither_prefix_nor_lora():
    artifact = read_artifact(save_file(), SHAPE3)
    with pytest.raises(ArtifactError, match=re.escape("expected 'prefix.key_values', LoRA tensors or both, got neither")):
        artifact_to_bytes(dataclasses.replace(artifact, key_values=None))


def test_writing_picks_version_3_for_lora_only():
    artifact: PrefixArtifact = read_artifact(save_file(), SHAPE3)
    lora = LoraWeights(0.5, {(1, "attention.output.dense"): (torch.ones(2, C), torch.ones(C, 2))})
    data = artifact_to_bytes(dataclasses.replace(artifact, lora=lora))
    again = read_artifact(data, SHAPE3)
    assert again.format_version == "3" and again.lora.scaling == 0.5 and again.prefix_len == 4
