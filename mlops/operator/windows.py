"""Windowed increments of the sidecars' counters and the statistical decisions made on them.

Why it exists: sidecars export counters accumulated since they started. Testing those cumulative
counts at every collection has two flaws: a shift in the last 5,000 rows drowns in 500,000 stable
ones (found 0% of the time), and looking again and again at one growing test raises false alarms on
healthy deployments. So the operator keeps, per ModelDeployment and per source (one sidecar URL),
the last counters it saw, and tests only what arrived since:

* **Increments, reset-safe.** ``increment = current - previous`` per counter; if any counter of a
  source went down, the sidecar restarted and its whole current value is the increment (Prometheus'
  ``increase`` rule). The first time a source is seen it only sets the baseline (after an operator
  restart, counts from before are not new).
* **Windows with a minimum size.** Increments accumulate into a drift window until it holds
  ``MIN_DRIFT_WINDOW_ROWS`` rows, and into an accuracy window until it holds
  ``MIN_LABELLED_WINDOW`` labelled predictions; then the window is tested once and emptied. Below
  the minimum nothing is decided ("not enough data", never drift).
* **Levels that survive repeated evaluation.** Each window test runs at a per-evaluation level:
  drift at ``DRIFT_WINDOW_ALPHA`` (5e-5, family-wise over features with Holm) and an accuracy drop at
  ``ACCURACY_WINDOW_ALPHA`` (1e-5, exact one-sided binomial test against the spec's baseline
  accuracy). By the union bound a healthy deployment sets ``Drifting`` with probability at most
  ``n * 5e-5`` over ``n`` window tests (under 1 in 20,000 tests) and raises a CRITICAL accuracy
  alert with probability at most ``n * 1e-5``. docs/statistics.md names the simulations.

The result of the last test of each kind is kept until the next one, so status reflects the latest
evidence rather than flickering between collections. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from mlops.core.drift import detect_drift_from_counts
from mlops.serving.sidecar_metrics import SidecarSnapshot, counts_for_profile, merge_snapshots

DRIFT_WINDOW_ALPHA = 5e-5
ACCURACY_WINDOW_ALPHA = 1e-5
MIN_DRIFT_WINDOW_ROWS = 100
MIN_LABELLED_WINDOW = 100

_FLAT = ("predictions", "errors", "feedback", "feedback_duplicates", "confusion", "latency_sum", "latency_count",
         "feature_bins", "feature_missing", "feature_invalid")
_DRIFT_FIELDS = ("feature_bins", "feature_missing", "feature_invalid")
_ACCURACY_FIELDS = ("confusion", "feedback")


def snapshot_increment(current: SidecarSnapshot, previous: SidecarSnapshot | None) -> tuple[SidecarSnapshot, bool]:
    """``(current - previous, reset)``. With no previous snapshot the increment is empty (a baseline
    only); when any counter went down the source restarted and the increment is ``current``."""
    if previous is None:
        return SidecarSnapshot(model=current.model), False
    out = SidecarSnapshot(model=current.model)
    for name in _FLAT:
        cur, prev = getattr(current, name), getattr(previous, name)
        target = getattr(out, name)
        for key, value in cur.items():
            delta = value - prev.get(key, 0.0)
            if delta < -1e-9:
                return current.copy(), True
            if delta > 0:
                target[key] = delta
        if any(key not in cur and value > 0 for key, value in prev.items()):
            return current.copy(), True
    for version, buckets in current.latency_buckets.items():
        before = previous.latency_buckets.get(version, {})
        for le, value in buckets.items():
            delta = value - before.get(le, 0.0)
            if delta < -1e-9:
                return current.copy(), True
            if delta > 0:
                out.latency_buckets.setdefault(version, {})[le] = delta
    return out, False


@dataclass
class WindowState:
    """Per ModelDeployment: last counters per source, the open windows and the last decisions."""

    sources: dict[str, SidecarSnapshot] = field(default_factory=dict)
    drift_pending: SidecarSnapshot = field(default_factory=SidecarSnapshot)
    accuracy_pending: SidecarSnapshot = field(default_factory=SidecarSnapshot)
    last_drift: dict[str, Any] | None = None
    last_accuracy: dict[str, Any] | None = None
    resets: int = 0
    drift_tests: int = 0
    accuracy_tests: int = 0


def advance(state: WindowState, snapshots: Mapping[str, SidecarSnapshot]) -> SidecarSnapshot:
    """Add what arrived since the last collection (per source) to the open windows; returns it.

    Sources not seen this time are forgotten (a pod that went away; if it comes back with the same
    counters they are a new baseline, never counted twice).
    """
    increments = []
    for source, snap in snapshots.items():
        inc, reset = snapshot_increment(snap, state.sources.get(source))
        state.resets += int(reset)
        state.sources[source] = snap.copy()
        increments.append(inc)
    for source in [s for s in state.sources if s not in snapshots]:
        del state.sources[source]
    increment = merge_snapshots(increments)
    state.drift_pending = merge_snapshots([state.drift_pending, _only(increment, _DRIFT_FIELDS)])
    state.accuracy_pending = merge_snapshots([state.accuracy_pending, _only(increment, _ACCURACY_FIELDS)])
    return increment


def _only(snap: SidecarSnapshot, names: tuple[str, ...]) -> SidecarSnapshot:
    out = SidecarSnapshot(model=snap.model)
    for name in names:
        setattr(out, name, dict(getattr(snap, name)))
    return out


def _rows(counts: Mapping[str, list[int]]) -> int:
    return max((sum(c) for c in counts.values()), default=0)


def evaluate(state: WindowState, profile: Any, baseline_accuracy: float | None) -> dict[str, Any]:
    """Test the windows that are full, empty them, and return the status.metrics keys of the last
    decisions: ``driftScore``, ``driftedFeatures``, ``driftWindowRows`` (last drift test) and
    ``windowAccuracy``, ``windowLabelled``, ``accuracyDropPValue`` (last accuracy test)."""
    if profile is not None:
        counts = counts_for_profile(state.drift_pending, profile)
        rows = _rows(counts) if counts else 0
        if rows >= MIN_DRIFT_WINDOW_ROWS:
            report = detect_drift_from_counts(profile, counts, alpha=DRIFT_WINDOW_ALPHA)
            state.last_drift = {
                "driftScore": float(report.drift_score),
                "driftedFeatures": sorted(report.drifted_features),
                "driftWindowRows": int(rows),
            }
            state.drift_tests += 1
            state.drift_pending = SidecarSnapshot()
    labelled = math.fsum(state.accuracy_pending.confusion.values())
    if baseline_accuracy is not None and labelled >= MIN_LABELLED_WINDOW:
        correct = math.fsum(c for (_v, t, p), c in state.accuracy_pending.confusion.items() if t == p)
        n, k = int(round(labelled)), int(round(correct))
        p_value = float(stats.binomtest(k, n, float(baseline_accuracy), alternative="less").pvalue)
        state.last_accuracy = {"windowAccuracy": k / n, "windowLabelled": n, "accuracyDropPValue": p_value}
        state.accuracy_tests += 1
        state.accuracy_pending = SidecarSnapshot()
    out: dict[str, Any] = {}
    if state.last_drift is not None:
        out.update(state.last_drift)
    if state.last_accuracy is not None:
        out.update(state.last_accuracy)
    return out
