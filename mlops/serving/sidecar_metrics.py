"""Metrics that merge: the monitoring sidecar's counters, how they are exposed, parsed back and summarized.

A model Deployment runs N replicas, each with its own sidecar; the operator scrapes all of them and
must report one set of numbers. Averages of averages are wrong (a replica that saw 10 predictions
would weigh as much as one that saw 10,000), so a sidecar only ever exports *counts*:

- predictions, errors and feedback per model version;
- confusion counts per (version, true label, predicted label) -> accuracy, weighted precision,
  recall and F1 are computed from the merged confusion matrix;
- a fixed-bucket latency histogram (the same buckets everywhere) -> quantiles from merged buckets;
- per feature, counts per bin of the *baseline profile's* bins, plus missing and invalid values ->
  drift is tested on the merged bin counts (``mlops.core.drift.detect_drift_from_counts``) and data
  quality is a ratio of merged counts.

:class:`SidecarSnapshot` is that state as plain dictionaries. ``parse_metrics`` reads it back from a
Prometheus text exposition, ``merge_snapshots`` adds snapshots, ``summarize`` turns one into the
numbers the operator writes into status. Merging is addition, so ``summarize(merge(a, b))`` equals
the summary of one sidecar that had received the traffic of both.

Nothing here does I/O or reads a clock; :class:`SidecarRecorder` (the accumulator the sidecar process
feeds) is guarded by a lock because the sidecar's event handler and its scrapes run concurrently.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Fixed latency buckets (seconds). Every sidecar exports exactly these, so merged buckets stay exact.
# Dense below 50 ms, where a fast model server lives, so p50/p95 interpolate within a narrow bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.0, 5.0, 10.0, math.inf,
)

PREDICTIONS = "mlops_predictions_total"
ERRORS = "mlops_prediction_errors_total"
FEEDBACK = "mlops_feedback_total"
FEEDBACK_DUPLICATES = "mlops_feedback_duplicates_total"
CONFUSION = "mlops_confusion_total"
LATENCY = "mlops_prediction_latency_seconds"
FEATURE_BIN = "mlops_feature_bin_total"
FEATURE_MISSING = "mlops_feature_missing_total"
FEATURE_INVALID = "mlops_feature_invalid_total"



def label_str(value: Any) -> str:
    """One spelling per label, so ``1``, ``1.0``, ``"1"`` and ``True`` meet in the same confusion cell."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        try:
            as_float = float(value)
        except ValueError:
            return value
        if as_float.is_integer() and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
            return str(int(as_float))
        return value
    return str(value)


def _add(target: dict, key: Any, amount: float) -> None:
    target[key] = target.get(key, 0.0) + amount


