"""Retraining decisions as a pure function: ``decide(evidence, history, config, now) -> Decision``.

Retraining is where automation hurts most when it misfires (a retrain storm, a retrain on an idle
system, a failed run counted as a success), so the rules live here, apart from files, threads,
databases and clocks: the library facade (``mlops.monitoring.data_trigger``), the CLI and the
operator's RetrainPolicy all feed the same function, and the rules are tested by simulating months
in milliseconds.

Times are seconds since the epoch (floats); the caller passes ``now``.

The accuracy trigger is a test, not a raw comparison: it needs at least
``MIN_LABELLED_FOR_ACCURACY`` labelled predictions, an observed drop larger than
``accuracy_degradation_threshold``, and an exact one-sided test (Fisher's, which includes the
sampling error of a baseline measured on few labels; binomial when the baseline's size is unknown)
rejecting "as accurate as the baseline" at ``ACCURACY_TRIGGER_ALPHA``. A model as accurate as its
baseline therefore qualifies with probability at most 1e-4 per evaluation, and a 100-label baseline
that happened to be high does not re-trigger forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mlops.core.drift import concept_drift_test

DATA_ARRIVAL = "data_arrival"
TIME_BASED = "time_based"
PERFORMANCE_DEGRADATION = "performance_degradation"
DATA_DRIFT = "data_drift"
HIGH_ERROR_RATE = "high_error_rate"
DATA_QUALITY = "data_quality"
MANUAL = "manual"

# When several conditions hold at once, the run is attributed to the first one in this order: the
# most urgent (a human, then a model that is measurably worse) before the routine ones.
TRIGGER_PRIORITY: tuple[str, ...] = (
    MANUAL,
    PERFORMANCE_DEGRADATION,
    HIGH_ERROR_RATE,
    DATA_DRIFT,
    DATA_QUALITY,
    DATA_ARRIVAL,
    TIME_BASED,
)
TRIGGER_TYPES = frozenset(TRIGGER_PRIORITY)

MIN_LABELLED_FOR_ACCURACY = 30
ACCURACY_TRIGGER_ALPHA = 1e-4

# Decision.action values
NONE = "none"
RUN = "run"
BLOCKED = "blocked"
AWAIT_APPROVAL = "await_approval"

# Decision.block_code values (stable identifiers; block_reason is the human sentence)
RUN_IN_PROGRESS = "run_in_progress"
DUPLICATE_PENDING = "duplicate_pending"
COOLDOWN = "cooldown"
DAILY_CAP = "daily_cap"

DAY_SECONDS = 86_400.0
HOUR_SECONDS = 3_600.0


class PolicyConfig(Protocol):
    """The thresholds and limits ``decide`` reads (``RetrainingTriggerConfig`` satisfies it)."""

    min_new_samples: int
    max_days_without_retrain: float
    accuracy_degradation_threshold: float
    drift_score_threshold: float
    error_rate_threshold: float
    data_quality_threshold: float
    min_hours_between_retrains: float
    max_retrains_per_day: int
    require_manual_approval: bool
    min_predictions: int


@dataclass(frozen=True)
class Evidence:
    """What the system observed. ``None`` means "no evidence", never "bad"."""

    new_samples: int = 0
    total_predictions: int | None = None
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    labelled: int | None = None  # labelled predictions behind ``accuracy`` (None: unknown, no test)
    baseline_labelled: int | None = None  # labelled predictions behind the baseline (None: exact)
    drift_score: float | None = None
    error_rate: float | None = None
    data_quality: float | None = None
    # Start of the "days without retraining" clock when the model was never retrained here: the
    # first start-up of the trigger for this model.
    first_start: float | None = None
    manual_reason: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """A retraining run that started. ``success`` is None while it runs."""

    started_at: float
    finished_at: float | None = None
    success: bool | None = None


@dataclass(frozen=True)
class PendingTrigger:
    """A trigger waiting for a human (``pending_approval``) or approved and waiting to start."""

    event_id: int
    trigger_type: str
    status: str = "pending_approval"


@dataclass(frozen=True)
class History:
    runs: tuple[RunRecord, ...] = ()
    pending: tuple[PendingTrigger, ...] = ()

    @property
    def last_success(self) -> RunRecord | None:
        done = [r for r in self.runs if r.success]
        return max(done, key=lambda r: r.started_at) if done else None


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation.

    ``action`` is ``none`` (nothing qualifies), ``run`` (start a retrain now), ``blocked`` (a
    trigger qualified but a constraint forbids it; ``block_code``/``block_reason`` say which) or
    ``await_approval`` (qualified and allowed, but a human must approve it first).
    ``candidates`` lists every qualifying (trigger_type, reason), highest priority first.
    """

    action: str
    trigger_type: str | None = None
    reason: str = ""
    block_code: str | None = None
    block_reason: str | None = None
    candidates: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def triggered(self) -> bool:
        return self.action != NONE


