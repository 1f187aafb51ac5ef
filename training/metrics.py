"""Evaluation metrics, in numpy only (scikit-learn is not a dependency of the server).

Single-label: accuracy, macro-F1 over the labels present in the gold or the predictions (as
scikit-learn's `f1_score(average="macro")`), F1 per label. Multi-label (threshold 0.5, as the
server's `labels`): exact-match accuracy, micro- and macro-F1, F1 per label. Regression: Pearson,
Spearman (average ranks for ties) and mean squared error.
"""

from __future__ import annotations

import numpy as np


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)


def single_label_metrics(gold: np.ndarray, pred: np.ndarray, labels: tuple[str, ...]) -> dict:
    """`gold`, `pred`: [N] label indices."""
    C = len(labels)
    gold_hot = np.eye(C, dtype=bool)[gold]  # [N, C]
    pred_hot = np.eye(C, dtype=bool)[pred]  # [N, C]
    tp, fp, fn = _counts(gold_hot, pred_hot)
    f1 = _f1(tp, fp, fn)
    present = gold_hot.any(axis=0) | pred_hot.any(axis=0)  # [C]
    return {
        "accuracy": float((gold == pred).mean()),
        "macro_f1": float(f1[present].mean()),
        "f1_per_label": {name: float(value) for name, value in zip(labels, f1)},
    }


def multi_label_metrics(gold: np.ndarray, pred: np.ndarray, labels: tuple[str, ...]) -> dict:
    """`gold`, `pred`: [N, C] booleans."""
    tp, fp, fn = _counts(gold, pred)
    f1 = _f1(tp, fp, fn)
    present = gold.any(axis=0) | pred.any(axis=0)  # [C]
    micro = _f1(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]
    return {
        "accuracy": float((gold == pred).all(axis=1).mean()),  # exact match
        "micro_f1": float(micro),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "f1_per_label": {name: float(value) for name, value in zip(labels, f1)},
    }


def regression_metrics(gold: np.ndarray, pred: np.ndarray) -> dict:
    """`gold`, `pred`: [N] values."""
    gold, pred = gold.astype(float), pred.astype(float)
    return {
        "pearson": _pearson(gold, pred),
        "spearman": _pearson(_average_ranks(gold), _average_ranks(pred)),
        "mse": float(((gold - pred) ** 2).mean()),
    }


def _counts(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = (gold & pred).sum(axis=0).astype(float)  # [C]
    fp = (~gold & pred).sum(axis=0).astype(float)  # [C]
    fn = (gold & ~pred).sum(axis=0).astype(float)  # [C]
    return tp, fp, fn


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # ties share their mean rank
        start = end + 1
    return ranks
