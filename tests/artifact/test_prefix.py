"""The prefix artifact (SPEC section 1): every refusal has its own test whose message says what was
expected and what came, the bounds that must be accepted are, and a write/read round trip keeps
tensors, dtypes, labels, problem type and metadata."""

from __future__ import annotations

import json

import pytest
import torch

from server.artifact import (
    ArtifactError,
    PrefixArtifact,
    ProblemType,
    artifact_to_bytes,
    read_artifact,
    read_artifact_file,
    write_artifact,
)
from tests.artifact.builders import FINGERPRINT, LABELS, SHAPE, craft, entry, good_metadata, good_tensors, save_file

TENSOR_NAMES = ["prefix.key_values", "classifier.weight", "classifier.bias"]


def refused(data: bytes, *fragments: str) -> str:
    with pytest.raises(ArtifactError) as caught:
        read_artifact(data, SHAPE)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def with_tensor(name: str, tensor: torch.Tensor) -> bytes:
    tensors = good_tensors()
    tensors[name] = tensor
    return save_file(tensors)


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("problem_type", list(ProblemType))
def test_round_trip_keeps_everything(dtype, problem_type):
    tensors = good_tensors(prefix_len=7, num_labels=3, dtype=dtype)
    original = PrefixArtifact(
        key_values=tensors["prefix.key_values"],
        classifier_weight=tensors["classifier.weight"],
        classifier_bias=tensors["classifier.bias"],
        problem_type=problem_type,
        labels=("a", "b", "c"),
        extra_metadata={"author": "me", "training_data": "sst2", "accuracy": "0.91", "note": "ünïcode ✓"},
        backbone_fingerprint=FINGERPRINT,
    )
    loaded = read_artifact(artifact_to_bytes(original), SHAPE)
    for name in ("key_values", "classifier_weight", "classifier_bias"):
        got, expected = getattr(loaded, name), getattr(original, name)
        assert got.dtype == dtype and torch.equal(got, expected), name
    assert loaded.problem_type is problem_type
    assert loaded.labels == ("a", "b", "c")
    assert loaded.extra_metadata == original.extra_metadata
    assert loaded.backbone_fingerprint == FINGERPRINT
    assert (loaded.prefix_len, loaded.num_labels) == (7, 3)


def test_file_round_trip(tmp_path):
    original = read_artifact(save_file(), SHAPE)
    write_artifact(original, tmp_path / "task.safetensors")
    loaded = read_artifact_file(tmp_path / "task.safetensors", SHAPE)
    assert torch.equal(loaded.key_values, original.key_values) and loaded.labels == tuple(LABELS)


def test_extra_metadata_is_kept_and_reserved_keys_are_not_extra():
    data = save_file(metadata=good_metadata(author="ann", dataset="sst2", backbone_fingerprint=FINGERPRINT))
    artifact = read_artifact(data, SHAPE)
    assert artifact.extra_metadata == {"author": "ann", "dataset": "sst2"}
    assert read_artifact(artifact_to_bytes(artifact), SHAPE).extra_metadata == {"author": "ann", "dataset": "sst2"}


# --- tensors: names, shapes, dtypes, values -------------------------------------------------------


@pytest.mark.parametrize("missing", TENSOR_NAMES)
def test_missing_tensor(missing):
    tensors = good_tensors()
    del tensors[missing]
    refused(save_file(tensors), "expected exactly", f"missing ['{missing}']")


def test_unknown_tensor():
    tensors = good_tensors() | {"prefix_encoder.embedding.weight": torch.zeros(4, 8)}
    refused(save_file(tensors), "expected exactly", "unknown ['prefix_encoder.embedding.weight']")


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ([3, 2, 4, 4, 8], "L (layers) expected 2, got 3"),
        ([2, 2, 5, 4, 8], "H (attention heads) expected 4, got 5"),
        ([2, 2, 4, 4, 16], "D (head size) expected 8, got 16"),
        ([2, 3, 4, 4, 8], "dim 1 (keys, values) expected 2, got 3"),
        ([2, 1, 4, 4, 8], "dim 1 (keys, values) expected 2, got 1"),
        ([2, 2, 4, 4], "expected 5 dims [L, 2, H, P, D], got shape [2, 2, 4, 4]"),
        ([1, 2, 2, 4, 4, 8], "expected 5 dims [L, 2, H, P, D], got shape [1, 2, 2, 4, 4, 8]"),
        ([4, 4 * 2 * 32], "expected 5 dims"),  # a PEFT prompt_embeddings tensor, not converted
    ],
)
def test_key_values_shape_against_the_backbone(shape, fragment):
    refused(with_tensor("prefix.key_values", torch.zeros(shape)), "'prefix.key_values'", fragment)


@pytest.mark.parametrize(
    "name, shape, fragment",
    [
        ("classifier.weight", [3, 32], "expected shape [num_labels=2, hidden_size=32], got [3, 32]"),
        ("classifier.weight", [2, 16], "expected shape [num_labels=2, hidden_size=32], got [2, 16]"),
        ("classifier.weight", [64], "got [64]"),
        ("classifier.bias", [3], "expected shape [2], got [3]"),
        ("classifier.bias", [2, 1], "expected shape [2], got [2, 1]"),
    ],
)
def test_classifier_shapes_against_labels_and_hidden_size(name, shape, fragment):
    refused(with_tensor(name, torch.zeros(shape)), repr(name), fragment)


def test_label_count_must_match_the_classifier():
    data = save_file(metadata=good_metadata(labels=json.dumps(["a", "b", "c"])))
    refused(data, "'classifier.weight'", "num_labels=3", "got [2, 32]")


