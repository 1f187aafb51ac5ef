"""Extractive question-answering data for span heads (`prefix-server train --head span`).

Reads SQuAD-format data: the official nested JSON (`{"data": [{"title", "paragraphs": [{"context",
"qas"}]}]}`), JSON lines of paragraphs (`{"context", "qas": [{"id", "question", "answers": [{"text",
"answer_start"}]}]}`, as shared/data/squad.*.jsonl), or JSON lines of questions (`{"id", "question",
"context", "answers"}`, answers as a list of {"text", "answer_start"} or HF datasets' dict of lists).
Training rows are the serving windows of each question (the pair (question, context) cut as serving
cuts it, engine/tokenize.py `encode_windows`), each labelled with the start and end tokens of the
question's first answer, or the first token when the answer is not wholly inside the window (as
transformers' run_qa.py and P-tuning v2 label SQuAD).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from server.engine import EncodedInput, TextEncoder
from training.batches import EncodedSet
from training.data import DataError


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # every reference answer (SQuAD dev has 3 or more)
    starts: tuple[int, ...]  # their character offsets in the context


@dataclass(frozen=True)
class SpanDataset:
    source: Path
    questions: list[Question]

    def __len__(self) -> int:
        return len(self.questions)


def load_span_dataset(path: str | Path) -> SpanDataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a data file, got no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{"):
        try:
            records = [(1, p) for article in json.loads(text)["data"] for p in article["paragraphs"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: expected SQuAD JSON {{'data': [{{'paragraphs': ...}}]}}, got {exc!s:.80}") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path.name}:{number}: expected one JSON object per line ({exc})") from None
    questions = [q for number, record in records for q in _questions(record, f"{path.name}:{number}")]
    if not questions:
        raise DataError(f"{path}: expected at least one question, got none")
    return SpanDataset(path, questions)


def _questions(record: object, where: str) -> list[Question]:
    if not isinstance(record, dict) or not isinstance(record.get("context"), str):
        raise DataError(f"{where}: expected an object with 'context' and 'qas' or 'question', got {str(record)[:80]}")
    context = record["context"]
    qas = record.get("qas", [record])
    out = []
    for qa in qas:
        question = qa.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: expected a non-empty 'question', got {question!r}")
        texts, starts = _answers(qa.get("answers"), where)
        for text, start in zip(texts, starts):
            if context[start : start + len(text)] != text:
                raise DataError(f"{where}: answer {text!r} expected at character {start} of the context, it is not there")
        out.append(Question(str(qa.get("id", f"{where}#{len(out)}")), question, context, texts, starts))
    return out


def _answers(raw: object, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if isinstance(raw, dict):  # HF datasets: {"text": [...], "answer_start": [...]}
        raw = [{"text": t, "answer_start": s} for t, s in zip(raw.get("text", []), raw.get("answer_start", []))]
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: expected a non-empty list of answers, got {raw!r:.80}")
    try:
        return tuple(str(a["text"]) for a in raw), tuple(int(a["answer_start"]) for a in raw)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: expected answers as {{'text', 'answer_start'}}, got {raw!r:.80}") from None


def span_training_set(dataset: SpanDataset, encoder: TextEncoder, max_tokens: int, stride: int) -> EncodedSet:
    """Every question's windows with their [start, end] token targets ([N, 2] long)."""
    encoded, targets = [], []
    for q in dataset.questions:
        answer_start = q.starts[0]
        answer_end = answer_start + len(q.answers[0])
        for window in encoder.encode_windows(q.question.lstrip(), q.context, max_tokens, stride):
            ids = np.array(window.ids, dtype=np.int32)  # [S]
            types = np.zeros(len(ids), np.int8) if encoder.single_token_type else np.array(window.type_ids, np.int8)  # [S]
            encoded.append(EncodedInput(ids, types))
            targets.append(answer_tokens(window.sequence_ids, window.offsets, answer_start, answer_end))
    pad = encoder.tokenizer.pad_token_id or 0
    return EncodedSet(encoded, torch.tensor(targets, dtype=torch.long), pad)  # targets [N, 2]


def answer_tokens(sequence_ids: list, offsets: list, start: int, end: int) -> tuple[int, int]:
    """The first and last context tokens covering characters [start, end), or (0, 0) when the
    window does not hold the whole answer."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return 0, 0
    first = max(i for i in context if offsets[i][0] <= start)
    last = min(i for i in context if offsets[i][1] >= end)
    return first, max(first, last)
