"""`prefix-server train --head span` and `--head choice`: the data, the labels of each window, the
losses, the official SQuAD metric, artifacts that are SPEC 1d heads, evaluations through the serving
path, and training that learns."""

from __future__ import annotations

import argparse
import json
import random

import pytest
import torch
import torch.nn.functional as F

from server.artifact import HeadKind, read_artifact_file
from server.commands import train as train_command
from server.decoding import SpanOptions
from tests.decoding.test_parity import serve
from tests.training.test_token_train import train_command_shape
from training import DataError, TrainConfig
from training.choice_trainer import choice_loss, load_choice_dataset, predict_choices, train_choice
from training.span_data import answer_tokens, load_span_dataset, span_training_set
from training.span_trainer import predict_answers, squad_metrics, train_span

COLORS = ["red", "green", "blue", "yellow"]
NAMES = ["alice", "bob", "carol", "dave"]


def squad_rows(n: int, seed: int = 0) -> list[dict]:
    """Paragraphs where the answer is always the name after "named": a pattern a prefix can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, color = rng.choice(NAMES), rng.choice(COLORS)
        filler = " ".join(rng.choice(COLORS) for _ in range(rng.randint(2, 6)))
        context = f"{filler} the car is {color} and the driver named {name} is here {filler}"
        start = context.index(f"named {name}") + len("named ")
        rows.append({"title": f"t{i % 3}", "context": context, "qas": [
            {"id": f"q{i}", "question": "who is the driver?", "answers": [{"text": name, "answer_start": start}]},
        ]})
    return rows


def choice_rows(n: int, seed: int = 0) -> list[dict]:
    """The right choice is the one that says so, in any position (a pattern the tiny random backbone carries)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        color = rng.choice(COLORS)
        count = rng.randint(2, 3)
        label = rng.randrange(count)
        choices = [f"the {rng.choice(COLORS)} one is wrong" for _ in range(count)]
        choices[label] = f"the {color} one is right"
        rows.append({"text": f"the sky is {color} today", "choices": choices, "label": label})
    return rows


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def span_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(train=write(tmp_path / "train.jsonl", squad_rows(48)), eval=write(tmp_path / "eval.jsonl", squad_rows(12, 1)),
                  prefix_len=4, steps=4, batch_size=8, lr=3e-2, max_length=48, doc_stride=16, dtype="float16")
    values.update(overrides)
    return TrainConfig(**values)


def choice_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(train=write(tmp_path / "c.train.jsonl", choice_rows(40)), eval=write(tmp_path / "c.eval.jsonl", choice_rows(16, 1)),
                  prefix_len=4, steps=4, batch_size=8, lr=3e-2, dtype="float16")
    values.update(overrides)
    return TrainConfig(**values)