@dataclass
class SidecarSnapshot:
    """Counts seen by one sidecar (or the sum of several). Keys are label tuples; values are counts.

    ``latency_buckets[version]`` maps each bucket's upper bound (``le``, ``math.inf`` last) to the
    *cumulative* count, as Prometheus exports it.
    """

    model: str | None = None
    predictions: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, float] = field(default_factory=dict)
    feedback_duplicates: dict[str, float] = field(default_factory=dict)
    confusion: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (version, true, predicted)
    latency_buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: dict[str, float] = field(default_factory=dict)
    feature_bins: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (version, feature, bin)
    feature_missing: dict[tuple[str, str], float] = field(default_factory=dict)  # (version, feature)
    feature_invalid: dict[tuple[str, str], float] = field(default_factory=dict)  # (version, feature)

    def versions(self) -> list[str]:
        seen = set(self.predictions) | set(self.feedback) | set(self.latency_count)
        seen |= {key[0] for key in self.confusion}
        return sorted(seen)

    def for_version(self, version: str) -> SidecarSnapshot:
        """The part of the snapshot about one model version (e.g. one arm of an experiment)."""
        return SidecarSnapshot(
            model=self.model,
            predictions={k: v for k, v in self.predictions.items() if k == version},
            errors={k: v for k, v in self.errors.items() if k == version},
            feedback={k: v for k, v in self.feedback.items() if k == version},
            feedback_duplicates={k: v for k, v in self.feedback_duplicates.items() if k == version},
            confusion={k: v for k, v in self.confusion.items() if k[0] == version},
            latency_buckets={k: dict(v) for k, v in self.latency_buckets.items() if k == version},
            latency_sum={k: v for k, v in self.latency_sum.items() if k == version},
            latency_count={k: v for k, v in self.latency_count.items() if k == version},
            feature_bins={k: v for k, v in self.feature_bins.items() if k[0] == version},
            feature_missing={k: v for k, v in self.feature_missing.items() if k[0] == version},
            feature_invalid={k: v for k, v in self.feature_invalid.items() if k[0] == version},
        )

    def copy(self) -> SidecarSnapshot:
        return merge_snapshots([self])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuple keys joined with '|'), for debugging and the /summary page."""

        def flat(d: Mapping) -> dict[str, float]:
            return {("|".join(k) if isinstance(k, tuple) else k): v for k, v in sorted(d.items())}

        return {
            "model": self.model,
            "predictions": flat(self.predictions),
            "errors": flat(self.errors),
            "feedback": flat(self.feedback),
            "confusion": flat(self.confusion),
            "latency_count": flat(self.latency_count),
            "latency_sum": flat(self.latency_sum),
        }


def merge_snapshots(snapshots: Iterable[SidecarSnapshot]) -> SidecarSnapshot:
    """Add snapshots (replicas, or one sidecar before and after a restart). Pure addition: exact."""
    merged = SidecarSnapshot()
    models: set[str] = set()
    for snap in snapshots:
        if snap.model:
            models.add(snap.model)
        for name in ("predictions", "errors", "feedback", "feedback_duplicates", "confusion", "latency_sum",
                     "latency_count", "feature_bins", "feature_missing", "feature_invalid"):
            target = getattr(merged, name)
            for key, value in getattr(snap, name).items():
                _add(target, key, value)
        for version, buckets in snap.latency_buckets.items():
            target = merged.latency_buckets.setdefault(version, {})
            for le, count in buckets.items():
                _add(target, le, count)
    merged.model = models.pop() if len(models) == 1 else None
    return merged


# --------------------------------------------------------------------------------------------------
# Exposition: snapshot -> Prometheus metric families (a custom collector on the sidecar's registry)
# --------------------------------------------------------------------------------------------------


def _fmt_le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def metric_families(snapshot: SidecarSnapshot) -> Iterator[Any]:
    """Yield prometheus_client metric families for ``snapshot`` (used by :class:`SnapshotCollector`)."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    model = snapshot.model or ""

    def counter(name: str, doc: str, labels: Sequence[str], items: Mapping) -> CounterMetricFamily:
        family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["model", *labels])
        for key, value in sorted(items.items()):
            key = key if isinstance(key, tuple) else (key,)
            family.add_metric([model, *key], value)
        return family

    yield counter(PREDICTIONS, "Predictions served (including failed ones).", ["version"], snapshot.predictions)
    yield counter(ERRORS, "Predictions that failed.", ["version"], snapshot.errors)
    yield counter(FEEDBACK, "True outcomes received for predictions.", ["version"], snapshot.feedback)
    yield counter(FEEDBACK_DUPLICATES, "Feedback ignored because its prediction id was already labelled.",
                  ["version"], snapshot.feedback_duplicates)
    yield counter(CONFUSION, "Labelled predictions by (true, predicted) label.",
                  ["version", "true_label", "predicted_label"], snapshot.confusion)
    latency = HistogramMetricFamily(LATENCY, "Prediction latency measured by the model server.",
                                    labels=["model", "version"])
    for version in sorted(snapshot.latency_buckets):
        buckets = sorted(snapshot.latency_buckets[version].items())
        latency.add_metric([model, version], [(_fmt_le(le), count) for le, count in buckets],
                           sum_value=snapshot.latency_sum.get(version, 0.0))
    yield latency
    yield counter(FEATURE_BIN, "Feature values per bin of the baseline profile's bins.",
                  ["version", "feature", "bin"], snapshot.feature_bins)
    yield counter(FEATURE_MISSING, "Feature values that were absent or null.", ["version", "feature"],
                  snapshot.feature_missing)
    yield counter(FEATURE_INVALID, "Feature values of the wrong type (e.g. text for a numeric feature).",
                  ["version", "feature"], snapshot.feature_invalid)


