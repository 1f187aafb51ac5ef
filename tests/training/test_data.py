"""Training data: label kinds, label order, and clear refusals of bad files."""

from __future__ import annotations

import json

import pytest
import torch

from server.artifact import ProblemType
from training.data import DataError, load_dataset


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_names_are_collected_sorted_and_pairs_kept(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "text_pair": "c", "label": "neg"}]
    data = load_dataset(_jsonl(tmp_path / "d.jsonl", rows))
    assert data.problem_type is ProblemType.SINGLE_LABEL
    assert data.labels == ("neg", "pos")
    assert data.inputs == ["a", ("b", "c")]
    assert data.targets.tolist() == [1, 0]


def test_indices_use_given_labels(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    data = load_dataset(_jsonl(tmp_path / "d.jsonl", rows), labels=("negative", "positive"))
    assert data.labels == ("negative", "positive") and data.targets.tolist() == [1, 0]


def test_multi_label_and_regression(tmp_path):
    multi = load_dataset(_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": ["x", "z"]}, {"text": "b", "label": []}]))
    assert multi.problem_type is ProblemType.MULTI_LABEL
    assert multi.labels == ("x", "z") and multi.targets.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    reg = load_dataset(_jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 3}]))
    assert reg.problem_type is ProblemType.REGRESSION and reg.labels == ("score",)
    assert torch.equal(reg.targets, torch.tensor([[0.5], [3.0]]))


def test_csv_cells_are_parsed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,text_pair,label\nhello,,"[""a"", ""b""]"\n"x, y",z,"[""b""]"\n')
    data = load_dataset(path)
    assert data.problem_type is ProblemType.MULTI_LABEL
    assert data.inputs == ["hello", ("x, y", "z")] and data.labels == ("a", "b")


def test_eval_label_unknown_to_training_is_refused(tmp_path):
    train = load_dataset(_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]))
    eval_path = _jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataError, match=r"e.jsonl:2: unknown label 'meh': expected one of \['neg', 'pos'\]"):
        load_dataset(eval_path, train.labels, train.problem_type)


def test_label_outside_given_labels_is_refused(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 2}])
    with pytest.raises(DataError, match=r"d.jsonl:1: label index expected 0..1"):
        load_dataset(path, labels=("a", "b"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "expected at least one row, got none"),
        ("\n\n", "expected at least one row, got none"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x"]}\n', "mixed label kinds"),
        ('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n', r"mixed label kinds.*an index \(d.jsonl:1\)"),
        ('{"text": "a"}\n', "d.jsonl:1: expected a 'label'"),
        ('{"text": "", "label": 1}\n', "expected 'text' to be a non-empty string"),
        ('{"text": "a", "label": true}\n', "got True"),
        ("not json\n", "d.jsonl:1: expected one JSON object per line"),
    ],
)
def test_bad_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_single_label_needs_two_labels(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    with pytest.raises(DataError, match=r"expected at least 2 labels, got \['pos'\]"):
        load_dataset(path)
    assert load_dataset(path, labels=("neg", "pos")).targets.tolist() == [1, 1]


def test_problem_type_must_fit_the_labels(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match="--problem-type regression expected labels that are a number or an index"):
        load_dataset(path, problem_type=ProblemType.REGRESSION)


def test_unsupported_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="got no such file"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"expected a .jsonl, .json, .csv or .tsv file, got .txt"):
        load_dataset(tmp_path / "d.txt")
