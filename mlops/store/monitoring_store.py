"""Durable monitoring state of one model: one row per logged batch, the alert history and the
baseline (measured accuracy, data profile), in ``$MLOPS_HOME/<model>/monitoring.db``.

Why it exists: the original monitor kept its history in memory (and counted batches as
predictions); a restarted server forgot everything. Here each batch and the alerts it raised are
committed in one transaction before ``log_prediction_batch`` returns (WAL, so a SIGKILLed process
loses nothing it acknowledged), summaries are computed in SQL from counts (prediction-weighted,
labelled predictions only for accuracy), and retention is bounded by age and by row count.

Thread safety comes from :class:`mlops.store.sqlite.Database` (a connection per thread,
``BEGIN IMMEDIATE`` transactions); several processes may share the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlops.store.sqlite import Database, model_dir

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    prediction_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL DEFAULT 0,
    labelled_count INTEGER NOT NULL DEFAULT 0,
    correct_count INTEGER NOT NULL DEFAULT 0,
    accuracy REAL,
    precision REAL,
    recall REAL,
    f1_score REAL,
    latency_ms REAL,
    throughput_rps REAL,
    error_rate REAL,
    drift_score REAL,
    data_quality_score REAL,
    feature_drift_detected INTEGER NOT NULL DEFAULT 0,
    concept_drift_detected INTEGER NOT NULL DEFAULT 0,
    drifted_features TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS batches_ts ON batches (ts);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    alert_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    value REAL,
    threshold REAL,
    model_version TEXT,
    batch_id INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE INDEX IF NOT EXISTS alerts_type_ts ON alerts (alert_type, ts);
CREATE TABLE IF NOT EXISTS baseline (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"""

_BATCH_COLUMNS = (
    "ts", "model_version", "prediction_count", "error_count", "labelled_count", "correct_count",
    "accuracy", "precision", "recall", "f1_score", "latency_ms", "throughput_rps", "error_rate",
    "drift_score", "data_quality_score", "feature_drift_detected", "concept_drift_detected",
    "drifted_features",
)


@dataclass
class BatchRecord:
    ts: float
    model_version: str
    prediction_count: int
    error_count: int = 0
    labelled_count: int = 0
    correct_count: int = 0
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1_score: float | None = None
    latency_ms: float | None = None
    throughput_rps: float | None = None
    error_rate: float | None = None
    drift_score: float | None = None
    data_quality_score: float | None = None
    feature_drift_detected: bool = False
    concept_drift_detected: bool = False
    drifted_features: list[str] = field(default_factory=list)

    def _row(self) -> tuple:
        values = asdict(self)
        values["feature_drift_detected"] = int(self.feature_drift_detected)
        values["concept_drift_detected"] = int(self.concept_drift_detected)
        values["drifted_features"] = json.dumps(list(self.drifted_features))
        return tuple(values[c] for c in _BATCH_COLUMNS)


@dataclass
class AlertRecord:
    ts: float
    alert_type: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class WindowTotals:
    """Sums over the batches of a time window; ratios are derived so windows pool exactly."""

    batches: int
    predictions: int
    errors: int
    labelled: int
    correct: int
    latency_ms: float | None  # prediction-weighted mean
    drift_score: float | None  # prediction-weighted mean over batches where drift was measured
    data_quality: float | None  # prediction-weighted mean over batches where quality was measured
    precision: float | None  # labelled-weighted means
    recall: float | None
    f1_score: float | None
    drift_incidents: int  # batches with feature or concept drift

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def error_rate(self) -> float | None:
        attempts = self.predictions + self.errors
        return self.errors / attempts if attempts else None


