"""The monitoring sidecar's counters as Prometheus metrics: exposition, parsing and recording.

The counts themselves, how they merge and what is computed from them live in
:mod:`mlops.core.counters` (pure, shared with the operator) and are re-exported here for
compatibility. This module adds what needs prometheus_client or a lock:

- ``metric_families`` / :class:`SnapshotCollector` / ``render_metrics``: a snapshot as Prometheus
  metric families (a custom collector on the sidecar's registry);
- ``parse_metrics``: a sidecar's ``/metrics`` text back into a snapshot (what the collector merges);
- :class:`SidecarRecorder`: the accumulator the sidecar process feeds, guarded by a lock because the
  sidecar's event handler and its scrapes run concurrently; ``profile_binner`` bins features on
  the baseline profile's bins.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mlops.core.arm_counts import ArmRecorder, ArmTable
from mlops.core.arm_tag import tag_from_prediction_id
from mlops.core.counters import (  # noqa: F401 - re-exported: the public home used to be this module
    CONFUSION,
    ERRORS,
    FEATURE_BIN,
    FEATURE_INVALID,
    FEATURE_MISSING,
    FEEDBACK,
    FEEDBACK_DUPLICATES,
    LATENCY,
    LATENCY_BUCKETS,
    PREDICTIONS,
    SidecarSnapshot,
    _add,
    classification_from_confusion,
    counts_for_profile,
    data_quality_from_snapshot,
    drift_from_snapshot,
    histogram_quantile,
    label_str,
    merge_snapshots,
    summarize,
)

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


EXPERIMENT_PREDICTIONS = "mlops_experiment_predictions_total"
EXPERIMENT_ERRORS = "mlops_experiment_errors_total"
EXPERIMENT_FEEDBACK = "mlops_experiment_feedback_total"
EXPERIMENT_CORRECT = "mlops_experiment_correct_total"
EXPERIMENT_USERS = "mlops_experiment_users"


def arm_metric_families(model: str | None, arms: ArmTable) -> Iterator[Any]:
    """Per-arm counters for dashboards (``experiment``, ``phase``, ``arm`` labels; bounded). The
    operator reads the full per-arm state, sketches and per-user sums included, from ``/v1/arms``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model", "experiment", "phase", "arm"]
    families = {
        "predictions": CounterMetricFamily(EXPERIMENT_PREDICTIONS.removesuffix("_total"),
                                           "Predictions per experiment arm (in-segment users only).", labels=labels),
        "errors": CounterMetricFamily(EXPERIMENT_ERRORS.removesuffix("_total"), "Failed predictions per arm.",
                                      labels=labels),
        "labelled": CounterMetricFamily(EXPERIMENT_FEEDBACK.removesuffix("_total"), "True outcomes per arm.",
                                        labels=labels),
        "correct": CounterMetricFamily(EXPERIMENT_CORRECT.removesuffix("_total"), "Correct predictions per arm.",
                                       labels=labels),
    }
    users = GaugeMetricFamily(EXPERIMENT_USERS, "Distinct users per arm seen by this sidecar (HyperLogLog estimate).",
                              labels=labels)
    for (experiment, phase, arm), counts in sorted(arms.items()):
        values = [model or "", experiment, str(phase), arm]
        for attr, family in families.items():
            family.add_metric(values, getattr(counts, attr))
        users.add_metric(values, round(counts.user_sketch.estimate()))
    yield from families.values()
    yield users


class SnapshotCollector:
    """A prometheus_client collector exposing a recorder's current snapshot at scrape time."""

    def __init__(self, source: Any) -> None:
        self._source = source  # anything with .snapshot() -> SidecarSnapshot

    def collect(self) -> Iterator[Any]:
        snapshot = self._source.snapshot()
        yield from metric_families(snapshot)
        arms = getattr(self._source, "arms", None)
        if arms is not None:
            yield from arm_metric_families(snapshot.model, arms())


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
        self._arms = ArmRecorder()

    def arms(self) -> ArmTable:
        """Per experiment-arm counts (``mlops.core.arm_counts``) of the tagged events seen so far."""
        with self._lock:
            return self._arms.snapshot()

    def arm_state(self) -> dict[str, Any]:
        """The per-arm state in full (``ArmRecorder.to_dict``), for a sidecar that persists it on exit."""
        with self._lock:
            return self._arms.to_dict()

    def restore_arms(self, state: Mapping[str, Any]) -> None:
        """Continue from a persisted ``arm_state`` (ValueError when it is malformed)."""
        restored = ArmRecorder.from_dict(state, max_users=self._arms.max_users)
        with self._lock:
            self._arms = restored

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
        tagged = []
        for event in events:
            tag = tag_from_prediction_id(_get(event, "prediction_id"))
            if tag is not None:
                tagged.append((tag, bool(_get(event, "error")), float(_get(event, "latency_seconds") or 0.0)))
        with self._lock:
            for tag, error, seconds in tagged:
                self._arms.prediction((tag.experiment, tag.phase, tag.arm), tag.user, error=error,
                                      latency_seconds=seconds)
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
                true, predicted = label_str(_get(event, "true_label")), label_str(_get(event, "prediction"))
                _add(snap.confusion, (version, true, predicted), 1.0)
                tag = tag_from_prediction_id(pid)
                if tag is not None:
                    self._arms.outcome((tag.experiment, tag.phase, tag.arm), tag.user, correct=true == predicted)


def _get(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, Mapping) else getattr(event, name)
