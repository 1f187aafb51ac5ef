"""Metrics against values worked out by hand (scikit-learn gives the same; it is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import multi_label_metrics, regression_metrics, single_label_metrics


def test_single_label():
    gold = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    m = single_label_metrics(gold, pred, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(0.6)
    # F1: a = 2*1/(2+1+1) = 0.5, b = 2*2/(4+1+0) = 0.8, c = 0
    assert m["f1_per_label"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert m["macro_f1"] == pytest.approx(1.3 / 3)


def test_single_label_macro_ignores_labels_absent_from_gold_and_predictions():
    m = single_label_metrics(np.array([0, 1]), np.array([0, 1]), ("a", "b", "never"))
    assert m["macro_f1"] == pytest.approx(1.0)


def test_multi_label():
    gold = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    pred = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    m = multi_label_metrics(gold, pred, ("x", "y"))
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["f1_per_label"] == pytest.approx({"x": 1.0, "y": 0.0})
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_regression_with_ties():
    gold = np.array([1.0, 2.0, 2.0, 4.0])
    pred = np.array([1.5, 2.5, 2.0, 3.0])
    m = regression_metrics(gold, pred)
    a, b = gold - gold.mean(), pred - pred.mean()
    assert m["pearson"] == pytest.approx((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))
    # ranks: gold [1, 2.5, 2.5, 4], pred [1, 3, 2, 4]
    ra, rb = np.array([1, 2.5, 2.5, 4]) - 2.5, np.array([1, 3, 2, 4]) - 2.5
    assert m["spearman"] == pytest.approx((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))
    assert m["mse"] == pytest.approx((0.25 + 0.25 + 0 + 1) / 4)