class MonitoringStore:
    """The monitoring database of one model (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        retention_seconds: float = 30 * 24 * 3600,
        max_batches: int = 200_000,
        max_alerts: int = 50_000,
    ) -> None:
        if retention_seconds <= 0 or max_batches <= 0 or max_alerts <= 0:
            raise ValueError("retention_seconds, max_batches and max_alerts must be positive")
        self.model_name = model_name
        self.path = Path(path) if path is not None else model_dir(model_name) / "monitoring.db"
        self.retention_seconds = float(retention_seconds)
        self.max_batches = int(max_batches)
        self.max_alerts = int(max_alerts)
        self.db = Database(self.path, SCHEMA)

    # -- writes ---------------------------------------------------------------------------------

    def record_batch(
        self,
        batch: BatchRecord,
        alerts: Iterable[AlertRecord] = (),
        baseline_updates: Mapping[str, Any] | None = None,
    ) -> int:
        """Commit one batch, the alerts it raised and any baseline change atomically; returns the
        batch id. When this returns, the batch survives a killed process."""
        placeholders = ", ".join("?" for _ in _BATCH_COLUMNS)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) VALUES ({placeholders})", batch._row()
            )
            batch_id = int(cursor.lastrowid)
            self._insert_alerts(conn, alerts, batch_id)
            for key, value in (baseline_updates or {}).items():
                self._put_baseline(conn, key, value, batch.ts)
        return batch_id

    def record_alerts(self, alerts: Iterable[AlertRecord]) -> None:
        with self.db.transaction() as conn:
            self._insert_alerts(conn, alerts, None)

    def set_baseline(self, values: Mapping[str, Any], now: float, *, clear: Iterable[str] = ()) -> None:
        with self.db.transaction() as conn:
            for key in clear:
                conn.execute("DELETE FROM baseline WHERE key = ?", (key,))
            for key, value in values.items():
                self._put_baseline(conn, key, value, now)

    def prune(self, now: float) -> int:
        """Apply retention (age, then row caps); returns the number of rows deleted."""
        cutoff = now - self.retention_seconds
        with self.db.transaction() as conn:
            deleted = conn.execute("DELETE FROM batches WHERE ts < ?", (cutoff,)).rowcount
            deleted += conn.execute("DELETE FROM alerts WHERE ts < ?", (cutoff,)).rowcount
            for table, cap in (("batches", self.max_batches), ("alerts", self.max_alerts)):
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE id <= "
                    f"(SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (cap,),
                ).rowcount
        return deleted

    @staticmethod
    def _insert_alerts(conn, alerts: Iterable[AlertRecord], batch_id: int | None) -> None:
        conn.executemany(
            "INSERT INTO alerts (ts, alert_type, severity, message, value, threshold, model_version, batch_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (a.ts, a.alert_type, a.severity, a.message, a.value, a.threshold, a.model_version, batch_id)
                for a in alerts
            ],
        )

    @staticmethod
    def _put_baseline(conn, key: str, value: Any, now: float) -> None:
        conn.execute(
            "INSERT INTO baseline (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, json.dumps(value), now),
        )

    # -- reads ----------------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        return {row["key"]: json.loads(row["value"]) for row in self.db.query("SELECT key, value FROM baseline")}

    def window_totals(self, since: float, until: float | None = None) -> WindowTotals:
        """Totals over batches with ``since < ts <= until`` (``until`` open when None)."""
        upper = float("inf") if until is None else until
        row = self.db.query(
            """
            SELECT COUNT(*) AS batches,
                   COALESCE(SUM(prediction_count), 0) AS predictions,
                   COALESCE(SUM(error_count), 0) AS errors,
                   COALESCE(SUM(labelled_count), 0) AS labelled,
                   COALESCE(SUM(correct_count), 0) AS correct,
                   SUM(CASE WHEN latency_ms IS NOT NULL THEN latency_ms * prediction_count END) AS lat_sum,
                   SUM(CASE WHEN latency_ms IS NOT NULL THEN prediction_count END) AS lat_n,
                   SUM(CASE WHEN drift_score IS NOT NULL THEN drift_score * prediction_count END) AS drift_sum,
                   SUM(CASE WHEN drift_score IS NOT NULL THEN prediction_count END) AS drift_n,
                   SUM(CASE WHEN data_quality_score IS NOT NULL
                            THEN data_quality_score * prediction_count END) AS dq_sum,
                   SUM(CASE WHEN data_quality_score IS NOT NULL THEN prediction_count END) AS dq_n,
                   SUM(CASE WHEN precision IS NOT NULL THEN precision * labelled_count END) AS p_sum,
                   SUM(CASE WHEN recall IS NOT NULL THEN recall * labelled_count END) AS r_sum,
                   SUM(CASE WHEN f1_score IS NOT NULL THEN f1_score * labelled_count END) AS f_sum,
                   SUM(CASE WHEN precision IS NOT NULL THEN labelled_count END) AS prf_n,
                   COALESCE(SUM(CASE WHEN feature_drift_detected OR concept_drift_detected
                                     THEN 1 ELSE 0 END), 0) AS drift_incidents
            FROM batches WHERE ts > ? AND ts <= ?
            """,
            (since, upper),
        )[0]

        def ratio(num: float | None, den: float | None) -> float | None:
            return float(num) / float(den) if num is not None and den else None

        return WindowTotals(
            batches=int(row["batches"]),
            predictions=int(row["predictions"]),
            errors=int(row["errors"]),
            labelled=int(row["labelled"]),
            correct=int(row["correct"]),
            latency_ms=ratio(row["lat_sum"], row["lat_n"]),
            drift_score=ratio(row["drift_sum"], row["drift_n"]),
            data_quality=ratio(row["dq_sum"], row["dq_n"]),
            precision=ratio(row["p_sum"], row["prf_n"]),
            recall=ratio(row["r_sum"], row["prf_n"]),
            f1_score=ratio(row["f_sum"], row["prf_n"]),
            drift_incidents=int(row["drift_incidents"]),
        )

    def predictions_since(self, since: float) -> int:
        row = self.db.query("SELECT COALESCE(SUM(prediction_count), 0) AS n FROM batches WHERE ts > ?", (since,))
        return int(row[0]["n"])

    def labelled_since(self, since: float) -> tuple[int, int]:
        """``(labelled, correct)`` over batches with ``ts >= since``."""
        row = self.db.query(
            "SELECT COALESCE(SUM(labelled_count), 0) AS labelled, COALESCE(SUM(correct_count), 0) AS correct"
            " FROM batches WHERE ts >= ?",
            (since,),
        )[0]
        return int(row["labelled"]), int(row["correct"])

    def alert_counts(self, since: float) -> dict[str, int]:
        rows = self.db.query(
            "SELECT severity, COUNT(*) AS n FROM alerts WHERE ts > ? GROUP BY severity", (since,)
        )
        return {row["severity"]: int(row["n"]) for row in rows}

    def last_alerts(self) -> dict[str, tuple[float, str]]:
        """Latest ``(ts, severity)`` per alert type: the cooldown's memory, which survives restarts."""
        rows = self.db.query(
            "SELECT a.alert_type, a.ts, a.severity FROM alerts a JOIN "
            "(SELECT alert_type, MAX(id) AS id FROM alerts GROUP BY alert_type) m ON a.id = m.id"
        )
        return {row["alert_type"]: (float(row["ts"]), row["severity"]) for row in rows}

    def alerts(self, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Alert history, newest first."""
        rows = self.db.query(
            "SELECT id, ts, alert_type, severity, message, value, threshold, model_version, batch_id "
            "FROM alerts WHERE ts > ? ORDER BY id DESC LIMIT ?",
            (since, limit),
        )
        return [dict(row) for row in rows]

    def batches(self, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Batch rows, newest first."""
        rows = self.db.query(
            f"SELECT id, {', '.join(_BATCH_COLUMNS)} FROM batches WHERE ts > ? ORDER BY id DESC LIMIT ?",
            (since, limit),
        )
        out = []
        for row in rows:
            item = dict(row)
            item["feature_drift_detected"] = bool(item["feature_drift_detected"])
            item["concept_drift_detected"] = bool(item["concept_drift_detected"])
            item["drifted_features"] = json.loads(item["drifted_features"])
            out.append(item)
        return out

    def close(self) -> None:
        self.db.close()
