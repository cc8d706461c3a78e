"""Data-driven automated retraining: the user's API (``create_data_trigger``) around the pure
rules of :mod:`mlops.core.retrain_policy` and the durable state of :mod:`mlops.store.retrain_store`.

What this module adds to the rules is everything with side effects: watching data folders (rows of
new CSV/Parquet files, each file counted once even across restarts, a file still being written
counted when it stops changing), reading the production monitor's summary, the background loop
(clock and sleep injectable, so a simulated month runs in milliseconds through :meth:`check_once`),
running the retrain (the user's ``retraining_handler`` or an argv command with a timeout) and
recording every trigger, block, approval, start and finish in the hash-chained audit log.

A run that cannot succeed is a failure, never a silent success: no handler and no command, a
handler that raises or returns False, a command that exits non-zero or times out.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import logging
import math
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.core import retrain_policy as policy
from mlops.integrations.mlflow_tracking import Tracker
from mlops.store import retrain_store as rs
from mlops.store.sqlite import model_dir

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = (".csv", ".parquet")
OUTPUT_TAIL_CHARS = 4000
# Identifies this process incarnation, so a run left "running" by a previous process with the same
# pid (pid 1 in a container) is recognised as interrupted.
_PROCESS_TOKEN = uuid.uuid4().hex

Clock = Callable[[], "datetime | float"]


@dataclass
class RetrainingTriggerConfig:
    """Thresholds, limits and data locations of a retraining trigger (names and defaults as the
    original system; the last block of fields is ours)."""

    min_new_samples: int = 1000
    max_days_without_retrain: float = 7
    new_data_check_interval: float = 3600
    accuracy_degradation_threshold: float = 0.05
    drift_score_threshold: float = 0.1
    error_rate_threshold: float = 0.02
    data_quality_threshold: float = 0.95
    missing_data_threshold: float = 0.1  # accepted; the monitor's summary has no missing-data rate
    min_hours_between_retrains: float = 6
    max_retrains_per_day: int = 4
    require_manual_approval: bool = False
    data_directories: list[str] | None = None
    watch_file_patterns: list[str] | None = None
    # Imaging fields of the original system: accepted and stored, read by no trigger here.
    new_study_threshold: int = 100
    imaging_drift_threshold: float = 0.15
    image_quality_threshold: float = 0.8
    modality_change_trigger: bool = True
    # Ours.
    retrain_command: list[str] | None = None
    retrain_timeout_seconds: float = 6 * 3600
    min_predictions: int = 100
    file_settle_seconds: float = 0.5
    count_existing_files: bool = False
    blocked_record_interval_seconds: float = 60

    def __post_init__(self) -> None:
        if isinstance(self.data_directories, str | os.PathLike):
            self.data_directories = [self.data_directories]
        if self.data_directories is not None:
            self.data_directories = [str(d) for d in self.data_directories]
        if isinstance(self.watch_file_patterns, str):
            self.watch_file_patterns = [self.watch_file_patterns]
        if self.watch_file_patterns is not None:
            self.watch_file_patterns = [str(p) for p in self.watch_file_patterns]
        if isinstance(self.retrain_command, str):
            self.retrain_command = shlex.split(self.retrain_command)
        if self.retrain_command is not None:
            self.retrain_command = [str(a) for a in self.retrain_command]
            if not self.retrain_command:
                raise ValueError("retrain_command must be a non-empty argv list (or None)")
        for name in ("min_new_samples", "max_days_without_retrain", "accuracy_degradation_threshold",
                     "drift_score_threshold", "error_rate_threshold", "data_quality_threshold",
                     "missing_data_threshold", "min_hours_between_retrains", "min_predictions",
                     "file_settle_seconds", "blocked_record_interval_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("new_data_check_interval", "retrain_timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.max_retrains_per_day, bool) or not isinstance(self.max_retrains_per_day, int) \
                or self.max_retrains_per_day < 1:
            raise ValueError(f"max_retrains_per_day must be an integer >= 1, got {self.max_retrains_per_day!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainingTriggerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown retraining config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrainingEvent:
    """One trigger and what became of it (the fields of ``get_trigger_history`` rows)."""

    timestamp: str
    trigger_type: str
    trigger_reason: str
    data_size: int = 0
    previous_model_version: str | None = None
    new_model_version: str | None = None
    performance_before: float | None = None
    performance_after: float | None = None
    success: bool = False
    error_message: str | None = None
    audit_event_id: int | None = None


@dataclass
class _Outcome:
    success: bool
    error_message: str | None = None
    exit_status: int | None = None
    output_tail: str | None = None
    new_model_version: str | None = None
    performance_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _coerce_config(config: RetrainingTriggerConfig | dict[str, Any] | None) -> RetrainingTriggerConfig:
    if config is None:
        return RetrainingTriggerConfig()
    if isinstance(config, RetrainingTriggerConfig):
        return config
    if isinstance(config, dict):
        return RetrainingTriggerConfig.from_dict(config)
    raise TypeError(f"config must be a RetrainingTriggerConfig, a dict or None, not {type(config).__name__}")


def _epoch(value: datetime | float | int) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _number(value: Any) -> float | None:
    """A finite float, or None for missing/None/NaN (no evidence)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    return text if len(text) <= limit else text[-limit:]


