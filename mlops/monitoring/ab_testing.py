"""The A/B testing API of the user's guide: create, run, analyse and stop experiments between two
model versions.

Why it exists: it is the stateful facade users call from Python and the model server embeds. The
rules live in ``mlops.core`` (assignment, segments, statistics); the state lives in SQLite
(``mlops.store.ab_store``); this module wires them with an injected clock.

Behaviour worth knowing (docs/ab-testing.md has the full story):

* ``experiment_db`` (default ``"ab_experiments.db"``): a relative path is resolved under
  ``$MLOPS_HOME`` (default ``./.mlops``), so nothing is written to the working directory.
* Assignment is salted with the experiment name and sticky: ``treatment`` iff the user's bucket is
  below the (ramped) traffic split.
* Users outside ``segment_criteria``, and every request while the experiment is paused (or not
  running), are served by control and counted in neither arm.
* Each prediction gets a ``prediction_id``; outcomes join by that id (``record_outcome``) or by
  user (``update_prediction_outcomes``: the user's oldest unlabelled prediction in the experiment).
* The winner is decided by an always-valid sequential test (mSPRT), so analysing as often as you
  like does not inflate false positives; fixed-horizon p-values and intervals are reported beside it.
* The unit of analysis is the **user** (the unit of randomisation): metrics are ratios of per-user
  sums and their variance is the delta-method variance over users, so a user with many correlated
  predictions does not count as many independent samples. ``samples_a``/``samples_b`` still count
  labelled predictions; ``analysis`` reports the users.
* **Ramps**: the verdict uses only the final allocation phase (the target split). Pooling phases run
  at different shares would compare arms observed at different times (Simpson's paradox when the base
  rate trends); inside one phase both arms run side by side at a constant share. While ramping, the
  verdict is inconclusive. The SRM check tests every phase against that phase's share with an
  always-valid test (Bonferroni across phases), so repeated looks do not inflate it.
* Guardrails are always-valid non-inferiority tests (a confidence sequence that must exclude the
  margin; passing is sticky, since the running intersection of the sequence is valid).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from mlops.core import ab_stats
from mlops.core.assignment import (
    assign_variant,
    final_phase_index,
    parse_ramping_strategy,
    phase_of,
    ramp_phase,
    ramp_share,
)
from mlops.core.segments import segment_matches, validate_segment_criteria
from mlops.integrations.mlflow_tracking import Tracker
from mlops.store.ab_store import ABStore, ExperimentExists, PredictionRecord, to_jsonable
from mlops.store.sqlite import mlops_home

PROPORTION_METRICS = ("accuracy", "precision", "recall")
CONTINUOUS_METRICS = ("latency",)
SUPPORTED_METRICS = PROPORTION_METRICS + CONTINUOUS_METRICS


class ExperimentStatus(str, Enum):  # noqa: UP042 - str mixin keeps `status == "running"` comparisons working
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass
class ABTestConfig:
    """An experiment's design. The first twelve fields are the original API; the rest are additions.

    ``minimum_detectable_effect`` (absolute, on the primary metric) sizes the sequential design and
    the mSPRT mixing scale; ``practical_significance_threshold`` (absolute) is the smallest
    difference worth acting on; ``guardrail_metrics`` maps a metric to a non-inferiority margin in
    its units (``{"latency": 5.0}``: treatment latency at most 5 ms worse than control).
    """

    experiment_name: str
    model_a_version: str
    model_b_version: str
    traffic_split: float = 0.5
    duration_days: int = 7
    min_samples_per_variant: int = 1000
    significance_level: float = 0.05
    statistical_power: float = 0.8
    primary_metric: str = "accuracy"
    secondary_metrics: list[str] | None = None
    segment_criteria: dict[str, Any] | None = None
    ramping_strategy: str = "immediate"
    minimum_detectable_effect: float = 0.02
    practical_significance_threshold: float = 0.0
    guardrail_metrics: dict[str, float] | None = None

    def validate(self) -> None:
        """Raise ValueError with the first problem found."""
        if not isinstance(self.experiment_name, str) or not self.experiment_name.strip():
            raise ValueError("experiment_name must be a non-empty string")
        if not self.model_a_version or not self.model_b_version:
            raise ValueError("model_a_version and model_b_version are required")
        if self.model_a_version == self.model_b_version:
            raise ValueError("model_a_version and model_b_version must differ")
        if not 0.0 < float(self.traffic_split) < 1.0:
            raise ValueError(f"traffic_split must be in (0, 1), got {self.traffic_split!r}")
        if not float(self.duration_days) > 0:
            raise ValueError("duration_days must be positive")
        if int(self.min_samples_per_variant) < 0:
            raise ValueError("min_samples_per_variant must be non-negative")
        if not 0.0 < float(self.significance_level) < 0.5:
            raise ValueError(f"significance_level must be in (0, 0.5), got {self.significance_level!r}")
        if not 0.0 < float(self.statistical_power) < 1.0:
            raise ValueError(f"statistical_power must be in (0, 1), got {self.statistical_power!r}")
        if self.primary_metric not in PROPORTION_METRICS:
            raise ValueError(f"primary_metric must be one of {PROPORTION_METRICS}, got {self.primary_metric!r}")
        for metric in self.secondary_metrics or []:
            if metric not in SUPPORTED_METRICS:
                raise ValueError(f"secondary metric {metric!r} is not one of {SUPPORTED_METRICS}")
        for metric, margin in (self.guardrail_metrics or {}).items():
            if metric not in SUPPORTED_METRICS:
                raise ValueError(f"guardrail metric {metric!r} is not one of {SUPPORTED_METRICS}")
            if not float(margin) >= 0:
                raise ValueError(f"guardrail margin for {metric!r} must be non-negative")
        if not 0.0 < float(self.minimum_detectable_effect) < 1.0:
            raise ValueError("minimum_detectable_effect must be in (0, 1)")
        if float(self.practical_significance_threshold) < 0:
            raise ValueError("practical_significance_threshold must be non-negative")
        validate_segment_criteria(self.segment_criteria)
        parse_ramping_strategy(self.ramping_strategy)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ABTestConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ABTestResult:
    """Analysis of an experiment. Differences, intervals and lifts are B (treatment) minus A (control).

    ``p_values`` and ``statistical_significance`` come from the always-valid sequential test (Holm
    corrected for secondary metrics); ``confidence_intervals`` are fixed-horizon (unpooled) intervals,
    ``sequential_confidence_intervals`` the always-valid ones.
    """

    experiment_name: str
    model_a_version: str
    model_b_version: str
    samples_a: int
    samples_b: int
    metrics_a: dict[str, Any]
    metrics_b: dict[str, Any]
    p_values: dict[str, float]
    statistical_significance: dict[str, bool]
    practical_significance: dict[str, bool]
    confidence_intervals: dict[str, tuple[float | None, float | None]]
    winner: str | None
    recommendation: str
    status: str = "inconclusive"
    fixed_horizon_p_values: dict[str, float] = field(default_factory=dict)
    sequential_confidence_intervals: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    effect_sizes: dict[str, dict[str, float | None]] = field(default_factory=dict)
    sample_ratio_mismatch: dict[str, Any] = field(default_factory=dict)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    required_samples_per_variant: int = 0
    more_samples_needed: int = 0
    analyzed_at: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)  # unit, phases, users per arm

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


class UserSegmenter:
    """The original helper: segment membership and sticky assignment for one experiment."""

    def __init__(self, segment_criteria: dict[str, Any] | None = None, salt: str = "") -> None:
        validate_segment_criteria(segment_criteria)
        self.segment_criteria = segment_criteria or {}
        self.salt = salt

    def should_include_user(self, user_id: str, features: Mapping[str, Any]) -> bool:
        return segment_matches(self.segment_criteria, features)

    def assign_variant(self, user_id: str, traffic_split: float) -> str:
        return assign_variant(self.salt, str(user_id), traffic_split)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _resolve_db(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else mlops_home() / path


def _feature_matrix(features: Mapping[str, Any]) -> Any:
    """One row in the dict's order: a float 2-D array when numeric, else a list holding one list."""
    row = list(features.values())
    try:
        return np.asarray([row], dtype=float)
    except (TypeError, ValueError):
        return [row]