def qualifying_triggers(evidence: Evidence, history: History, config: PolicyConfig, now: float
                        ) -> list[tuple[str, str]]:
    """Every condition that calls for a retrain, as (trigger_type, reason), in priority order."""
    found: dict[str, str] = {}
    if evidence.manual_reason is not None:
        found[MANUAL] = evidence.manual_reason or "Manual trigger"

    # Monitoring evidence counts only with enough traffic: an idle system has no accuracy, no
    # error rate and no data quality, which is not the same as bad ones.
    predictions = evidence.total_predictions or 0
    if predictions >= max(1, int(config.min_predictions)):
        if (evidence.accuracy is not None and evidence.baseline_accuracy is not None
                and (evidence.labelled or 0) >= MIN_LABELLED_FOR_ACCURACY
                and evidence.baseline_accuracy - evidence.accuracy > config.accuracy_degradation_threshold):
            test = concept_drift_test(
                evidence.baseline_accuracy, evidence.accuracy, int(evidence.labelled or 0),
                alpha=ACCURACY_TRIGGER_ALPHA, baseline_n=evidence.baseline_labelled or None,
            )
            if test.detected:
                drop = evidence.baseline_accuracy - evidence.accuracy
                found[PERFORMANCE_DEGRADATION] = (
                    f"accuracy {evidence.accuracy:.4f} on {evidence.labelled} labelled predictions is {drop:.4f} "
                    f"below the baseline {evidence.baseline_accuracy:.4f} (threshold "
                    f"{config.accuracy_degradation_threshold}, exact one-sided p={test.p_value:.2g})"
                )
        if evidence.error_rate is not None and evidence.error_rate > config.error_rate_threshold:
            found[HIGH_ERROR_RATE] = (
                f"error rate {evidence.error_rate:.4f} above {config.error_rate_threshold}"
            )
        if evidence.drift_score is not None and evidence.drift_score > config.drift_score_threshold:
            found[DATA_DRIFT] = (
                f"drift score {evidence.drift_score:.4f} above {config.drift_score_threshold}"
            )
        if evidence.data_quality is not None and evidence.data_quality < config.data_quality_threshold:
            found[DATA_QUALITY] = (
                f"data quality {evidence.data_quality:.4f} below {config.data_quality_threshold}"
            )

    if evidence.new_samples >= max(1, int(config.min_new_samples)):
        found[DATA_ARRIVAL] = (
            f"{evidence.new_samples} new samples (minimum {config.min_new_samples})"
        )

    last = history.last_success
    reference = (last.finished_at or last.started_at) if last else evidence.first_start
    if reference is not None and config.max_days_without_retrain is not None:
        age_days = (now - reference) / DAY_SECONDS
        if age_days >= config.max_days_without_retrain:
            since = "the last successful retrain" if last else "first start-up (never retrained)"
            found[TIME_BASED] = (
                f"{age_days:.2f} days since {since} (maximum {config.max_days_without_retrain})"
            )
    return [(t, found[t]) for t in TRIGGER_PRIORITY if t in found]