# ----------------------------------------------------------------------------- data arrival
def matches(name: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """A file name matches a suffix (``.csv``) or a glob (``*.csv``, ``batch_*.parquet``)."""
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatch(name, pattern):
                return True
        elif name.endswith(pattern):
            return True
    return False


def count_rows(path: Path) -> int:
    """Data rows in a file: Parquet from its metadata, JSON lines by non-empty lines, anything
    else as CSV (records minus the header; quoted newlines handled, blank lines skipped)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        records = sum(1 for row in csv.reader(fh) if row)
    return max(0, records - 1)


class DataArrivalScanner:
    """Finds new rows in watched folders, keeping a ledger (path, size, mtime, rows, rows already
    used) in the store so that each file is counted once, even across restarts.

    A file is counted when two consecutive looks see the same size and mtime (a file still being
    written is counted once it stops changing). A file that grows later contributes only its new
    rows; a file whose row count falls below what was used was replaced and counts afresh. Files
    present at the very first scan for a model are taken as already trained on unless
    ``count_existing_files`` is set. Hidden files (``.name``) are ignored: writers use them for
    atomic renames."""

    def __init__(self, store: rs.RetrainStore, config: RetrainingTriggerConfig) -> None:
        self.store = store
        self.config = config
        self.unsettled = 0

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(self.config.watch_file_patterns or DEFAULT_PATTERNS)

    def _files(self) -> Iterator[Path]:
        for directory in self.config.data_directories or ():
            root = Path(directory)
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if not name.startswith(".") and matches(name, self.patterns):
                        yield Path(dirpath, name).resolve()

    def initialize(self, now: float) -> None:
        if self.store.get_meta("files_initialized") is not None:
            return
        if not self.config.count_existing_files:
            for path in self._files():
                try:
                    st = path.stat()
                    rows = count_rows(path)
                except (OSError, ValueError) as exc:
                    log.warning("cannot read %s at first scan: %s", path, exc)
                    continue
                with self.store.transaction() as conn:
                    self.store.upsert_file(conn, str(path), st.st_size, st.st_mtime_ns, rows, True, now,
                                           consumed_rows=rows)
        self.store.set_meta("files_initialized", repr(now), only_if_missing=True)

    def scan(self, now: float) -> int:
        """Update the ledger; return the rows in stable files not yet used by a successful retrain."""
        known = self.store.files()
        present: set[str] = set()
        unsettled = 0
        for path in self._files():
            key = str(path)
            present.add(key)
            try:
                st = path.stat()
            except OSError:
                continue
            prev = known.get(key)
            if prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
                if prev.stable:
                    continue
                try:
                    rows = count_rows(path)
                except Exception as exc:  # noqa: BLE001 - an unreadable file (e.g. a half-written
                    # Parquet footer) is retried at the next scan; the reason is kept in the ledger.
                    with self.store.transaction() as conn:
                        self.store.upsert_file(conn, key, st.st_size, st.st_mtime_ns, prev.rows, False, now,
                                               error=f"{type(exc).__name__}: {exc}")
                    unsettled += 1
                    continue
                replaced = rows < prev.consumed_rows
                with self.store.transaction() as conn:
                    self.store.upsert_file(conn, key, st.st_size, st.st_mtime_ns, rows, True, now,
                                           consumed_rows=0 if replaced else None)
            else:
                unsettled += 1
                with self.store.transaction() as conn:
                    self.store.upsert_file(conn, key, st.st_size, st.st_mtime_ns,
                                           prev.rows if prev else None, False, now)
        # A file that disappeared no longer offers rows; its ledger row is kept (stable=0) so it
        # is not counted again if it comes back unchanged.
        gone = [k for k, s in known.items() if s.stable and k not in present]
        if gone:
            with self.store.transaction() as conn:
                for key in gone:
                    s = known[key]
                    self.store.upsert_file(conn, key, s.size, s.mtime_ns, s.rows, False, now)
        self.unsettled = unsettled
        return sum(self.store.pending_rows().values())


# ----------------------------------------------------------------------------- the trigger
class DataDrivenRetrainingTrigger:
    """Watches data folders and the production monitor, decides (with governance) when to retrain,
    runs the retrain and records everything.

    ``clock`` returns a datetime or epoch seconds (default ``time.time``); ``sleep(seconds)``
    replaces the background loop's wait (default: a wait that :meth:`wake` and
    :meth:`stop_monitoring` interrupt). ``remember_config=False`` keeps the config stored for the
    CLI (the last one a trigger of this model ran with) unchanged.
    """

    def __init__(
        self,
        model_name: str,
        config: RetrainingTriggerConfig | dict[str, Any] | None = None,
        production_monitor: Any = None,
        mlflow_tracking_uri: str | None = None,
        *,
        retraining_handler: Callable[[str, str], Any] | None = None,
        clock: Clock = time.time,
        sleep: Callable[[float], Any] | None = None,
        store: rs.RetrainStore | None = None,
        remember_config: bool = True,
    ) -> None:
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError("model_name must be a non-empty string")
        self.model_name = model_name
        self.config = _coerce_config(config)
        self.production_monitor = production_monitor
        self.mlflow_tracking_uri = mlflow_tracking_uri  # with MLflow installed, each run is logged there
        self.tracker = Tracker(mlflow_tracking_uri, component="retraining_trigger")
        self.retraining_handler = retraining_handler
        self._clock = clock
        self._sleep = sleep
        self._store = store or rs.RetrainStore(model_name)
        self._scanner = DataArrivalScanner(self._store, self.config)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # One long-lived daemon worker for background runs: SQLite connections are per thread, so
        # a fresh thread per run would leave an open connection behind per run. Daemon, so a
        # process exiting mid-run is not held up (the run is then closed as interrupted).
        self._jobs: queue.Queue[tuple[Callable[[], Any], threading.Event]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._runs: list[threading.Event] = []
        self._block_records: dict[tuple[str, str], tuple[float, int]] = {}
        self.last_error: str | None = None

        now = self._now()
        self._first_start = float(self._store.set_meta("first_start", repr(now), only_if_missing=True))
        if remember_config:
            self._store.set_meta("config", rs.canonical_json(self.config.to_dict()))
        self._reap_stale_runs(now)
        if self.config.data_directories:
            self._scanner.initialize(now)

    # ------------------------------------------------------------------ properties
    @property
    def store(self) -> rs.RetrainStore:
        return self._store

    @property
    def is_active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def last_retrain_time(self) -> datetime | None:
        """When the last successful retrain finished (UTC), or None."""
        last = self._store.last_success()
        if last is None:
            return None
        return datetime.fromtimestamp(last["finished_at"] or last["started_at"], UTC)

    @property
    def retrains_today(self) -> int:
        """Runs (successful or failed) started in the last 24 hours."""
        now = self._now()
        return policy.runs_in_window(self._store.history(now).runs, now)

    def _now(self) -> float:
        return _epoch(self._clock())

    # ------------------------------------------------------------------ lifecycle
    def start_monitoring(self) -> None:
        """Start the background loop (a daemon thread): one :meth:`check_once` per
        ``new_data_check_interval`` seconds, sooner while a new file is settling."""
        with self._lock:
            if self.is_active:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"retrain-trigger-{self.model_name}",
                                            daemon=True)
            self._thread.start()

    def stop_monitoring(self, timeout: float | None = 10.0) -> None:
        """Stop the loop. A retrain already running is left to finish (see :meth:`wait_for_run`)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def wake(self) -> None:
        """Make the loop check now instead of at the end of its wait."""
        self._wake.set()

    def wait_for_run(self, timeout: float | None = None) -> bool:
        """Wait for runs started in the background; True when none is left running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for done in list(self._runs):
            done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._runs = [d for d in self._runs if not d.is_set()]
        return not self._runs

    def _work(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            except BaseException:  # noqa: BLE001 - _execute already recorded the run as failed;
                # the worker must survive to run the next one.
                log.exception("retrain worker of %s", self.model_name)
            finally:
                done.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad check; the
                # error is logged with its traceback and exposed as last_error.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("retraining check failed for %s", self.model_name)
            if self._stop.is_set():
                break
            delay = float(self.config.new_data_check_interval)
            if self._scanner.unsettled:
                delay = min(delay, float(self.config.file_settle_seconds) or delay)
            if self._sleep is not None:
                self._sleep(delay)
            else:
                self._wake.wait(delay)
                self._wake.clear()

    # ------------------------------------------------------------------ evidence
    def _summary_hours(self, now: float) -> int:
        # Look back no further than the last successful retrain (what happened before it was the
        # old model's problem), at least one hour, at most a day.
        last = self._store.last_success()
        if last is None:
            return 24
        since = (now - (last["finished_at"] or last["started_at"])) / 3600.0
        return int(min(24, max(1, math.ceil(since))))

    def _monitor_evidence(self, now: float) -> dict[str, Any]:
        monitor = self.production_monitor
        if monitor is None:
            return {}
        try:
            summary = monitor.get_monitoring_summary(hours=self._summary_hours(now)) or {}
        except Exception as exc:  # noqa: BLE001 - a monitor that cannot answer gives no evidence;
            # it must not stop data-arrival and time-based triggers.
            log.warning("production monitor summary failed for %s: %s", self.model_name, exc)
            return {}
        baseline = getattr(monitor, "baseline_metrics", None)
        baseline_accuracy = _number(baseline.get("accuracy")) if isinstance(baseline, dict) else None
        predictions = _number(summary.get("total_predictions"))
        labelled = _number(summary.get("labelled_predictions"))
        baseline_n = _number(baseline.get("accuracy_n")) if isinstance(baseline, dict) else None
        return {
            "total_predictions": int(predictions) if predictions is not None else None,
            "accuracy": _number(summary.get("avg_accuracy")),
            "baseline_accuracy": baseline_accuracy,
            "labelled": int(labelled) if labelled is not None else None,
            "baseline_labelled": int(baseline_n) if baseline_n else None,
            "drift_score": _number(summary.get("avg_drift_score")),
            "error_rate": _number(summary.get("avg_error_rate")),
            "data_quality": _number(summary.get("avg_data_quality")),
        }

    def gather_evidence(self, now: float | None = None) -> policy.Evidence:
        """Scan the data folders and ask the monitor: the inputs of one decision."""
        now = self._now() if now is None else now
        new_samples = self._scanner.scan(now) if self.config.data_directories else 0
        return policy.Evidence(new_samples=new_samples, first_start=self._first_start,
                               **self._monitor_evidence(now))

    # ------------------------------------------------------------------ deciding
    def check_once(self, now: float | datetime | None = None, *, wait: bool = False) -> policy.Decision:
        """One evaluation: start approved triggers that the limits now allow, otherwise gather
        evidence, decide and act (start a run, record a block, or ask for approval).
        The run happens in a worker thread; ``wait=True`` waits for it."""
        now = self._now() if now is None else _epoch(now)
        self._reap_stale_runs(now)
        evidence = self.gather_evidence(now)
        with self._lock:
            started = self._start_next_approved(now, evidence, coalesce=True)
            if started is not None:
                decision, event_id, snapshot = started
            else:
                decision, event_id, snapshot = self._decide_and_record(evidence, now, coalesce=True)
        if decision.action == policy.RUN and event_id is not None:
            self._launch(event_id, decision.trigger_type or "", decision.reason, snapshot, wait=wait)
        return decision

    def _previous_version(self, conn) -> str | None:
        last = self._store.last_success(conn)
        return last["new_model_version"] if last else None

    def _decide_and_record(self, evidence: policy.Evidence, now: float, *, coalesce: bool
                           ) -> tuple[policy.Decision, int | None, dict[str, int]]:
        store = self._store
        with store.transaction() as conn:
            history = store.history(now, conn)
            decision = policy.decide(evidence, history, self.config, now)
            if decision.action == policy.NONE:
                return decision, None, {}
            base = {
                "timestamp": now, "trigger_type": decision.trigger_type,
                "trigger_reason": decision.reason, "data_size": evidence.new_samples,
                "performance_before": evidence.accuracy,
                "previous_model_version": self._previous_version(conn),
            }
            payload = {"trigger_type": decision.trigger_type, "reason": decision.reason,
                       "candidates": [list(c) for c in decision.candidates],
                       "evidence": asdict(evidence)}
            if decision.action == policy.BLOCKED:
                key = (decision.trigger_type or "", decision.block_code or "")
                previous = self._block_records.get(key)
                if coalesce and previous is not None and \
                        now - previous[0] < self.config.blocked_record_interval_seconds:
                    conn.execute("UPDATE retrain_events SET suppressed_repeats = suppressed_repeats + 1 "
                                 "WHERE id=?", (previous[1],))
                    return decision, None, {}
                event_id = store.insert_event(conn, **base, status=rs.BLOCKED, block_code=decision.block_code,
                                              block_reason=decision.block_reason,
                                              error_message=f"blocked: {decision.block_reason}")
                store.record(conn, now, "blocked", event_id,
                             {**payload, "block_code": decision.block_code,
                              "block_reason": decision.block_reason})
                self._block_records[key] = (now, event_id)
                return decision, event_id, {}
            if decision.action == policy.AWAIT_APPROVAL:
                event_id = store.insert_event(conn, **base, status=rs.PENDING_APPROVAL)
                store.record(conn, now, "approval_requested", event_id, payload)
                return decision, event_id, {}
            event_id = store.insert_event(conn, **base, status=rs.RUNNING)
            store.record(conn, now, "triggered", event_id, payload)
            snapshot = self._begin_run(conn, event_id, now)
            return decision, event_id, snapshot

    def _begin_run(self, conn, event_id: int, now: float) -> dict[str, int]:
        runner = "handler" if self.retraining_handler is not None else (
            "command" if self.config.retrain_command else "none")
        snapshot = self._store.file_totals(conn)
        self._store.update_event(conn, event_id, status=rs.RUNNING, started_at=now, runner=runner,
                                 owner_pid=os.getpid(), decided_by=_PROCESS_TOKEN)
        self._store.record(conn, now, "run_started", event_id,
                           {"runner": runner, "pid": os.getpid(),
                            "command": self.config.retrain_command if runner == "command" else None,
                            "data_files": len(snapshot)})
        return snapshot

    def _start_next_approved(self, now: float, evidence: policy.Evidence, *, coalesce: bool,
                             only_event: int | None = None
                             ) -> tuple[policy.Decision, int | None, dict[str, int]] | None:
        """Start the oldest approved trigger if the limits allow (returns None when there is none)."""
        store = self._store
        with store.transaction() as conn:
            approved = [e for e in store.events_with_status([rs.APPROVED], conn)
                        if only_event is None or e["id"] == only_event]
            if not approved:
                return None
            event = approved[0]
            pending = policy.PendingTrigger(event["id"], event["trigger_type"], rs.APPROVED)
            decision = policy.decide_pending(pending, event["trigger_reason"], store.history(now, conn),
                                             self.config, now)
            if decision.action == policy.BLOCKED:
                key = (f"approved:{event['id']}", decision.block_code or "")
                previous = self._block_records.get(key)
                if not (coalesce and previous is not None
                        and now - previous[0] < self.config.blocked_record_interval_seconds):
                    store.update_event(conn, event["id"], block_code=decision.block_code,
                                       block_reason=decision.block_reason)
                    store.record(conn, now, "blocked", event["id"],
                                 {"trigger_type": event["trigger_type"], "approved": True,
                                  "block_code": decision.block_code, "block_reason": decision.block_reason})
                    self._block_records[key] = (now, event["id"])
                return decision, None, {}
            store.update_event(conn, event["id"], data_size=evidence.new_samples, block_code=None,
                               block_reason=None)
            snapshot = self._begin_run(conn, event["id"], now)
            return decision, event["id"], snapshot

    # ------------------------------------------------------------------ running
    def _launch(self, event_id: int, trigger_type: str, reason: str, snapshot: dict[str, int], *,
                wait: bool) -> bool | None:
        if wait:
            return self._execute(event_id, trigger_type, reason, snapshot)
        done = threading.Event()
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name=f"retrain-run-{self.model_name}",
                                                daemon=True)
                self._worker.start()
            self._runs = [d for d in self._runs if not d.is_set()] + [done]
            self._jobs.put((lambda: self._execute(event_id, trigger_type, reason, snapshot), done))
        return None

    def _execute(self, event_id: int, trigger_type: str, reason: str, snapshot: dict[str, int]) -> bool:
        began = time.perf_counter()
        try:
            if self.retraining_handler is not None:
                outcome = self._run_handler(trigger_type, reason)
            elif self.config.retrain_command:
                outcome = self._run_command(event_id, trigger_type, reason)
            else:
                outcome = _Outcome(False, "no retraining handler or command configured")
        except BaseException as exc:  # a bug of ours must still close the run as failed
            outcome = _Outcome(False, f"{type(exc).__name__}: {exc}", output_tail=_tail(traceback.format_exc()))
            self._finish(event_id, outcome, time.perf_counter() - began, snapshot)
            raise
        self._finish(event_id, outcome, time.perf_counter() - began, snapshot)
        return outcome.success

    def _run_handler(self, trigger_type: str, reason: str) -> _Outcome:
        handler = self.retraining_handler
        assert handler is not None
        try:
            result = handler(trigger_type, reason)
        except Exception as exc:  # noqa: BLE001 - the user's handler failing is a failed run,
            # recorded with its traceback.
            return _Outcome(False, f"handler raised {type(exc).__name__}: {exc}",
                            output_tail=_tail(traceback.format_exc()))
        if isinstance(result, dict):
            ok = bool(result.get("success"))
            return _Outcome(ok, None if ok else str(result.get("error_message") or "handler reported failure"),
                            new_model_version=_str_or_none(result.get("new_model_version")),
                            performance_after=_number(result.get("performance_after")))
        if result is None:
            return _Outcome(False, "handler returned None (expected True or False)")
        if bool(result):
            return _Outcome(True)
        return _Outcome(False, "handler returned False")

    def _run_command(self, event_id: int, trigger_type: str, reason: str) -> _Outcome:
        values = {"{trigger_type}": trigger_type, "{reason}": reason, "{model_name}": self.model_name,
                  "{event_id}": str(event_id)}
        argv = []
        for arg in self.config.retrain_command or ():
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            argv.append(arg)
        env = {**os.environ, "MLOPS_MODEL_NAME": self.model_name, "MLOPS_TRIGGER_TYPE": trigger_type,
               "MLOPS_TRIGGER_REASON": reason, "MLOPS_RETRAIN_EVENT_ID": str(event_id)}
        log_dir = model_dir(self.model_name) / "retrain-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{event_id}.log"
        timeout = float(self.config.retrain_timeout_seconds)
        with log_path.open("wb") as out:
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
            except OSError as exc:
                return _Outcome(False, f"command could not start: {exc}", extra={"log": str(log_path)})
            try:
                status = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                status = proc.wait()
        tail = _read_tail(log_path)
        if timed_out:
            return _Outcome(False, f"command timed out after {timeout:g} s and was killed", exit_status=status,
                            output_tail=tail, extra={"log": str(log_path)})
        if status != 0:
            return _Outcome(False, f"command exited with status {status}", exit_status=status,
                            output_tail=tail, extra={"log": str(log_path)})
        return _Outcome(True, exit_status=0, output_tail=tail, extra={"log": str(log_path)})

    def _finish(self, event_id: int, outcome: _Outcome, duration: float, snapshot: dict[str, int]) -> None:
        now = self._now()
        store = self._store
        with store.transaction() as conn:
            store.update_event(
                conn, event_id, status=rs.SUCCEEDED if outcome.success else rs.FAILED,
                success=int(outcome.success), error_message=outcome.error_message, finished_at=now,
                duration_seconds=duration, exit_status=outcome.exit_status, output_tail=outcome.output_tail,
                new_model_version=outcome.new_model_version, performance_after=outcome.performance_after,
            )
            if outcome.success:
                store.consume_rows(conn, snapshot)
            store.record(conn, now, "run_succeeded" if outcome.success else "run_failed", event_id, {
                "success": outcome.success, "error_message": outcome.error_message,
                "duration_seconds": round(duration, 6), "exit_status": outcome.exit_status,
                "output_tail": outcome.output_tail, "new_model_version": outcome.new_model_version,
                "performance_after": outcome.performance_after, **outcome.extra,
            })
        if self.tracker.enabled:
            self.tracker.retrain_run(self.model_name, _history_row(store.get_event(event_id)))
        if not outcome.success:
            log.warning("retrain %s of %s failed: %s", event_id, self.model_name, outcome.error_message)

    def _reap_stale_runs(self, now: float) -> None:
        """Close as failed the runs left "running" by a process that no longer exists."""
        for event in self._store.events_with_status([rs.RUNNING]):
            pid, token = event["owner_pid"], event["decided_by"]
            if token == _PROCESS_TOKEN:
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                with self._store.transaction() as conn:
                    current = self._store.get_event(event["id"], conn)
                    if current is None or current["status"] != rs.RUNNING:
                        continue
                    message = f"interrupted: the process that ran it (pid {pid}) exited"
                    self._store.update_event(conn, event["id"], status=rs.FAILED, success=0,
                                             error_message=message, finished_at=now)
                    self._store.record(conn, now, "run_failed", event["id"],
                                       {"success": False, "error_message": message})

    # ------------------------------------------------------------------ user actions
    def force_retrain(self, reason: str = "Manual trigger") -> bool:
        """Retrain now on a ``manual`` trigger, synchronously; True only if the run succeeded.
        The limits still apply (this is what alert handlers call, so it must not cause a storm):
        a blocked request is recorded and returns False; with ``require_manual_approval`` it
        becomes a pending approval and returns False."""
        now = self._now()
        self._reap_stale_runs(now)
        # Only the manual request qualifies: a forced run is attributed to the human who asked.
        evidence = policy.Evidence(
            manual_reason=str(reason) if reason is not None else "Manual trigger",
            accuracy=self._monitor_evidence(now).get("accuracy"),
            new_samples=sum(self._store.pending_rows().values()),
        )
        with self._lock:
            decision, event_id, snapshot = self._decide_and_record(evidence, now, coalesce=False)
        if decision.action != policy.RUN or event_id is None:
            return False
        return bool(self._launch(event_id, decision.trigger_type or policy.MANUAL, decision.reason,
                                 snapshot, wait=True))

    def approve(self, event_id: int, approved_by: str | None = None) -> bool:
        """Approve a pending trigger and start it now if the limits allow; True only if the run
        succeeded. If a limit blocks it, it stays approved and the loop starts it later."""
        self.mark_approved(event_id, approved_by)
        return self.run_approved(event_id)

    def mark_approved(self, event_id: int, approved_by: str | None = None) -> None:
        now = self._now()
        with self._store.transaction() as conn:
            event = self._store.get_event(int(event_id), conn)
            if event is None:
                raise KeyError(f"no retraining event {event_id}")
            if event["status"] != rs.PENDING_APPROVAL:
                raise ValueError(f"event {event_id} is not pending approval (status: {event['status']})")
            self._store.update_event(conn, event["id"], status=rs.APPROVED)
            self._store.record(conn, now, "approved", event["id"],
                               {"approved_by": approved_by or _whoami(), "trigger_type": event["trigger_type"]})

    def run_approved(self, event_id: int) -> bool:
        now = self._now()
        self._reap_stale_runs(now)
        evidence = policy.Evidence(new_samples=sum(self._store.pending_rows().values()))
        with self._lock:
            started = self._start_next_approved(now, evidence, coalesce=False, only_event=int(event_id))
        if started is None:
            raise ValueError(f"event {event_id} is not approved")
        decision, started_id, snapshot = started
        if decision.action != policy.RUN or started_id is None:
            return False
        return bool(self._launch(started_id, decision.trigger_type or "", decision.reason, snapshot, wait=True))

    def reject(self, event_id: int, reason: str = "Rejected", rejected_by: str | None = None) -> None:
        """Reject a pending (or approved, not yet started) trigger; recorded with the reason."""
        now = self._now()
        with self._store.transaction() as conn:
            event = self._store.get_event(int(event_id), conn)
            if event is None:
                raise KeyError(f"no retraining event {event_id}")
            if event["status"] not in rs.PENDING_STATUSES:
                raise ValueError(f"event {event_id} is not pending (status: {event['status']})")
            self._store.update_event(conn, event["id"], status=rs.REJECTED, success=0,
                                     error_message=f"rejected: {reason}")
            self._store.record(conn, now, "rejected", event["id"],
                               {"reason": reason, "rejected_by": rejected_by or _whoami(),
                                "trigger_type": event["trigger_type"]})

    def pending_approvals(self) -> list[dict[str, Any]]:
        """Triggers waiting for a human, and approved ones waiting for the limits, oldest first."""
        return [_history_row(e) for e in self._store.events_with_status(rs.PENDING_STATUSES)]

    def get_trigger_history(self, days: float = 7, *, include_blocked: bool = True) -> list[dict[str, Any]]:
        """Events of the last ``days`` days, newest first: the RetrainingEvent fields plus ``id``,
        ``status`` (blocked, pending_approval, approved, rejected, running, succeeded, failed),
        ``block_reason``, run timing, exit status and output tail."""
        since = self._now() - float(days) * policy.DAY_SECONDS
        return [_history_row(e) for e in self._store.events_since(since, include_blocked=include_blocked)]

    def get_trigger_events(self, days: float = 7) -> list[RetrainingEvent]:
        names = {f.name for f in fields(RetrainingEvent)}
        return [RetrainingEvent(**{k: v for k, v in row.items() if k in names})
                for row in self.get_trigger_history(days)]

    def status(self) -> dict[str, Any]:
        now = self._now()
        history = self._store.history(now)
        running = self._store.events_with_status([rs.RUNNING])
        last = self.last_retrain_time
        return {
            "model_name": self.model_name,
            "is_active": self.is_active,
            "last_retrain_time": last.isoformat() if last else None,
            "retrains_last_24h": policy.runs_in_window(history.runs, now),
            "max_retrains_per_day": self.config.max_retrains_per_day,
            "min_hours_between_retrains": self.config.min_hours_between_retrains,
            "running": [_history_row(e) for e in running],
            "pending_approvals": self.pending_approvals(),
            "pending_new_samples": sum(self._store.pending_rows().values()),
            "first_start": _iso(self._first_start),
            "last_error": self.last_error,
        }


def _read_tail(path: Path, limit: int = OUTPUT_TAIL_CHARS) -> str:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4 * limit))
        return _tail(fh.read().decode("utf-8", errors="replace"), limit)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _whoami() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or f"uid:{os.getuid()}"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _history_row(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event["id"],
        "timestamp": _iso(event["timestamp"]),
        "trigger_type": event["trigger_type"],
        "trigger_reason": event["trigger_reason"],
        "data_size": event["data_size"],
        "previous_model_version": event["previous_model_version"],
        "new_model_version": event["new_model_version"],
        "performance_before": event["performance_before"],
        "performance_after": event["performance_after"],
        "success": bool(event["success"]),
        "error_message": event["error_message"],
        "audit_event_id": event["audit_event_id"],
        "status": event["status"],
        "block_code": event["block_code"],
        "block_reason": event["block_reason"],
        "suppressed_repeats": event["suppressed_repeats"],
        "started_at": _iso(event["started_at"]),
        "finished_at": _iso(event["finished_at"]),
        "duration_seconds": event["duration_seconds"],
        "exit_status": event["exit_status"],
        "output_tail": event["output_tail"],
        "runner": event["runner"],
    }


def create_data_trigger(model_name: str, config: RetrainingTriggerConfig | dict[str, Any] | None = None,
                        production_monitor: Any = None, **kwargs: Any) -> DataDrivenRetrainingTrigger:
    """Build a trigger (``config`` may be a dict, e.g. the guide's YAML section)."""
    return DataDrivenRetrainingTrigger(model_name, config, production_monitor, **kwargs)


def load_stored_config(model_name: str) -> RetrainingTriggerConfig | None:
    """The config the model's trigger last ran with (used by the CLI)."""
    store = rs.RetrainStore(model_name)
    try:
        raw = store.get_meta("config")
    finally:
        store.close()
    return RetrainingTriggerConfig.from_dict(json.loads(raw)) if raw else None
