"""Classification metrics agree with scikit-learn's definitions (weighted averages, zero_division=0)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from mlops.core.classification import classification_metrics


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_sklearn_on_random_multiclass_labels(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    k = int(rng.integers(2, 6))
    y_true = rng.integers(0, k, n)
    # predictions sometimes use a class absent from the truth, sometimes miss one
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, k + 1, n))
    ours = classification_metrics(y_true, y_pred)
    assert ours.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert ours.precision == pytest.approx(precision_score(y_true, y_pred, average="weighted", zero_division=0))
    assert ours.recall == pytest.approx(recall_score(y_true, y_pred, average="weighted", zero_division=0))
    assert ours.f1_score == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert ours.correct == int((y_true == y_pred).sum()) and ours.n == n


def test_string_labels_and_int_float_equivalence():
    assert classification_metrics(["a", "b", "a"], ["a", "a", "a"]).accuracy == pytest.approx(2 / 3)
    assert classification_metrics([1, 0, 1], [1.0, 0.0, 0.0]).correct == 2


def test_never_predicted_class_has_zero_precision():
    metrics = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert metrics.precision == pytest.approx(0.5 * 0.5)  # class 0: 2/4 precise, weight 1/2; class 1: 0
    assert metrics.recall == pytest.approx(0.5)


def test_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="rows"):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="zero rows"):
        classification_metrics([], [])