class ABTestingManager:
    """Experiments in one SQLite file; safe to share between threads of a process."""

    def __init__(
        self,
        mlflow_tracking_uri: str | None = None,
        experiment_db: str | Path = "ab_experiments.db",
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        id_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.mlflow_tracking_uri = mlflow_tracking_uri  # with MLflow installed, final results are logged there
        self.tracker = Tracker(mlflow_tracking_uri, clock=clock, component="ab_testing")
        self.experiment_db = str(_resolve_db(experiment_db))
        self.store = ABStore(self.experiment_db)
        self._clock, self._timer, self._new_id = clock, timer, id_factory
        self._lock = threading.Lock()
        self._configs: dict[str, ABTestConfig] = {}
        self._rows: dict[str, tuple[float, dict[str, Any]]] = {}
        self.active_experiments: dict[str, ABTestConfig] = {}
        for row in self.store.list_experiments():
            if row["status"] == ExperimentStatus.RUNNING.value:
                self.active_experiments[row["name"]] = self._config(row["name"], row)

    # ----------------------------------------------------------------- lifecycle
    def _config(self, name: str, row: Mapping[str, Any] | None = None) -> ABTestConfig:
        with self._lock:
            cached = self._configs.get(name)
        if cached is not None:
            return cached
        row = row or self._row(name)
        config = ABTestConfig.from_dict(json.loads(row["config"]))
        with self._lock:
            self._configs[name] = config
        return config

    def _row(self, name: str) -> dict[str, Any]:
        row = self.store.get_experiment(name)
        if row is None:
            raise ValueError(f"experiment {name!r} does not exist")
        return row

    def create_experiment(self, config: ABTestConfig | Mapping[str, Any]) -> str:
        """Store a new experiment in ``draft``; ValueError on an invalid config or a duplicate name."""
        if isinstance(config, Mapping):
            config = ABTestConfig.from_dict(config)
        config.validate()
        try:
            self.store.create_experiment(config.experiment_name, config.to_dict(), self._clock())
        except ExperimentExists as exc:
            raise ValueError(str(exc)) from None
        return config.experiment_name

    def start_experiment(self, experiment_name: str) -> bool:
        """Start a draft experiment, or resume a paused one (the ramp keeps its original start)."""
        row = self._row(experiment_name)
        now = self._clock()
        if row["status"] == ExperimentStatus.DRAFT.value:
            ok = self.store.transition(experiment_name, ["draft"], "running", started_at=now)
        elif row["status"] == ExperimentStatus.PAUSED.value:
            ok = self.store.transition(experiment_name, ["paused"], "running", paused_at=None)
        elif row["status"] == ExperimentStatus.RUNNING.value:
            ok = True
        else:
            raise ValueError(f"experiment {experiment_name!r} is {row['status']} and cannot be started")
        if not ok:
            raise ValueError(f"experiment {experiment_name!r} changed state concurrently; retry")
        self.active_experiments[experiment_name] = self._config(experiment_name)
        return True

    def pause_experiment(self, experiment_name: str) -> bool:
        """Pause a running experiment: every request is then served by control and not counted."""
        row = self._row(experiment_name)
        if row["status"] == ExperimentStatus.PAUSED.value:
            return True
        if not self.store.transition(experiment_name, ["running"], "paused", paused_at=self._clock()):
            raise ValueError(f"experiment {experiment_name!r} is {row['status']} and cannot be paused")
        self.active_experiments.pop(experiment_name, None)
        return True

    def stop_experiment(self, experiment_name: str, reason: str = "Manual stop") -> ABTestResult:
        """Analyse a last time and close the experiment (``completed``); returns the final result."""
        return self._end(experiment_name, ExperimentStatus.COMPLETED, reason)

    def terminate_experiment(self, experiment_name: str, reason: str = "Terminated") -> ABTestResult:
        """Abort an experiment (``terminated``), e.g. after a guardrail breach."""
        return self._end(experiment_name, ExperimentStatus.TERMINATED, reason)

    def _end(self, name: str, status: ExperimentStatus, reason: str) -> ABTestResult:
        row = self._row(name)
        if row["status"] in (ExperimentStatus.COMPLETED.value, ExperimentStatus.TERMINATED.value):
            raise ValueError(f"experiment {name!r} has already ended ({row['status']})")
        result = self.analyze_experiment(name)
        ok = self.store.transition(
            name, ["draft", "running", "paused"], status.value, ended_at=self._clock(), end_reason=reason,
            final_result=json.dumps(result.to_dict()),
        )
        if not ok:
            raise ValueError(f"experiment {name!r} changed state concurrently; retry")
        self.active_experiments.pop(name, None)
        self.tracker.ab_result(result.to_dict(), self._config(name).to_dict(), status=status.value, reason=reason)
        return result

    # ----------------------------------------------------------------- serving
    def make_prediction(
        self,
        experiment_name: str,
        user_id: str,
        features: Mapping[str, Any],
        models: Mapping[str, Any],
        prediction_id: str | None = None,
    ) -> dict[str, Any]:
        """Serve one request: pick the variant, call its model, record the prediction.

        Returns ``{prediction, model_version, variant, latency_ms, prediction_id}``.
        """
        now = self._clock()
        user = str(user_id)
        plan = self.assign(experiment_name, user, features)
        variant, version, counted, share = plan["variant"], plan["model_version"], plan["counted"], plan["share"]
        phase = plan["phase"]
        if version not in models:
            raise ValueError(f"no model for version {version!r} in models (have {sorted(models)})")
        start = self._timer()
        output = models[version].predict(_feature_matrix(features))
        latency_ms = (self._timer() - start) * 1000.0
        first = output[0] if hasattr(output, "__len__") and len(output) > 0 else output
        prediction = to_jsonable(first)
        pid = prediction_id or self._new_id()
        self.store.record_prediction(
            PredictionRecord(pid, experiment_name, user, variant, counted, version, prediction, latency_ms, now, share,
                             phase)
        )
        return {
            "prediction": prediction,
            "model_version": version,
            "variant": variant,
            "latency_ms": latency_ms,
            "prediction_id": pid,
        }

    def assign(self, experiment_name: str, user_id: str, features: Mapping[str, Any], *,
               max_age: float = 0.0) -> dict[str, Any]:
        """The variant and version that serve ``user_id`` now, without predicting or recording:
        ``{variant, model_version, counted, share, phase}``. ``max_age`` > 0 reuses the experiment's state
        read up to that many seconds ago (the model server: no database read per request; a pause
        or stop takes effect within ``max_age``). Raises ValueError for an unknown experiment."""
        row = self._cached_row(experiment_name, max_age)
        config = self._config(experiment_name, row)
        running = row["status"] == ExperimentStatus.RUNNING.value
        in_segment = segment_matches(config.segment_criteria, features) if config.segment_criteria else True
        if max_age > 0 and "_share" in row:
            # computed when the row was read (the ramp moves over hours, not seconds)
            share, phase = row["_share"], row["_phase"]
        else:
            now = self._clock()
            share = ramp_share(config.ramping_strategy, config.traffic_split, row["started_at"], now)
            phase = ramp_phase(config.ramping_strategy, config.traffic_split, row["started_at"], now).index
        variant = assign_variant(experiment_name, str(user_id), share) if running and in_segment else "control"
        version = config.model_a_version if variant == "control" else config.model_b_version
        return {"variant": variant, "model_version": version, "counted": running and in_segment, "share": share,
                "phase": phase}

    def _cached_row(self, name: str, max_age: float) -> dict[str, Any]:
        if max_age <= 0:
            return self._row(name)
        now = time.monotonic()
        with self._lock:
            hit = self._rows.get(name)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        row = dict(self._row(name))
        config = self._config(name, row)
        clock = self._clock()
        row["_share"] = ramp_share(config.ramping_strategy, config.traffic_split, row["started_at"], clock)
        row["_phase"] = ramp_phase(config.ramping_strategy, config.traffic_split, row["started_at"], clock).index
        with self._lock:
            self._rows[name] = (now, row)
        return row

    def record_served(self, records: Iterable[PredictionRecord]) -> int:
        """Store predictions served elsewhere (the model server's off-request-path group commit);
        idempotent per prediction id. Returns how many were new."""
        return self.store.record_predictions(records)

    def record_outcome(self, experiment_name: str, prediction_id: str, true_label: Any) -> bool:
        """Attach the true outcome to one prediction; False if unknown or already labelled."""
        self._row(experiment_name)
        return self.store.record_outcome(experiment_name, prediction_id, true_label, self._clock())

    def update_prediction_outcomes(self, experiment_name: str, outcomes: Iterable[tuple[Any, Any]]) -> int:
        """Outcomes as ``(user_id, true_label)``: each labels that user's oldest unlabelled prediction.

        Returns how many outcomes matched a prediction.
        """
        self._row(experiment_name)
        return self.store.record_outcomes_by_user(experiment_name, list(outcomes), self._clock())

    # ----------------------------------------------------------------- analysis
    def analyze_experiment(self, experiment_name: str) -> ABTestResult:
        """Analyse the experiment per user, on the final allocation phase (see the module docstring)."""
        row = self._row(experiment_name)
        config = self._config(experiment_name, row)
        counters = self.store.counters(experiment_name)
        a, b = counters["control"], counters["treatment"]
        alpha = float(config.significance_level)
        mde = float(config.minimum_detectable_effect)
        now = self._clock()
        target = float(config.traffic_split)
        current = ramp_phase(config.ramping_strategy, target, row["started_at"], now)
        final = final_phase_index(config.ramping_strategy)
        phases = self.store.phase_sums(experiment_name)
        state = json.loads(row["sequential_state"] or "{}")
        empty = ab_stats.RatioSums()

        def sums(variant: str, metric: str, phase: int = final) -> ab_stats.RatioSums:
            return phases.get(phase, {}).get(variant, {}).get(metric, empty)

        # SRM: users exposed in each phase against that phase's share, always-valid over looks.
        phase_counts = []
        for index in range(final + 1):
            ph = phase_of(config.ramping_strategy, target, index)
            phase_counts.append(ab_stats.PhaseCounts(
                sums("control", "latency", index).units, sums("treatment", "latency", index).units, ph.share))
        srm, srm_running = ab_stats.sequential_srm(phase_counts, prior_p_values=state.get("srm"))

        def latency_tau(mean_a: float | None) -> float:
            margin = (config.guardrail_metrics or {}).get("latency")
            if margin:
                return float(margin)
            return max(0.1 * mean_a, 1e-3) if mean_a is not None and math.isfinite(mean_a) else 1.0

        new_state: dict[str, Any] = {"srm": srm_running}
        guardrails = []
        for metric, margin in (config.guardrail_metrics or {}).items():
            ga, gb = sums("control", metric), sums("treatment", metric)
            proportion = metric != "latency"
            diff = gb.ratio - ga.ratio if ga.ratio is not None and gb.ratio is not None else None
            variance = ab_stats.user_level_variance(ga, gb, proportion=proportion) if diff is not None else None
            key = f"guardrail:{metric}"
            g = ab_stats.sequential_non_inferiority(
                metric, diff, variance, float(margin),
                lower_is_better=not proportion, alpha=alpha, tau=float(margin) or None, prior_bound=state.get(key))
            new_state[key] = g.bound
            guardrails.append(g)

        primary = config.primary_metric
        pa, pb = sums("control", primary), sums("treatment", primary)
        verdict = ab_stats.decide(
            0, 0, 0, 0, alpha=alpha, power=float(config.statistical_power), mde=mde, treatment_share=target,
            min_samples_per_variant=int(config.min_samples_per_variant),
            practical_threshold=float(config.practical_significance_threshold),
            prior_p_value=state.get(primary), guardrails=guardrails, metric=primary,
            sums_a=pa, sums_b=pb, srm_result=srm,
        )
        na, nb = int(round(pa.n)), int(round(pb.n))
        recommendation = verdict.recommendation
        if not current.final and verdict.status != "sample_ratio_mismatch":
            share = "varying" if current.share is None else f"{current.share:g}"
            recommendation = (
                f"Ramping (phase {current.index + 1} of {final + 1}, treatment share {share}): the verdict uses "
                f"only the final allocation ({target:g}), so periods with different shares are never pooled. "
                + recommendation
            )
        p_values = {primary: verdict.sequential.p_value}
        fixed_p = {primary: verdict.fixed_horizon.p_value}
        cis = {primary: (verdict.fixed_horizon.ci_low, verdict.fixed_horizon.ci_high)}
        seq_cis = {primary: (verdict.sequential.ci_low, verdict.sequential.ci_high)}
        effects: dict[str, dict[str, float | None]] = {primary: {
            "difference": verdict.fixed_horizon.difference,
            "relative_lift": verdict.fixed_horizon.relative_lift,
            "cohens_h": verdict.fixed_horizon.cohens_h,
            "design_effect": ab_stats.design_effect(pa, pb),
        }}
        significance = {primary: verdict.statistically_significant}
        practical = {primary: verdict.practically_significant}
        new_state[primary] = verdict.sequential.p_value

        secondary_raw: dict[str, float] = {}
        for metric in config.secondary_metrics or []:
            if metric == primary:
                continue
            sa_, sb_ = sums("control", metric), sums("treatment", metric)
            proportion = metric != "latency"
            tau = mde if proportion else latency_tau(sa_.ratio)
            seq = ab_stats.sequential_ratio(sa_, sb_, alpha, tau, state.get(metric), proportion=proportion)
            diff = seq.estimate
            v = ab_stats.user_level_variance(sa_, sb_, proportion=proportion)
            if diff is not None and v is not None:
                half = float(ab_stats.stats.norm.ppf(1 - alpha / 2)) * math.sqrt(v)
                cis[metric] = (diff - half, diff + half)
                fixed_p[metric] = float(2 * ab_stats.stats.norm.sf(abs(diff) / math.sqrt(v)))
            else:
                cis[metric] = (None, None)
                fixed_p[metric] = 1.0
            lift = diff / sa_.ratio if diff is not None and sa_.ratio else None
            effects[metric] = {"difference": diff, "relative_lift": lift}
            threshold = (config.guardrail_metrics or {}).get("latency", 0.0) if not proportion else float(
                config.practical_significance_threshold)
            secondary_raw[metric] = seq.p_value
            new_state[metric] = seq.p_value
            seq_cis[metric] = (seq.ci_low, seq.ci_high)
            practical[metric] = diff is not None and abs(diff) >= threshold
        for metric, p in ab_stats.holm_adjust(secondary_raw).items():
            p_values[metric] = p
            significance[metric] = p <= alpha
            practical[metric] = practical[metric] and significance[metric]
        self.store.save_sequential_state(experiment_name, new_state)

        def arm_metrics(c: Mapping[str, float]) -> dict[str, Any]:
            n_lat = int(c["predictions"])
            out: dict[str, Any] = {
                "accuracy": c["correct"] / c["labelled"] if c["labelled"] else None,
                "avg_latency": c["latency_sum"] / n_lat if n_lat else None,
                "sample_count": int(c["labelled"]),
                "prediction_count": int(c["predictions"]),
                "users": int(c["users"]),
            }
            tp, fp, fn = c["tp"], c["fp"], c["fn"]
            out["precision"] = tp / (tp + fp) if tp + fp else None
            out["recall"] = tp / (tp + fn) if tp + fn else None
            return out

        analysis = {
            "unit": "user",
            "variance": "delta method over users (Deng, Knoblich & Lu 2018)",
            "phase": final,
            "current_phase": current.index,
            "final_phase_reached": current.final,
            "phases": [
                {"phase": i, "share": pc.expected_share_b, "users_control": pc.n_a, "users_treatment": pc.n_b}
                for i, pc in enumerate(phase_counts)
            ],
            "users_control": pa.units,
            "users_treatment": pb.units,
        }
        return ABTestResult(
            experiment_name=experiment_name,
            model_a_version=config.model_a_version,
            model_b_version=config.model_b_version,
            samples_a=na,
            samples_b=nb,
            metrics_a=arm_metrics(a),
            metrics_b=arm_metrics(b),
            p_values=p_values,
            statistical_significance=significance,
            practical_significance=practical,
            confidence_intervals=cis,
            winner=verdict.winner,
            recommendation=recommendation,
            status=verdict.status,
            fixed_horizon_p_values=fixed_p,
            sequential_confidence_intervals=seq_cis,
            effect_sizes=effects,
            sample_ratio_mismatch=verdict.srm.to_dict(),
            guardrails=[g.to_dict() for g in guardrails],
            required_samples_per_variant=verdict.samples_needed_per_variant,
            more_samples_needed=verdict.more_samples_needed,
            analyzed_at=_iso(now) or "",
            analysis=analysis,
        )

    # ----------------------------------------------------------------- status
    def _status(self, row: Mapping[str, Any]) -> dict[str, Any]:
        counters = self.store.counters(row["name"])
        config = self._config(row["name"], row)
        return {
            "experiment_name": row["name"],
            "status": row["status"],
            "created_at": _iso(row["created_at"]),
            "started_at": _iso(row["started_at"]),
            "ended_at": _iso(row["ended_at"]),
            "sample_counts": {v: int(c["predictions"]) for v, c in counters.items()},
            "labelled_counts": {v: int(c["labelled"]) for v, c in counters.items()},
            "is_active": row["status"] == ExperimentStatus.RUNNING.value,
            "paused_at": _iso(row["paused_at"]),
            "end_reason": row["end_reason"],
            "model_a_version": config.model_a_version,
            "model_b_version": config.model_b_version,
            "traffic_split": config.traffic_split,
            "current_treatment_share": ramp_share(
                config.ramping_strategy, config.traffic_split, row["started_at"], self._clock()
            ) if row["status"] == ExperimentStatus.RUNNING.value else 0.0,
        }

    def get_experiment_status(self, experiment_name: str) -> dict[str, Any]:
        return self._status(self._row(experiment_name))

    def list_experiments(self) -> list[dict[str, Any]]:
        return [self._status(row) for row in self.store.list_experiments()]

    def close(self) -> None:
        self.store.close()