class SnapshotCollector:
    """A prometheus_client collector exposing a recorder's current snapshot at scrape time."""

    def __init__(self, source: Any) -> None:
        self._source = source  # anything with .snapshot() -> SidecarSnapshot

    def collect(self) -> Iterator[Any]:
        yield from metric_families(self._source.snapshot())


def render_metrics(snapshot: SidecarSnapshot) -> str:
    """The Prometheus text exposition of ``snapshot`` alone (no process metrics)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(_Fixed(snapshot)))
    return generate_latest(registry).decode("utf-8")


class _Fixed:
    def __init__(self, snapshot: SidecarSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> SidecarSnapshot:
        return self._snapshot


# --------------------------------------------------------------------------------------------------
# Parsing: Prometheus text -> snapshot
# --------------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> SidecarSnapshot:
    """Read a sidecar's ``/metrics`` text back into a snapshot. Unknown metrics are ignored, so the
    text may also contain process or other collectors' metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = SidecarSnapshot()
    models: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.startswith("mlops_"):
                continue
            if labels.get("model"):
                models.add(labels["model"])
            version = labels.get("version", "")
            if name == PREDICTIONS:
                _add(snap.predictions, version, value)
            elif name == ERRORS:
                _add(snap.errors, version, value)
            elif name == FEEDBACK:
                _add(snap.feedback, version, value)
            elif name == FEEDBACK_DUPLICATES:
                _add(snap.feedback_duplicates, version, value)
            elif name == CONFUSION:
                _add(snap.confusion, (version, labels["true_label"], labels["predicted_label"]), value)
            elif name == LATENCY + "_bucket":
                _add(snap.latency_buckets.setdefault(version, {}), float(labels["le"]), value)
            elif name == LATENCY + "_sum":
                _add(snap.latency_sum, version, value)
            elif name == LATENCY + "_count":
                _add(snap.latency_count, version, value)
            elif name == FEATURE_BIN:
                _add(snap.feature_bins, (version, labels["feature"], labels["bin"]), value)
            elif name == FEATURE_MISSING:
                _add(snap.feature_missing, (version, labels["feature"]), value)
            elif name == FEATURE_INVALID:
                _add(snap.feature_invalid, (version, labels["feature"]), value)
    snap.model = models.pop() if len(models) == 1 else None
    return snap


# --------------------------------------------------------------------------------------------------
# Summary: merged counts -> the numbers in ModelDeployment status
# --------------------------------------------------------------------------------------------------


