"""Format version 2 (SPEC 1b): the `head` and `backbone_family` metadata and an artifact's own pooler.

Each refusal says what was expected and what came; a version-1 file keeps its meaning (the new keys
are plain extra metadata there, pooler tensors are unknown); writing picks the lowest version that
holds the artifact and round-trips every new field.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.artifact import (
    ArtifactError,
    HeadKind,
    PrefixArtifact,
    ProblemType,
    artifact_to_bytes,
    read_artifact,
)
from tests.artifact.builders import SHAPE, good_metadata, good_tensors, save_file

HIDDEN = SHAPE.hidden_size
ROBERTA = dataclasses.replace(SHAPE, family="roberta", position_offset=2)


def v2(**overrides: str | None) -> dict[str, str]:
    return good_metadata(format_version="2", **overrides)


def with_pooler(dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return good_tensors() | {
        "pooler.weight": torch.randn(HIDDEN, HIDDEN, generator=gen).to(dtype),
        "pooler.bias": torch.randn(HIDDEN, generator=gen).to(dtype),
    }


def refused(data: bytes, *fragments: str, shape=SHAPE) -> str:
    with pytest.raises(ArtifactError) as caught:
        read_artifact(data, shape)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- reading ------------------------------------------------------------------------------------


def test_v2_without_new_keys_is_a_sequence_head_on_the_backbone_pooler():
    artifact = read_artifact(save_file(metadata=v2()), SHAPE)
    assert artifact.head is HeadKind.SEQUENCE and artifact.pooler_weight is None and artifact.backbone_family is None
    assert artifact.extra_metadata == {}


def test_v1_file_keeps_its_meaning_new_keys_are_extra_metadata():
    artifact = read_artifact(save_file(metadata=good_metadata(head="token", backbone_family="roberta")), SHAPE)
    assert artifact.head is HeadKind.SEQUENCE and artifact.backbone_family is None
    assert artifact.extra_metadata == {"head": "token", "backbone_family": "roberta"}


def test_v1_file_with_pooler_tensors_is_refused():
    refused(save_file(with_pooler()), "expected exactly", "unknown ['pooler.bias', 'pooler.weight']")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_head_with_own_pooler(dtype):
    tensors = with_pooler(dtype)
    artifact = read_artifact(save_file(tensors, v2(head="sequence")), SHAPE)
    assert torch.equal(artifact.pooler_weight, tensors["pooler.weight"])
    assert torch.equal(artifact.pooler_bias, tensors["pooler.bias"])


def test_token_head():
    artifact = read_artifact(save_file(metadata=v2(head="token", backbone_family="bert")), SHAPE)
    assert artifact.head is HeadKind.TOKEN and artifact.backbone_family == "bert"


@pytest.mark.parametrize("value", ["", "tokens", "SEQUENCE", "spans", "multiple_choice"])
def test_unknown_head(value):
    refused(save_file(metadata=v2(head=value)), "'head': expected one of 'sequence', 'token', 'span', 'choice'", f"got {value!r}")


@pytest.mark.parametrize("problem", [ProblemType.MULTI_LABEL, ProblemType.REGRESSION])
def test_token_head_must_be_single_label(problem):
    data = save_file(metadata=v2(head="token", problem_type=problem.value))
    refused(data, "expected 'single_label_classification' for a token head", f"got {problem.value!r}")


def test_token_head_has_no_pooler():
    refused(save_file(with_pooler(), v2(head="token")), "unknown ['pooler.bias', 'pooler.weight']")


@pytest.mark.parametrize("missing", ["pooler.weight", "pooler.bias"])
def test_pooler_needs_both_tensors(missing):
    tensors = with_pooler()
    del tensors[missing]
    refused(save_file(tensors, v2()), "expected both 'pooler.weight' and 'pooler.bias' or neither")


@pytest.mark.parametrize(
    "name, shape, fragment",
    [
        ("pooler.weight", [HIDDEN, HIDDEN + 1], f"expected shape [{HIDDEN}, {HIDDEN}], got [{HIDDEN}, {HIDDEN + 1}]"),
        ("pooler.weight", [HIDDEN], f"expected shape [{HIDDEN}, {HIDDEN}], got [{HIDDEN}]"),
        ("pooler.bias", [HIDDEN, 1], f"expected shape [{HIDDEN}], got [{HIDDEN}, 1]"),
    ],
)
def test_pooler_shapes(name, shape, fragment):
    tensors = with_pooler() | {name: torch.zeros(shape)}
    refused(save_file(tensors, v2()), repr(name), fragment)


def test_pooler_dtype_and_values_are_checked():
    refused(save_file(with_pooler() | {"pooler.bias": torch.zeros(HIDDEN, dtype=torch.float64)}, v2()),
            "'pooler.bias'", "expected dtype F32, F16 or BF16, got F64")
    bad = with_pooler()
    bad["pooler.weight"][-1, -1] = float("nan")
    refused(save_file(bad, v2()), "'pooler.weight'", "expected finite values")


@pytest.mark.parametrize("value", ["", "BERT", "xlm-roberta", "deberta"])
def test_unknown_family(value):
    refused(save_file(metadata=v2(backbone_family=value)), "'backbone_family': expected 'bert' or 'roberta'", repr(value))


def test_family_must_equal_the_servers():
    refused(save_file(metadata=v2(backbone_family="roberta")), "expected this server's 'bert', got 'roberta'")
    refused(save_file(metadata=v2(backbone_family="bert")), "expected this server's 'roberta', got 'bert'", shape=ROBERTA)
    assert read_artifact(save_file(metadata=v2(backbone_family="roberta")), ROBERTA).backbone_family == "roberta"


def test_roberta_prefix_bound_leaves_room_for_the_position_offset():
    top = ROBERTA.max_position_embeddings - 2 - 2  # padding_idx + 1 = 2, then <s> and </s>
    assert read_artifact(save_file(good_tensors(prefix_len=top)), ROBERTA).prefix_len == top
    refused(save_file(good_tensors(prefix_len=top + 1)), f"P expected 1..{top}, got {top + 1}", shape=ROBERTA)


# --- writing ------------------------------------------------------------------------------------


def artifact(**changes) -> PrefixArtifact:
    base = read_artifact(save_file(), SHAPE)
    return dataclasses.replace(base, **changes)


def metadata_of(data: bytes) -> dict[str, str]:
    from server.artifact.safetensors_header import parse_header

    return parse_header(data).metadata


def test_writing_a_plain_artifact_stays_version_1():
    meta = metadata_of(artifact_to_bytes(artifact()))
    assert meta["format_version"] == "1" and "head" not in meta and "backbone_family" not in meta


@pytest.mark.parametrize(
    "changes",
    [
        {"head": HeadKind.TOKEN},
        {"backbone_family": "roberta"},
        {"pooler_weight": torch.ones(HIDDEN, HIDDEN), "pooler_bias": torch.zeros(HIDDEN)},
    ],
    ids=["token", "family", "pooler"],
)
def test_round_trip_of_version_2_fields(changes):
    original = artifact(extra_metadata={"author": "me"}, **changes)
    data = artifact_to_bytes(original)
    assert metadata_of(data)["format_version"] == "2"
    loaded = read_artifact(data, ROBERTA if original.backbone_family == "roberta" else SHAPE)
    assert loaded.head is original.head and loaded.backbone_family == original.backbone_family
    assert loaded.extra_metadata == {"author": "me"}
    for name in ("key_values", "classifier_weight", "classifier_bias", "pooler_weight", "pooler_bias"):
        got, expected = getattr(loaded, name), getattr(original, name)
        assert (got is None and expected is None) or torch.equal(got, expected), name


def test_writing_half_a_pooler_is_refused():
    with pytest.raises(ArtifactError, match=r"both pooler\.weight and pooler\.bias"):
        artifact_to_bytes(artifact(pooler_weight=torch.ones(HIDDEN, HIDDEN)))


def test_v1_extra_keys_named_like_v2_fields_do_not_leak_into_a_v2_write():
    original = artifact(head=HeadKind.TOKEN, extra_metadata={"head": "sequence", "note": "x"})
    meta = metadata_of(artifact_to_bytes(original))
    assert meta["head"] == "token" and meta["note"] == "x"


def test_writing_a_token_head_with_a_pooler_is_refused():
    with pytest.raises(ArtifactError, match="expected none for a token head"):
        artifact_to_bytes(artifact(head=HeadKind.TOKEN, pooler_weight=torch.ones(HIDDEN, HIDDEN), pooler_bias=torch.zeros(HIDDEN)))