@pytest.mark.parametrize("name", TENSOR_NAMES)
@pytest.mark.parametrize("dtype, code", [(torch.float64, "F64"), (torch.int64, "I64"), (torch.int8, "I8")])
def test_non_float_or_wide_dtypes_are_refused(name, dtype, code):
    data = with_tensor(name, good_tensors()[name].to(dtype))
    refused(data, repr(name), f"expected dtype F32, F16 or BF16, got {code}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_are_accepted_per_tensor(dtype):
    tensors = good_tensors()
    tensors["classifier.weight"] = tensors["classifier.weight"].to(dtype)  # mixed dtypes are fine
    assert read_artifact(save_file(tensors), SHAPE).classifier_weight.dtype == dtype


@pytest.mark.parametrize("name", TENSOR_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_non_finite_values_anywhere_are_refused(name, bad, dtype):
    tensor = good_tensors(dtype=dtype)[name].clone()
    tensor.view(-1)[-1] = bad  # the last element: a check of only the first would miss it
    refused(with_tensor(name, tensor), repr(name), "expected finite values, found NaN or Inf")


def test_buffer_with_a_hole_is_refused_by_the_reader():
    """Offsets inside the buffer but leaving a gap pass the header checks; safetensors refuses them."""
    tensors = good_tensors()
    sizes = {name: t.numel() * 4 for name, t in tensors.items()}
    header, start = {"__metadata__": good_metadata()}, 0
    for name, tensor in tensors.items():
        header[name] = entry("F32", list(tensor.shape), start, start + sizes[name])
        start += sizes[name] + 4  # a 4-byte hole after each tensor
    refused(craft(header, bytes(start)), "could not read the tensors")


# --- prefix length bounds: 1 <= P <= max_position_embeddings - 2 -----------------------------------


@pytest.mark.parametrize("prefix_len", [1, SHAPE.max_position_embeddings - 2])
def test_prefix_length_bounds_are_accepted(prefix_len):
    assert read_artifact(save_file(good_tensors(prefix_len=prefix_len)), SHAPE).prefix_len == prefix_len


@pytest.mark.parametrize("prefix_len", [0, SHAPE.max_position_embeddings - 1, SHAPE.max_position_embeddings])
def test_prefix_length_out_of_bounds(prefix_len):
    data = save_file(good_tensors(prefix_len=prefix_len))
    refused(data, f"prefix length P expected 1..{SHAPE.max_position_embeddings - 2}, got {prefix_len}")


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "ptv2", "peft", ""])
def test_format_must_be_ptv2_prefix(value):
    refused(save_file(metadata=good_metadata(format=value)), "'format': expected 'ptv2-prefix'", f"got {value!r}")


@pytest.mark.parametrize("value", [None, "4", "1.0", "v1", "2.0"])
def test_format_version_must_be_1_2_or_3(value):
    refused(save_file(metadata=good_metadata(format_version=value)), "'format_version': expected '1', '2' or '3'", repr(value))


def test_no_metadata_at_all():
    refused(save_file(metadata={}), "'format': expected 'ptv2-prefix', got None")


@pytest.mark.parametrize("value", [None, "classification", "SINGLE_LABEL_CLASSIFICATION", ""])
def test_unknown_problem_type(value):
    message = refused(save_file(metadata=good_metadata(problem_type=value)), "'problem_type'", f"got {value!r}")
    assert all(kind.value in message for kind in ProblemType), message


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (None, "expected a JSON array of label names, got nothing"),
        ("negative,positive", "expected a JSON array of label names, got 'negative,positive'"),
        ('{"0": "negative", "1": "positive"}', "expected a non-empty JSON array of non-empty strings"),
        ('"negative"', "expected a non-empty JSON array of non-empty strings"),
        ("[0, 1]", "non-empty strings, got '[0, 1]'"),
        ('["negative", null]', "non-empty strings"),
        ('["negative", ""]', "non-empty strings"),
        ("[]", "expected a non-empty JSON array"),
        ('["pos", "neg", "pos"]', "expected distinct names, got duplicates ['pos']"),
        ("[" * 100_000, "expected a JSON array of label names"),  # once a RecursionError
        ("[" + "1" * 5000 + "]", "expected a JSON array of label names"),  # once an int-digits ValueError
    ],
    ids=["missing", "csv", "object", "string", "ints", "null", "empty-name", "empty", "duplicates", "deep", "bigint"],
)
def test_bad_labels(labels, fragment):
    refused(save_file(metadata=good_metadata(labels=labels)), "'labels'", fragment)


def test_wrong_backbone_fingerprint():
    other = "sha256:" + "cd" * 32
    data = save_file(metadata=good_metadata(backbone_fingerprint=other))
    refused(data, "'backbone_fingerprint'", f"expected this server's {FINGERPRINT!r}", f"got {other!r}")


@pytest.mark.parametrize("fingerprint", [FINGERPRINT, None])
def test_right_or_absent_fingerprint_is_accepted(fingerprint):
    artifact = read_artifact(save_file(metadata=good_metadata(backbone_fingerprint=fingerprint)), SHAPE)
    assert artifact.backbone_fingerprint == fingerprint


def test_metadata_is_checked_before_the_body_is_read(monkeypatch):
    """A refused header never reaches safetensors' reader (nothing is built for a bad upload)."""
    import server.artifact.prefix as prefix_module

    def forbidden(data):
        raise AssertionError("the body was read for a refused artifact")

    monkeypatch.setattr(prefix_module, "load_safetensors_bytes", forbidden)
    refused(save_file(metadata=good_metadata(format_version="4")), "format_version")
    refused(with_tensor("classifier.bias", torch.zeros(5)), "classifier.bias")