def classification_from_confusion(confusion: Mapping[tuple[str, str], float]) -> dict[str, float | None]:
    """Accuracy and support-weighted precision/recall/F1 (sklearn's ``average="weighted"``,
    ``zero_division=0``) from ``{(true, predicted): count}``."""
    total = math.fsum(confusion.values())
    if total <= 0:
        return {"accuracy": None, "precision": None, "recall": None, "f1": None}
    labels = sorted({t for t, _ in confusion} | {p for _, p in confusion})
    support = dict.fromkeys(labels, 0.0)
    predicted = dict.fromkeys(labels, 0.0)
    correct = dict.fromkeys(labels, 0.0)
    for (true, pred), count in confusion.items():
        support[true] += count
        predicted[pred] += count
        if true == pred:
            correct[true] += count
    precision = recall = f1 = 0.0
    for label in labels:
        if support[label] == 0:
            continue  # weight 0 in the weighted average
        p = correct[label] / predicted[label] if predicted[label] else 0.0
        r = correct[label] / support[label]
        f = 2 * p * r / (p + r) if (p + r) else 0.0
        weight = support[label] / total
        precision += weight * p
        recall += weight * r
        f1 += weight * f
    return {"accuracy": math.fsum(correct.values()) / total, "precision": precision, "recall": recall, "f1": f1}


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding quantile q.
    A quantile in the +Inf bucket returns the largest finite bound."""
    if not cumulative:
        return None
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    counts = [cumulative[b] for b in bounds]
    index = bisect.bisect_left(counts, rank)
    index = min(index, len(bounds) - 1)
    upper = bounds[index]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = bounds[index - 1] if index > 0 else 0.0
    below = counts[index - 1] if index > 0 else 0.0
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def _bin_counts_by_feature(snapshot: SidecarSnapshot) -> dict[str, dict[str, float]]:
    per_feature: dict[str, dict[str, float]] = {}
    for (_version, feature, bin_label), count in snapshot.feature_bins.items():
        _add(per_feature.setdefault(feature, {}), bin_label, count)
    return per_feature


def drift_from_snapshot(snapshot: SidecarSnapshot, profile: Any, **kwargs: Any) -> Any:
    """Run the drift engine's ``detect_drift_from_counts`` on the snapshot's merged bin counts.
    Returns its DriftReport, or None when nothing was binned yet."""
    from mlops.core.drift import detect_drift_from_counts

    counts = counts_for_profile(snapshot, profile)
    if not counts:
        return None
    return detect_drift_from_counts(profile, counts, **kwargs)


def counts_for_profile(snapshot: SidecarSnapshot, profile: Any) -> dict[str, list[int]]:
    """The snapshot's counts in the layout of ``profile.bin_counts(frame)`` (``mlops.core.profile``):
    per profile column, one count per bin and the missing bucket last (values of the wrong type count
    as missing there, as the profile does). Empty when nothing was binned."""
    per_feature = _bin_counts_by_feature(snapshot)
    missing: dict[str, float] = {}
    for (_version, feature), count in [*snapshot.feature_missing.items(), *snapshot.feature_invalid.items()]:
        _add(missing, feature, count)
    if not per_feature and not missing:
        return {}
    out: dict[str, list[int]] = {}
    for feature, column in profile.columns.items():
        bins = per_feature.get(feature, {})
        n_bins = len(column.counts) - 1
        out[feature] = [int(round(bins.get(str(i), 0.0))) for i in range(n_bins)]
        out[feature].append(int(round(missing.get(feature, 0.0))))
    return out


def profile_binner(profile: Any) -> Any:
    """A binner for :class:`SidecarRecorder` on the drift engine's ``BaselineProfile`` bins.

    Returns ``rows -> (bins {(feature, bin_index): n}, missing {feature: n}, invalid {feature: n})``;
    bin indexes follow the profile's count layout without its trailing missing bucket. Features the
    profile does not know are ignored (they cannot drift against a baseline that lacks them).
    """
    import numpy as np
    import pandas as pd

    from mlops.core.profile import as_numbers

    columns = list(profile.columns.items())
    numeric = [name for name, column in columns if column.kind == "numeric"]

    def binner(rows: Sequence[Mapping[str, Any]]) -> tuple[dict, dict, dict]:
        bins: dict[tuple[str, str], int] = {}
        missing: dict[str, int] = {}
        invalid: dict[str, int] = {}
        matrix = None
        if numeric:
            try:  # the common case: every numeric cell is a number or null -> one float matrix
                matrix = np.array([[row.get(name) for name in numeric] for row in rows], dtype=float)
            except (TypeError, ValueError):
                matrix = None  # some cell is text: bin column by column, counting wrong types
        position = {name: j for j, name in enumerate(numeric)}
        for name, column in columns:
            wrong = 0
            if matrix is not None and name in position:
                series = pd.Series(matrix[:, position[name]])
            else:
                series = pd.Series([row.get(name) for row in rows], dtype=object)
                if column.kind == "numeric":
                    wrong = as_numbers(series)[2]
            counts = column.count(series)
            for index, count in enumerate(counts[:-1]):
                if count:
                    bins[(name, str(index))] = int(count)
            missing[name] = int(counts[-1]) - wrong
            invalid[name] = wrong
        return bins, missing, invalid

    return binner


def data_quality_from_snapshot(snapshot: SidecarSnapshot, profile: Any = None) -> dict[str, float | None]:
    """Data quality from counts, with ``mlops.core.quality.assess_data_quality``'s formula::

        score = (1 - excess_missing) * (1 - out_of_range_rate) * (1 - wrong_type_rate)

    ``missing_rate`` = missing cells / cells (its excess over the baseline's rate counts);
    ``out_of_range_rate`` = numeric values below the baseline min (the underflow bin) or above its
    max (the overflow bin), plus categories unseen in a baseline whose "other" bucket was empty, over
    valid values; ``wrong_type_rate`` = non-numbers in numeric columns over non-missing numeric cells.
    Duplicate rows cannot be known from counts, so that factor is left out. Without a profile only
    missing and wrong-type cells count. None when nothing was counted.
    """
    per_feature = _bin_counts_by_feature(snapshot)
    missing_by: dict[str, float] = {}
    invalid_by: dict[str, float] = {}
    for (_version, feature), count in snapshot.feature_missing.items():
        _add(missing_by, feature, count)
    for (_version, feature), count in snapshot.feature_invalid.items():
        _add(invalid_by, feature, count)
    features = set(per_feature) | set(missing_by) | set(invalid_by)
    if profile is not None:
        features = set(profile.columns)
    missing = math.fsum(missing_by.get(f, 0.0) for f in features)
    wrong = math.fsum(invalid_by.get(f, 0.0) for f in features)
    valid = math.fsum(math.fsum(per_feature.get(f, {}).values()) for f in features)
    cells = valid + missing + wrong
    if cells <= 0:
        return {"score": None, "missing_rate": None, "out_of_range_rate": None, "wrong_type_rate": None}
    out_of_range = 0.0
    numeric_non_missing = 0.0
    base_missing = 0.0
    if profile is not None:
        base_cells = sum(c.n for c in profile.columns.values())
        base_missing = sum(c.missing for c in profile.columns.values()) / base_cells if base_cells else 0.0
        for name, column in profile.columns.items():
            bins = per_feature.get(name, {})
            if column.kind == "numeric":
                numeric_non_missing += math.fsum(bins.values()) + invalid_by.get(name, 0.0)
                if column.min is not None and column.max is not None:
                    out_of_range += bins.get("0", 0.0) + bins.get(str(len(column.edges)), 0.0)
            elif column.counts[-2] == 0:
                out_of_range += bins.get(str(len(column.categories)), 0.0)
    else:
        numeric_non_missing = valid + wrong
    missing_rate = missing / cells
    out_of_range_rate = out_of_range / valid if valid else 0.0
    wrong_type_rate = wrong / numeric_non_missing if numeric_non_missing else 0.0
    score = (1 - max(0.0, missing_rate - base_missing)) * (1 - out_of_range_rate) * (1 - wrong_type_rate)
    return {
        "score": min(1.0, max(0.0, score)),
        "missing_rate": missing_rate,
        "out_of_range_rate": out_of_range_rate,
        "wrong_type_rate": wrong_type_rate,
    }


def _seconds_to_ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def summarize(
    snapshot: SidecarSnapshot,
    profile: Any = None,
    baseline_accuracy: float | None = None,
    *,
    drift_alpha: float = 0.05,
) -> dict[str, Any]:
    """The numbers the operator reports, all computed from (merged) counts.

    Keys: predictions, errors, feedback, accuracy, precision, recall, f1 (None until feedback
    arrives), latency_p50_ms, latency_p95_ms, latency_p99_ms, error_rate, drift_score,
    drifted_features, feature_drift_detected (None without a profile or binned data), data_quality,
    missing_rate, baseline_accuracy, accuracy_drop, and ``versions``: per version the raw counts an
    A/B analysis needs (predictions, errors, feedback, correct, latency sum/count).
    """
    predictions = math.fsum(snapshot.predictions.values())
    errors = math.fsum(snapshot.errors.values())
    feedback = math.fsum(snapshot.feedback.values())
    confusion: dict[tuple[str, str], float] = {}
    for (_version, true, pred), count in snapshot.confusion.items():
        _add(confusion, (true, pred), count)
    scores = classification_from_confusion(confusion)
    latency: dict[float, float] = {}
    for buckets in snapshot.latency_buckets.values():
        for le, count in buckets.items():
            _add(latency, le, count)

    drift_score: float | None = None
    drifted: list[str] = []
    drift_detected: bool | None = None
    if profile is not None:
        report = drift_from_snapshot(snapshot, profile, alpha=drift_alpha)
        if report is not None:
            drift_score = float(report.drift_score)
            drifted = sorted(report.drifted_features)
            drift_detected = bool(report.feature_drift_detected)
    quality = data_quality_from_snapshot(snapshot, profile)

    versions: dict[str, dict[str, float]] = {}
    for version in snapshot.versions():
        correct = math.fsum(c for (v, t, p), c in snapshot.confusion.items() if v == version and t == p)
        versions[version] = {
            "predictions": snapshot.predictions.get(version, 0.0),
            "errors": snapshot.errors.get(version, 0.0),
            "feedback": snapshot.feedback.get(version, 0.0),
            "correct": correct,
            "latency_sum_seconds": snapshot.latency_sum.get(version, 0.0),
            "latency_count": snapshot.latency_count.get(version, 0.0),
        }

    accuracy = scores["accuracy"]
    return {
        "model": snapshot.model,
        "predictions": int(round(predictions)),
        "errors": int(round(errors)),
        "feedback": int(round(feedback)),
        "accuracy": accuracy,
        "precision": scores["precision"],
        "recall": scores["recall"],
        "f1": scores["f1"],
        "baseline_accuracy": baseline_accuracy,
        "accuracy_drop": (baseline_accuracy - accuracy)
        if (baseline_accuracy is not None and accuracy is not None) else None,
        "latency_p50_ms": _seconds_to_ms(histogram_quantile(0.50, latency)),
        "latency_p95_ms": _seconds_to_ms(histogram_quantile(0.95, latency)),
        "latency_p99_ms": _seconds_to_ms(histogram_quantile(0.99, latency)),
        "error_rate": (errors / predictions) if predictions > 0 else None,
        "drift_score": drift_score,
        "drifted_features": drifted,
        "feature_drift_detected": drift_detected,
        "data_quality": quality["score"],
        "missing_rate": quality["missing_rate"],
        "out_of_range_rate": quality["out_of_range_rate"],
        "wrong_type_rate": quality["wrong_type_rate"],
        "versions": versions,
    }


# --------------------------------------------------------------------------------------------------
# Recording: events -> counts (what the sidecar process does with each POST /v1/events)
# --------------------------------------------------------------------------------------------------


class SidecarRecorder:
    """Accumulates prediction and feedback events into a :class:`SidecarSnapshot`.

    ``binner(version_rows) -> {feature: {bin_label: count}}`` bins features on the baseline profile;
    :func:`profile_binner` builds one from the drift engine's profile. Feedback for a prediction id
    already labelled (by this sidecar) is counted as a duplicate, not twice.
    """

    def __init__(self, model_name: str | None = None, binner: Any = None, *,
                 feature_names: Sequence[str] | None = None, dedupe_capacity: int = 200_000,
                 claim: Any = None) -> None:
        self._lock = threading.Lock()
        self._snap = SidecarSnapshot(model=model_name)
        self._binner = binner
        self._features = list(feature_names) if feature_names is not None else None
        self._seen_feedback: OrderedDict[str, None] = OrderedDict()
        self._dedupe_capacity = dedupe_capacity
        # claim([(prediction id, label)]) -> [first time?]: a durable ledger (injected by the sidecar
        # process); without one, the last ``dedupe_capacity`` ids are remembered in memory.
        self._claim = claim

    def snapshot(self) -> SidecarSnapshot:
        with self._lock:
            return self._snap.copy()

    def record_predictions(self, events: Sequence[Any]) -> None:
        """``events``: objects or dicts with the PredictionEvent fields."""
        if not events:
            return
        by_version: dict[str, list[Any]] = {}
        for event in events:
            by_version.setdefault(_get(event, "model_version"), []).append(event)
        binned: dict[str, tuple[dict, dict, dict]] = {}  # version -> (bins, missing, invalid)
        if self._binner is not None:
            for version, group in by_version.items():
                binned[version] = self._binner([_get(e, "features") or {} for e in group])
        with self._lock:
            snap = self._snap
            for version, group in by_version.items():
                _add(snap.predictions, version, float(len(group)))
                n_errors = sum(1 for e in group if _get(e, "error"))
                if n_errors:
                    _add(snap.errors, version, float(n_errors))
                buckets = snap.latency_buckets.setdefault(version, dict.fromkeys(LATENCY_BUCKETS, 0.0))
                per_bucket = [0] * len(LATENCY_BUCKETS)
                total = 0.0
                for event in group:
                    seconds = max(float(_get(event, "latency_seconds") or 0.0), 0.0)
                    total += seconds
                    per_bucket[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                running = 0
                for le, count in zip(LATENCY_BUCKETS, per_bucket, strict=True):
                    running += count
                    buckets[le] = buckets.get(le, 0.0) + running
                _add(snap.latency_sum, version, total)
                _add(snap.latency_count, version, float(len(group)))
                if version in binned:
                    bins, missing, invalid = binned[version]
                    for (feature, bin_label), count in bins.items():
                        _add(snap.feature_bins, (version, feature, bin_label), float(count))
                    for feature, count in missing.items():
                        if count:
                            _add(snap.feature_missing, (version, feature), float(count))
                    for feature, count in invalid.items():
                        if count:
                            _add(snap.feature_invalid, (version, feature), float(count))

    def record_feedback(self, events: Sequence[Any]) -> None:
        """``events``: objects or dicts with the FeedbackEvent fields."""
        firsts = (self._claim([(_get(e, "prediction_id"), label_str(_get(e, "true_label"))) for e in events])
                  if self._claim is not None and events else None)
        with self._lock:
            snap = self._snap
            for i, event in enumerate(events):
                version = _get(event, "model_version")
                pid = _get(event, "prediction_id")
                if firsts is not None:
                    duplicate = not firsts[i]
                else:
                    duplicate = pid in self._seen_feedback
                    if not duplicate:
                        self._seen_feedback[pid] = None
                        if len(self._seen_feedback) > self._dedupe_capacity:
                            self._seen_feedback.popitem(last=False)
                if duplicate:
                    _add(snap.feedback_duplicates, version, 1.0)
                    continue
                _add(snap.feedback, version, 1.0)
                key = (version, label_str(_get(event, "true_label")), label_str(_get(event, "prediction")))
                _add(snap.confusion, key, 1.0)


def _get(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, Mapping) else getattr(event, name)