def test_squad_formats_read_the_same_questions(tmp_path):
    rows = squad_rows(3)
    paragraphs = load_span_dataset(write(tmp_path / "p.jsonl", rows))
    flat = [{"id": qa["id"], "question": qa["question"], "context": r["context"],
             "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for r in rows for qa in r["qas"]]
    questions = load_span_dataset(write(tmp_path / "q.jsonl", flat))
    official = tmp_path / "official.json"
    official.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": rows}]}))
    assert paragraphs.questions == questions.questions == load_span_dataset(official).questions
    bad = [{**rows[0], "qas": [{"question": "q", "answers": [{"text": "nowhere", "answer_start": 0}]}]}]
    with pytest.raises(DataError, match="answer 'nowhere' expected at character 0 of the context"):
        load_span_dataset(write(tmp_path / "bad.jsonl", bad))


def test_windows_label_the_answer_tokens_or_the_first_token(tiny_engine, tmp_path):
    data = load_span_dataset(write(tmp_path / "p.jsonl", squad_rows(6)))
    encoded = span_training_set(data, tiny_engine.encoder, 16, 4)
    assert len(encoded.encoded) > len(data), "long contexts give several windows"
    tokenizer = tiny_engine.encoder.tokenizer
    for row, (start, end) in zip(encoded.encoded, encoded.targets.tolist()):
        if start:  # the labelled tokens spell an answer
            assert tokenizer.decode(row.input_ids[start : end + 1].tolist()) in {q.answers[0] for q in data.questions}
    assert (encoded.targets[:, 0] == 0).any() and (encoded.targets[:, 0] > 0).any()
    sequence, offsets = [None, 0, None, 1, 1, 1, None], [(0, 0), (0, 3), (0, 0), (0, 4), (5, 9), (10, 12), (0, 0)]
    assert answer_tokens(sequence, offsets, 5, 12) == (4, 5)
    assert answer_tokens(sequence, offsets, 6, 8) == (4, 4)  # inside one token
    assert answer_tokens(sequence, offsets, 10, 20) == (0, 0)  # not wholly in this window


def test_squad_metric_is_the_official_definition():
    from training.span_data import Question, SpanDataset

    questions = [Question("a", "?", "c", ("Denver Broncos", "The Broncos"), (0, 0)), Question("b", "?", "c", ("red car",), (0,))]
    metrics = squad_metrics(["the Denver Broncos", "a red truck"], SpanDataset(None, questions))
    # Articles and punctuation are dropped before comparing; F1 is over the answer's words, the best reference.
    assert metrics["exact_match"] == pytest.approx(50.0) and metrics["f1"] == pytest.approx((100 + 50) / 2)


def test_span_artifact_and_its_evaluation_through_the_serving_path(tiny_engine, tmp_path):
    config = span_config(tmp_path)
    result = train_span(config, tiny_engine, progress=False)
    artifact = result.artifact
    assert artifact.head is HeadKind.SPAN and artifact.labels == ("start", "end") and artifact.key_values.dtype == torch.float16
    assert {"eval_exact_match", "eval_f1", "doc_stride", "train_questions"} <= set(artifact.extra_metadata)
    data = load_span_dataset(config.eval)
    answers = predict_answers(tiny_engine, artifact, data)
    served, _ = serve(tiny_engine, artifact, [_question(q) for q in data.questions], HeadKind.SPAN, SpanOptions())
    assert answers == [a.answer for a in served]
    assert result.metrics == squad_metrics(answers, data)


def _question(q):
    from server.batching.inputs import QuestionInput

    return QuestionInput(q.question, q.context)


def test_span_training_learns_the_pattern(tiny_engine, tmp_path):
    result = train_span(span_config(tmp_path, steps=80, lr=5e-2), tiny_engine, progress=False)
    assert result.metrics["exact_match"] > 50


def test_choice_loss_is_cross_entropy_over_each_items_choices():
    logits = torch.tensor([[1.0], [2.0], [0.5], [0.1], [3.0]])  # items of 2 and 3 choices
    targets = torch.tensor([[1, 2], [2, 3]])
    expected = (F.cross_entropy(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
                + F.cross_entropy(torch.tensor([[0.5, 0.1, 3.0]]), torch.tensor([2]))) / 2
    assert choice_loss(logits, targets) == pytest.approx(expected.item())


def test_choice_artifact_learns_and_evaluates_through_the_serving_path(tiny_engine, tmp_path):
    config = choice_config(tmp_path, steps=200, lr=5e-2)
    result = train_choice(config, tiny_engine, progress=False)
    assert result.artifact.head is HeadKind.CHOICE and result.artifact.labels == ("choice",)
    data = load_choice_dataset(config.eval)
    chosen = predict_choices(tiny_engine, result.artifact, data)
    from server.batching.inputs import ChoiceInput

    served, _ = serve(tiny_engine, result.artifact, [ChoiceInput(t, c) for t, c in zip(data.texts, data.choices)], HeadKind.CHOICE)
    assert chosen == [s.choice for s in served]
    assert result.metrics["accuracy"] == sum(c == y for c, y in zip(chosen, data.labels)) / len(data) > 0.8


@pytest.mark.parametrize("row, message", [
    ({"text": "t", "choices": ["only"], "label": 0}, "expected 'choices' as 2 to 16 non-empty texts"),
    ({"text": "t", "choices": ["a", "b"], "label": 2}, "expected 'label' as a choice index 0..1, got 2"),
])
def test_bad_choice_rows_are_refused(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_choice_dataset(write(tmp_path / "bad.jsonl", [row]))


@pytest.mark.parametrize("head", ["span", "choice"])
def test_command_writes_span_and_choice_artifacts(tiny_backbone_dir, tmp_path, capsys, head):
    config = span_config(tmp_path) if head == "span" else choice_config(tmp_path)
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    out = tmp_path / f"{head}.safetensors"
    args = parser.parse_args(["train", "--head", head, "--train", str(config.train), "--eval", str(config.eval),
                              "--backbone", str(tiny_backbone_dir), "--steps", "2", "--prefix-len", "4", "--max-length", "48",
                              "--doc-stride", "16", "--quiet", "--out", str(out)])
    assert args.func(args) == 0
    assert read_artifact_file(out, train_command_shape(tiny_backbone_dir)).head.value == head
    printed = capsys.readouterr().out
    assert f"{head} head" in printed and ("exact_match" in printed if head == "span" else "accuracy" in printed)