def constraint_blocks(trigger_type: str, history: History, config: PolicyConfig, now: float,
                      *, exclude_event_id: int | None = None,
                      cooldown_from_start: bool = False) -> list[tuple[str, str]]:
    """Every constraint that forbids starting a ``trigger_type`` run now, as (code, reason).

    ``exclude_event_id`` is the pending trigger being started itself (an approved one), which
    must not count as its own duplicate. ``cooldown_from_start``: the minimum time between runs is
    measured from the last run's *start*, whatever its outcome (the operator's RetrainPolicy:
    "hours between two retraining starts", a failed Job counts); by default from the last
    successful run's end (the library's trigger).
    """
    blocks: list[tuple[str, str]] = []
    if any(r.success is None for r in history.runs):
        blocks.append((RUN_IN_PROGRESS, "a retrain is already running (one run at a time)"))

    for p in history.pending:
        if p.trigger_type == trigger_type and p.event_id != exclude_event_id:
            blocks.append((
                DUPLICATE_PENDING,
                f"a {trigger_type} trigger is already pending (event {p.event_id}, {p.status})",
            ))
            break

    last = history.last_success
    if cooldown_from_start and history.runs:
        last = max(history.runs, key=lambda r: r.started_at)
    if last is not None:
        since = last.started_at if cooldown_from_start else (last.finished_at or last.started_at)
        wait = config.min_hours_between_retrains * HOUR_SECONDS - (now - since)
        if wait > 0:
            blocks.append((
                COOLDOWN,
                f"last {'retrain started' if cooldown_from_start else 'successful retrain'} "
                f"{(now - since) / HOUR_SECONDS:.2f} h ago; minimum is "
                f"{config.min_hours_between_retrains} h between retrains ({wait / HOUR_SECONDS:.2f} h left)",
            ))

    # Closed window [now - 24 h, now]: a run exactly 24 h ago still counts, so no closed 24-hour
    # window ever holds more than the cap. Failed runs count too (they consumed resources).
    window = [r for r in history.runs if r.started_at >= now - DAY_SECONDS]
    if len(window) >= config.max_retrains_per_day:
        oldest = min(r.started_at for r in window)
        blocks.append((
            DAILY_CAP,
            f"{len(window)} retrains started in the last 24 h (maximum {config.max_retrains_per_day}); "
            f"next allowed in {(oldest + DAY_SECONDS - now) / HOUR_SECONDS:.2f} h",
        ))
    return blocks


def decide(evidence: Evidence, history: History, config: PolicyConfig, now: float, *,
           cooldown_from_start: bool = False) -> Decision:
    """Whether to retrain now, on which trigger, why, and what (if anything) blocks it."""
    candidates = tuple(qualifying_triggers(evidence, history, config, now))
    if not candidates:
        return Decision(action=NONE)
    trigger_type, reason = candidates[0]
    blocks = constraint_blocks(trigger_type, history, config, now, cooldown_from_start=cooldown_from_start)
    if blocks:
        code, why = blocks[0]
        return Decision(action=BLOCKED, trigger_type=trigger_type, reason=reason,
                        block_code=code, block_reason="; ".join(b[1] for b in blocks),
                        candidates=candidates)
    if config.require_manual_approval:
        return Decision(action=AWAIT_APPROVAL, trigger_type=trigger_type, reason=reason,
                        candidates=candidates)
    return Decision(action=RUN, trigger_type=trigger_type, reason=reason, candidates=candidates)


def decide_pending(pending: PendingTrigger, reason: str, history: History, config: PolicyConfig,
                   now: float, *, cooldown_from_start: bool = False) -> Decision:
    """Whether an approved trigger may start now: every constraint except approval applies."""
    blocks = constraint_blocks(pending.trigger_type, history, config, now,
                               exclude_event_id=pending.event_id, cooldown_from_start=cooldown_from_start)
    if blocks:
        return Decision(action=BLOCKED, trigger_type=pending.trigger_type, reason=reason,
                        block_code=blocks[0][0], block_reason="; ".join(b[1] for b in blocks),
                        candidates=((pending.trigger_type, reason),))
    return Decision(action=RUN, trigger_type=pending.trigger_type, reason=reason,
                    candidates=((pending.trigger_type, reason),))


def runs_in_window(runs: Sequence[RunRecord], now: float, seconds: float = DAY_SECONDS) -> int:
    """Runs started within the closed window [now - seconds, now]."""
    return sum(1 for r in runs if now - seconds <= r.started_at <= now)
