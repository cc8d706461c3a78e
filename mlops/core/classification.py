"""Classification metrics from labels: accuracy and support-weighted precision, recall and F1.

Why it exists: the monitor computes these on every labelled batch, and importing
``sklearn.metrics`` costs about a second at start-up of the server and sidecar. The definitions
are scikit-learn's (``average="weighted"``, ``zero_division=0``: a class that is never predicted has
precision 0); ``tests/unit/test_production_monitor_metrics.py`` checks the two agree.

The counts (``correct``, ``n``) are returned too, so windows can be pooled exactly by summing
counts instead of averaging ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    n: int
    correct: int
    accuracy: float
    precision: float
    recall: float
    f1_score: float


def classification_metrics(
    true_labels: Sequence[Any] | np.ndarray, predictions: Sequence[Any] | np.ndarray
) -> ClassificationMetrics:
    """Metrics of ``predictions`` against ``true_labels`` (same length, at least one row).

    Labels may be numbers or strings; ``1`` and ``1.0`` are the same class.
    """
    y_true = np.asarray(true_labels)
    y_pred = np.asarray(predictions)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError("true_labels and predictions must be one-dimensional")
    if len(y_true) != len(y_pred):
        raise ValueError(f"true_labels has {len(y_true)} rows but predictions has {len(y_pred)}")
    n = len(y_true)
    if n == 0:
        raise ValueError("cannot compute classification metrics of zero rows")
    if y_true.dtype.kind in "biuf" and y_pred.dtype.kind in "biuf":
        both = np.concatenate([y_true.astype(float), y_pred.astype(float)])
    else:
        both = np.concatenate([y_true.astype(str), y_pred.astype(str)])
    classes, codes = np.unique(both, return_inverse=True)
    t, p = codes[:n], codes[n:]
    k = len(classes)
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    precision_c = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall_c = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision_c + recall_c
    f1_c = np.divide(2 * precision_c * recall_c, denom, out=np.zeros(k), where=denom > 0)
    weights = support / n
    correct = int(tp.sum())
    return ClassificationMetrics(
        n=n,
        correct=correct,
        accuracy=correct / n,
        precision=float(weights @ precision_c),
        recall=float(weights @ recall_c),
        f1_score=float(weights @ f1_c),
    )
