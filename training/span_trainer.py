"""`prefix-server train --head span`: extractive question answering (P-tuning v2's
BertPrefixForQuestionAnswering on the server's own layers), its export and its evaluation.

The model is the token model with two outputs, start and end (`qa_outputs`, SPEC 1d), trained on the
serving windows of each question (span_data.py) with the mean of the start and end cross-entropies.
The evaluation runs the exported artifact through the serving path: the serving windows (max_seq_len
384, doc_stride 128, within what fits beside the prefix), `Engine.score`, and the serving decoding
(server/decoding/spans.py), then scores the answers with the official SQuAD v1.1 exact match and F1
(torchmetrics' implementation of `evaluate-v1.1.py`: max over a question's reference answers, mean
over questions, in percent).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from server.artifact import HEAD_RULES, HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.decoding import SpanOptions, decode_answer, span_windows
from server.engine import Engine
from training.batches import eval_batches
from training.fixed_heads import export_fixed_head, start_run
from training.span_data import SpanDataset, load_span_dataset, span_training_set
from training.token_model import PrefixTokenClassifier
from training.trainer import EVAL_BATCH_SIZE, TrainConfig, TrainResult, _metadata, _run_steps, _total_steps, build_model

MASKED = -1e4  # padding never takes softmax weight


class PrefixSpanModel(PrefixTokenClassifier):
    """Start and end logits of every token, `[B, S, 2]`; padding gets MASKED."""

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        logits = super().forward(input_ids, token_type_ids, token_mask)  # [B, S, 2]
        return logits.masked_fill(~token_mask[:, :, None], MASKED)


def span_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, S, 2], targets [B, 2] (start and end token): as BertForQuestionAnswering's loss."""
    return (F.cross_entropy(logits[:, :, 0], targets[:, 0]) + F.cross_entropy(logits[:, :, 1], targets[:, 1])) / 2


def train_span(config: TrainConfig, engine: Engine | None = None, progress: bool = True) -> TrainResult:
    """Trains, exports and evaluates a span head; raises DataError or ValueError on bad input."""
    engine = start_run(config, engine)
    train_set = load_span_dataset(config.train)
    eval_set = load_span_dataset(config.eval) if config.eval else None
    max_tokens = min(config.max_length, engine.shape.max_tokens(config.prefix_len))
    if not 0 <= config.doc_stride < max_tokens:
        raise ValueError(f"--doc-stride: expected 0..{max_tokens - 1} (below --max-length), got {config.doc_stride}")
    encoded = span_training_set(train_set, engine.encoder, max_tokens, config.doc_stride)
    model = build_model(engine, config, HEAD_RULES[HeadKind.SPAN].fixed_outputs, PrefixSpanModel)
    steps = _total_steps(config, len(encoded))
    started = time.perf_counter()
    _run_steps(model, encoded, ProblemType.SINGLE_LABEL, config, steps, progress, loss=span_loss)
    seconds = time.perf_counter() - started
    artifact = export_fixed_head(model, config, engine, HeadKind.SPAN)
    metrics = evaluate_spans(engine, artifact, eval_set, progress) if eval_set is not None else {}
    metadata = _metadata(config, _Rows(train_set, len(encoded)), eval_set, steps, seconds, engine, metrics)
    metadata.update(train_questions=str(len(train_set)), doc_stride=str(config.doc_stride))
    artifact = replace(artifact, extra_metadata=metadata)
    read_artifact(artifact_to_bytes(artifact), engine.shape)  # what we write must load; raises if not
    return TrainResult(artifact, model, metrics, steps, seconds)


def predict_answers(engine: Engine, artifact: PrefixArtifact, dataset: SpanDataset, progress: bool = False) -> list[str]:
    """Each question's answer text through the serving path (windows, Engine.score, decoding)."""
    handle = engine.load(artifact)
    options = SpanOptions()
    max_seq_len, stride = options.window(engine.shape.max_tokens(artifact.prefix_len))
    windows = [span_windows(engine.encoder, q.question, q.context, max_seq_len, stride) for q in dataset.questions]
    flat = [(question, w) for question, per_question in enumerate(windows) for w in per_question]
    logits: list = [None] * len(flat)
    batches = eval_batches([len(w.encoded) for _, w in flat], EVAL_BATCH_SIZE)
    for indices in tqdm(batches, unit="batch", desc="eval", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        for i, values in zip(indices, engine.score_encoded([(flat[i][1].encoded, handle) for i in indices])):
            logits[i] = values
    answers, at = [], 0
    for q, per_question in zip(dataset.questions, windows):
        answers.append(decode_answer(per_question, logits[at : at + len(per_question)], q.context, options).answer)
        at += len(per_question)
    return answers


def evaluate_spans(engine: Engine, artifact: PrefixArtifact, dataset: SpanDataset, progress: bool = False) -> dict:
    return squad_metrics(predict_answers(engine, artifact, dataset, progress), dataset)


def squad_metrics(answers: list[str], dataset: SpanDataset) -> dict:
    """Official SQuAD v1.1 exact match and F1 (percent), torchmetrics' implementation."""
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": a, "id": q.id} for a, q in zip(answers, dataset.questions)]
    target = [{"answers": {"text": list(q.answers), "answer_start": list(q.starts)}, "id": q.id} for q in dataset.questions]
    result = squad(preds, target)
    return {"exact_match": float(result["exact_match"]), "f1": float(result["f1"])}


class _Rows:
    """What _metadata reads of a training set: its source and its row count (windows, here)."""

    def __init__(self, dataset: SpanDataset, rows: int):
        self.source, self._rows = dataset.source, rows

    def __len__(self) -> int:
        return self._rows
