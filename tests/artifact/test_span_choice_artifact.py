"""The span and choice heads of format version 2 (SPEC 1d): their tensors, their optional labels and
problem type, and a clear refusal for every misshapen head."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from server.artifact import ArtifactError, HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.artifact.safetensors_header import parse_header
from tests.artifact.builders import SHAPE, good_metadata, good_tensors, save_file
from tests.artifact.test_prefix_v2 import refused

HIDDEN = SHAPE.hidden_size
NO_POOLER = dataclasses.replace(SHAPE, family="roberta", position_offset=2, pooler=False)


def span_tensors(rows: int = 2) -> dict[str, torch.Tensor]:
    tensors = good_tensors(num_labels=rows)
    return {
        "prefix.key_values": tensors["prefix.key_values"],
        "qa_outputs.weight": tensors.pop("classifier.weight"),
        "qa_outputs.bias": tensors.pop("classifier.bias"),
    }


def head_metadata(head: str, **overrides: str | None) -> dict[str, str]:
    """v2 metadata of a span or choice head, without labels and problem type (they are optional)."""
    return good_metadata(**({"format_version": "2", "head": head, "labels": None, "problem_type": None} | overrides))


def test_span_head_reads_with_default_labels():
    artifact = read_artifact(save_file(span_tensors(), head_metadata("span")), SHAPE)
    assert artifact.head is HeadKind.SPAN and artifact.labels == ("start", "end")
    assert artifact.problem_type is ProblemType.SINGLE_LABEL and artifact.classifier_weight.shape == (2, HIDDEN)


def test_span_artifact_round_trips_as_qa_outputs():
    artifact = read_artifact(save_file(span_tensors(), head_metadata("span", labels=json.dumps(["s", "e"]))), SHAPE)
    data = artifact_to_bytes(artifact)
    again = read_artifact(data, SHAPE)
    assert again.labels == ("s", "e") and torch.equal(again.classifier_weight, artifact.classifier_weight)
    header = parse_header(data)
    assert sorted(header.tensors) == ["prefix.key_values", "qa_outputs.bias", "qa_outputs.weight"]
    assert header.metadata["head"] == "span" and header.metadata["format_version"] == "2"


@pytest.mark.parametrize(
    "tensors, metadata, fragments",
    [
        (span_tensors(3), head_metadata("span"), ["'qa_outputs.weight': expected shape [2 (span head), hidden_size=32], got [3, 32]"]),
        (good_tensors(), head_metadata("span"),
         ["for a span head", "missing ['qa_outputs.weight', 'qa_outputs.bias']", "unknown ['classifier.bias'"]),
        (span_tensors() | {"pooler.weight": torch.zeros(HIDDEN, HIDDEN), "pooler.bias": torch.zeros(HIDDEN)}, head_metadata("span"),
         ["unknown ['pooler.bias', 'pooler.weight']"]),
        (span_tensors(), head_metadata("span", problem_type="regression"), ["expected 'single_label_classification' for a span head"]),
        (span_tensors(), head_metadata("span", labels=json.dumps(["a", "b", "c"])), ["expected 2 names for a span head", "got ['a', 'b', 'c']"]),
        (good_tensors(num_labels=2), head_metadata("choice"),
         ["'classifier.weight': expected shape [1 (choice head), hidden_size=32], got [2, 32]"]),
        (good_tensors(num_labels=2), head_metadata("choice", labels=json.dumps(["a", "b"])), ["expected 1 names for a choice head"]),
    ],
    ids=["three-outputs", "classifier-instead", "pooler", "regression", "three-labels", "choice-two-rows", "choice-two-labels"],
)
def test_misshapen_span_and_choice_heads_are_refused(tensors, metadata, fragments):
    refused(save_file(tensors, metadata), *fragments)


def test_choice_head_takes_an_own_pooler_and_needs_one_without_the_backbones():
    tensors = good_tensors(num_labels=1)
    plain = read_artifact(save_file(tensors, head_metadata("choice")), SHAPE)
    assert plain.head is HeadKind.CHOICE and plain.labels == ("choice",) and plain.pooler_weight is None
    pooler = {"pooler.weight": torch.randn(HIDDEN, HIDDEN), "pooler.bias": torch.randn(HIDDEN)}
    own = read_artifact(save_file(tensors | pooler, head_metadata("choice", backbone_family="roberta")), NO_POOLER)
    assert own.pooler_weight is not None
    refused(save_file(tensors, head_metadata("choice")), "a choice task brings its own", shape=NO_POOLER)


def test_a_version_1_file_keeps_span_metadata_as_extra():
    artifact = read_artifact(save_file(metadata=good_metadata(head="span")), SHAPE)
    assert artifact.head is HeadKind.SEQUENCE and artifact.extra_metadata == {"head": "span"}


def test_writing_a_span_head_with_a_pooler_is_refused():
    artifact = read_artifact(save_file(span_tensors(), head_metadata("span")), SHAPE)
    with_pooler = dataclasses.replace(artifact, pooler_weight=torch.zeros(HIDDEN, HIDDEN), pooler_bias=torch.zeros(HIDDEN))
    with pytest.raises(ArtifactError, match="expected none for a span head"):
        artifact_to_bytes(with_pooler)
    assert isinstance(artifact, PrefixArtifact) and artifact.format_version == "2"
