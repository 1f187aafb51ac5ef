"""`prefix-server train --head choice`: multiple choice (P-tuning v2's BertPrefixForMultipleChoice on
the server's own layers), its data, export and evaluation.

Data: JSON lines `{"text", "choices": [2 to 16 texts], "label": index}` (shared/data/copa.*.jsonl).
Each (text, choice) pair is a row encoded as the server encodes it; the classifier [1, hidden] on the
pooled first token gives each row a logit, and an item's logits are softmaxed together (cross-entropy
over the item's choices). A training batch holds whole items. The evaluation runs the exported artifact
through `Engine.score` and the serving decoding (server/decoding/choices.py): accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from server.artifact import HEAD_RULES, HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.decoding import choice_scores
from server.engine import EncodedInput, Engine
from training.batches import Batch, eval_batches, pad_rows
from training.data import DataError
from training.fixed_heads import export_fixed_head, start_run
from training.trainer import EVAL_BATCH_SIZE, TrainConfig, TrainResult, _metadata, _run_steps, _total_steps, build_model

MAX_CHOICES = 16


@dataclass(frozen=True)
class ChoiceDataset:
    source: Path
    texts: list[str]
    choices: list[tuple[str, ...]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def pairs(self) -> list[tuple[str, str]]:
        return [(text, choice) for text, choices in zip(self.texts, self.choices) for choice in choices]


@dataclass(frozen=True)
class ItemRows:
    """An item's rows, one per choice; its length is its longest row's (how batches group items)."""

    rows: list[EncodedInput]

    def __len__(self) -> int:
        return max(len(row) for row in self.rows)


@dataclass(frozen=True)
class ChoiceSet:
    """Items as the training loop takes them: `encoded` per item, a batch pads all their rows."""

    encoded: list[ItemRows]
    labels: torch.Tensor  # [N] long
    pad_token_id: int

    def batch(self, indices: list[int]) -> Batch:
        items = [self.encoded[i] for i in indices]
        ids, types, mask = pad_rows([row for item in items for row in item.rows], self.pad_token_id)  # [R, S] each
        counts = torch.tensor([len(item.rows) for item in items])  # [B]
        return Batch(ids, types, mask, torch.stack([self.labels[indices], counts], dim=1))  # targets [B, 2]


def load_choice_dataset(path: str | Path) -> ChoiceDataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a data file, got no such file")
    texts, choices, labels = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: expected one JSON object per line ({exc})") from None
        text, options, label = row.get("text"), row.get("choices"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: expected a non-empty 'text', got {text!r}")
        if not isinstance(options, list) or not 2 <= len(options) <= MAX_CHOICES or not all(isinstance(c, str) and c for c in options):
            raise DataError(f"{where}: expected 'choices' as 2 to {MAX_CHOICES} non-empty texts, got {options!r:.80}")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(options):
            raise DataError(f"{where}: expected 'label' as a choice index 0..{len(options) - 1}, got {label!r}")
        texts.append(text)
        choices.append(tuple(options))
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: expected at least one row, got none")
    return ChoiceDataset(path, texts, choices, labels)


def choice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [R, 1] (the items' rows one after another), targets [B, 2] (label, choice count)."""
    counts = targets[:, 1].tolist()
    C = max(counts)
    grid = torch.full((len(counts), C), float("-inf"), dtype=logits.dtype)  # [B, C]: missing choices masked
    item = torch.repeat_interleave(torch.arange(len(counts)), targets[:, 1])  # [R]
    within = torch.cat([torch.arange(n) for n in counts])  # [R]
    grid = grid.index_put((item, within), logits[:, 0])
    return F.cross_entropy(grid, targets[:, 0])


def train_choice(config: TrainConfig, engine: Engine | None = None, progress: bool = True) -> TrainResult:
    """Trains, exports and evaluates a choice head; raises DataError or ValueError on bad input."""
    engine = start_run(config, engine)
    train_set = load_choice_dataset(config.train)
    eval_set = load_choice_dataset(config.eval) if config.eval else None
    max_tokens = min(config.max_length, engine.shape.max_tokens(config.prefix_len))
    rows = engine.encoder.encode(train_set.pairs(), max_tokens, truncate=True)
    items, at = [], 0
    for choices in train_set.choices:
        items.append(ItemRows(rows[at : at + len(choices)]))
        at += len(choices)
    encoded = ChoiceSet(items, torch.tensor(train_set.labels), engine.encoder.tokenizer.pad_token_id or 0)
    model = build_model(engine, config, HEAD_RULES[HeadKind.CHOICE].fixed_outputs)
    steps = _total_steps(config, len(train_set))
    started = time.perf_counter()
    _run_steps(model, encoded, ProblemType.SINGLE_LABEL, config, steps, progress, loss=choice_loss)
    seconds = time.perf_counter() - started
    artifact = export_fixed_head(model, config, engine, HeadKind.CHOICE)
    metrics = evaluate_choices(engine, artifact, eval_set) if eval_set is not None else {}
    metadata = _metadata(config, train_set, eval_set, steps, seconds, engine, metrics)
    artifact = replace(artifact, extra_metadata=metadata)
    read_artifact(artifact_to_bytes(artifact), engine.shape)  # what we write must load; raises if not
    return TrainResult(artifact, model, metrics, steps, seconds)


def predict_choices(engine: Engine, artifact: PrefixArtifact, dataset: ChoiceDataset) -> list[int]:
    """Each item's chosen index through the serving path (Engine.score, then the softmax over its rows)."""
    handle = engine.load(artifact)
    rows = engine.encode(dataset.pairs(), artifact.prefix_len, truncate=True)
    logits: list = [None] * len(rows)
    for indices in eval_batches([len(r) for r in rows], EVAL_BATCH_SIZE):
        for i, values in zip(indices, engine.score_encoded([(rows[i], handle) for i in indices])):
            logits[i] = values
    chosen, at = [], 0
    for choices in dataset.choices:
        chosen.append(choice_scores(logits[at : at + len(choices)]).choice)
        at += len(choices)
    return chosen


def evaluate_choices(engine: Engine, artifact: PrefixArtifact, dataset: ChoiceDataset) -> dict:
    chosen = predict_choices(engine, artifact, dataset)
    return {"accuracy": sum(c == label for c, label in zip(chosen, dataset.labels)) / len(dataset)}
