"""`prefix-server train --head token`: training, export and evaluation of a token-head task.

Shares the optimisation loop, the schedule and the metadata with the sentence trainer (trainer.py);
owns the word-level data path, the token-head artifact (SPEC 1b: `format_version` 2, `head` =
`token`, `problem_type` single-label, the IOB2 labels), and the entity-level evaluation. The
evaluation scores the exported artifact through `Engine.score` (the serving path, the prefix in its
stored dtype) on the serving tokenizer's encoding with offsets, takes each word's label at its first
sub-token by SPEC 2b's rule, and scores entities with seqeval's default (conlleval) definition:
micro F1 over exact spans. A word the truncation cut off is
predicted `O`, which is what serving answers for it (no label, so in no entity).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch
from tqdm import tqdm

from server.artifact import HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.engine import Engine
from server.settings import require_extra
from training.batches import eval_batches
from training.token_model import PrefixTokenClassifier, token_loss
from training.trainer import (
    EVAL_BATCH_SIZE,
    TrainConfig,
    TrainResult,
    _check_config,
    _default_backbone,
    _metadata,
    _run_steps,
    _total_steps,
    build_model,
    check_prefix_len,
    exported_adaptation,
)
from training.words import OUTSIDE, EncodedWordSet, WordDataset, first_subtokens, is_iob2, load_word_dataset


def train_token(config: TrainConfig, engine: Engine | None = None, progress: bool = True) -> TrainResult:
    """Trains, exports and evaluates a token head; raises DataError or ValueError on bad input."""
    _check_config(config)
    if config.problem_type not in (None, ProblemType.SINGLE_LABEL):
        raise ValueError(
            f"--problem-type: a token head expected single_label_classification, got {config.problem_type.value}"
        )
    torch.manual_seed(config.seed)
    engine = engine or Engine.from_folder(config.backbone or _default_backbone())
    check_prefix_len(config, engine)
    train_set = load_word_dataset(config.train, config.labels)
    eval_set = load_word_dataset(config.eval, train_set.labels) if config.eval else None
    max_tokens = min(config.max_length, engine.shape.max_tokens(config.served_prefix_len))
    encoded = EncodedWordSet.build(train_set, engine.encoder.tokenizer, max_tokens)
    model = build_token_model(engine, config, len(train_set.labels))
    steps = _total_steps(config, len(train_set))
    started = time.perf_counter()
    _run_steps(model, encoded, ProblemType.SINGLE_LABEL, config, steps, progress, loss=token_loss)
    seconds = time.perf_counter() - started
    artifact = export_token_artifact(model, train_set.labels, config, engine)
    metrics = evaluate_tokens(engine, artifact, eval_set, max_tokens, progress) if eval_set is not None else {}
    metadata = _metadata(config, train_set, eval_set, steps, seconds, engine, metrics)
    metadata.update(train_words=str(sum(len(w) for w in train_set.words)))
    artifact = replace(artifact, extra_metadata=metadata)
    read_artifact(artifact_to_bytes(artifact), engine.shape)  # what we write must load; raises if not
    return TrainResult(artifact, model, metrics, steps, seconds)


def build_token_model(engine: Engine, config: TrainConfig, num_labels: int) -> PrefixTokenClassifier:
    return build_model(engine, config, num_labels, PrefixTokenClassifier)


def export_token_artifact(
    model: PrefixTokenClassifier, labels: tuple[str, ...], config: TrainConfig, engine: Engine
) -> PrefixArtifact:
    """The SPEC 1b token-head artifact (format 2, or 3 with LoRA; head `token`, single-label): the
    prefix folded once into --dtype, the head in float32, no pooler."""
    return PrefixArtifact(
        **exported_adaptation(model, config),
        classifier_weight=model.classifier.weight.detach().float().clone(),  # [C, hidden]
        classifier_bias=model.classifier.bias.detach().float().clone(),  # [C]
        problem_type=ProblemType.SINGLE_LABEL,
        labels=labels,
        backbone_fingerprint=engine.shape.fingerprint,
        head=HeadKind.TOKEN,
        backbone_family=engine.shape.family,  # from the backbone folder's config.json model_type
    )


def predict_words(
    engine: Engine, artifact: PrefixArtifact, dataset: WordDataset, max_tokens: int, progress: bool = False
) -> list[list[str]]:
    """Each word's predicted label through the serving path (`Engine.score` on the serving encoding):
    the argmax at its first sub-token, `O` when the truncation cut it off."""
    handle = engine.load(artifact)
    texts = dataset.texts()
    encoded = engine.encoder.encode(texts, max_tokens, truncate=True, offsets=True)
    predictions: list[list[str]] = [[] for _ in range(len(dataset))]
    batches = eval_batches([len(e) for e in encoded], EVAL_BATCH_SIZE)
    for indices in tqdm(batches, unit="batch", desc="eval", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        for i, token_scores in zip(indices, engine.score_encoded([(encoded[i], handle) for i in indices])):
            firsts = first_subtokens(encoded[i].offsets, texts[i], len(dataset.words[i]))
            best = [max(range(len(artifact.labels)), key=scores.__getitem__) for scores in token_scores]
            predictions[i] = [OUTSIDE if t is None else artifact.labels[best[t]] for t in firsts]
    return predictions


def evaluate_tokens(
    engine: Engine, artifact: PrefixArtifact, dataset: WordDataset, max_tokens: int, progress: bool = False
) -> dict:
    """Entity-level micro precision / recall / F1 (seqeval's default mode) and word accuracy."""
    predicted = predict_words(engine, artifact, dataset, max_tokens, progress)
    return token_metrics(dataset.tags, predicted, dataset.labels)


def token_metrics(gold: list[list[str]], predicted: list[list[str]], labels: tuple[str, ...]) -> dict:
    words = sum(len(row) for row in gold)
    correct = sum(g == p for gold_row, pred_row in zip(gold, predicted) for g, p in zip(gold_row, pred_row))
    metrics: dict = {"word_accuracy": correct / words}
    if not is_iob2(labels):
        return metrics  # entity scores need IOB2 tags; other label sets are per word (SPEC 1b)
    require_extra("seqeval", "train", "the entity-level evaluation of a token task")
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    metrics.update(
        f1=f1_score(gold, predicted), precision=precision_score(gold, predicted), recall=recall_score(gold, predicted)
    )
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    metrics["f1_per_type"] = {name: float(value["f1-score"]) for name, value in report.items() if " avg" not in name}
    return {name: (float(v) if not isinstance(v, dict) else v) for name, v in metrics.items()}
