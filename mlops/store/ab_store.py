"""Durable state of A/B experiments: definitions, lifecycle, predictions, outcomes and the running
per-arm counters the analysis reads.

Why it exists: an experiment must survive restarts and be shared by the threads (and processes) of
a server, and its analysis must be O(1): every prediction and outcome updates per-arm counters
(predictions, labelled outcomes, correct ones, the binary confusion counts, latency sum and sum of
squares, distinct users) in the same transaction that stores the row, so ``analyze`` never counts
raw rows (which costs 5 to 95 ms at a million rows).

Outcomes join to a prediction by its id, or by user id: the **oldest unlabelled** prediction of that
user in that experiment (insertion order). Only predictions counted in an arm (inside the segment,
experiment running) move the counters; the others are stored so their ids stay valid.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlops.store.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS ab_experiments (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    paused_at REAL,
    ended_at REAL,
    end_reason TEXT,
    share_sum REAL NOT NULL DEFAULT 0,
    sequential_state TEXT NOT NULL DEFAULT '{}',
    final_result TEXT
);
CREATE TABLE IF NOT EXISTS ab_predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    experiment TEXT NOT NULL REFERENCES ab_experiments(name) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    counted INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    prediction TEXT,
    latency_ms REAL NOT NULL,
    created_at REAL NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0,
    true_label TEXT,
    labelled_at REAL
);
CREATE INDEX IF NOT EXISTS ab_predictions_unlabelled
    ON ab_predictions(experiment, user_id, seq) WHERE labelled = 0;
CREATE TABLE IF NOT EXISTS ab_exposures (
    experiment TEXT NOT NULL,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    share REAL NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (experiment, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ab_counters (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    users INTEGER NOT NULL DEFAULT 0,
    predictions INTEGER NOT NULL DEFAULT 0,
    latency_sum REAL NOT NULL DEFAULT 0,
    latency_sumsq REAL NOT NULL DEFAULT 0,
    labelled INTEGER NOT NULL DEFAULT 0,
    correct INTEGER NOT NULL DEFAULT 0,
    tp INTEGER NOT NULL DEFAULT 0,
    fp INTEGER NOT NULL DEFAULT 0,
    fn INTEGER NOT NULL DEFAULT 0,
    tn INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, variant)
) WITHOUT ROWID;
"""

VARIANTS = ("control", "treatment")
COUNTER_FIELDS = ("users", "predictions", "latency_sum", "latency_sumsq", "labelled", "correct", "tp", "fp", "fn", "tn")


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and sets -> plain JSON values."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _normalise_label(value: Any) -> Any:
    value = to_jsonable(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def score_outcome(prediction: Any, true_label: Any) -> dict[str, int]:
    """Counter increments for one labelled prediction: correct, and confusion counts when binary (0/1)."""
    pred, label = _normalise_label(prediction), _normalise_label(true_label)
    inc = {"labelled": 1, "correct": int(pred == label), "tp": 0, "fp": 0, "fn": 0, "tn": 0}
    if pred in (0, 1) and label in (0, 1) and not isinstance(pred, str) and not isinstance(label, str):
        key = {(1, 1): "tp", (1, 0): "fp", (0, 1): "fn", (0, 0): "tn"}[(pred, label)]
        inc[key] = 1
    return inc


@dataclass(frozen=True)
class PredictionRecord:
    id: str
    experiment: str
    user_id: str
    variant: str
    counted: bool
    model_version: str
    prediction: Any
    latency_ms: float
    created_at: float
    share: float


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ExperimentExists(ValueError):
    """An experiment with this name already exists."""


class ABStore:
    """SQLite persistence for ``ABTestingManager`` (one file, WAL, safe across threads)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = Database(path, SCHEMA)

    # -- experiments
    def create_experiment(self, name: str, config: dict[str, Any], created_at: float) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO ab_experiments(name, config, status, created_at) VALUES (?, ?, 'draft', ?)",
                    (name, json.dumps(to_jsonable(config)), created_at),
                )
                conn.executemany(
                    "INSERT INTO ab_counters(experiment, variant) VALUES (?, ?)", [(name, v) for v in VARIANTS]
                )
        except sqlite3.IntegrityError:
            raise ExperimentExists(f"experiment {name!r} already exists") from None

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM ab_experiments WHERE name = ?", (name,))
        return dict(rows[0]) if rows else None

    def list_experiments(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query("SELECT * FROM ab_experiments ORDER BY created_at, name")]

    def transition(self, name: str, allowed_from: Iterable[str], status: str, **fields: Any) -> bool:
        """Atomically move ``name`` to ``status`` if its current status is in ``allowed_from``."""
        allowed = tuple(allowed_from)
        sets = ", ".join(["status = ?"] + [f"{k} = ?" for k in fields])
        marks = ", ".join("?" for _ in allowed)
        with self.db.transaction() as conn:
            cur = conn.execute(
                f"UPDATE ab_experiments SET {sets} WHERE name = ? AND status IN ({marks})",
                (status, *fields.values(), name, *allowed),
            )
            return cur.rowcount == 1

    def save_sequential_state(self, name: str, state: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE ab_experiments SET sequential_state = ? WHERE name = ?",
                (json.dumps(to_jsonable(state)), name),
            )

    # -- predictions and outcomes
    def record_prediction(self, rec: PredictionRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO ab_predictions(id, experiment, user_id, variant, counted, model_version, prediction,"
                " latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.experiment, rec.user_id, rec.variant, int(rec.counted), rec.model_version,
                 json.dumps(to_jsonable(rec.prediction)), rec.latency_ms, rec.created_at),
            )
            self._count(conn, rec)

    def record_predictions(self, records: Iterable[PredictionRecord]) -> int:
        """Many predictions in one transaction (the model server's group commit): one multi-row insert
        per table and one counter update per (experiment, variant), the same totals as
        ``record_prediction`` one by one. Idempotent: a record whose id is already stored (a retried
        batch) is skipped. Returns how many were new."""
        records = list(records)
        if not records:
            return 0
        with self.db.transaction() as conn:
            existing: set[str] = set()
            for chunk in _chunks([r.id for r in records], 500):
                marks = ",".join("?" * len(chunk))
                existing.update(row[0] for row in conn.execute(
                    f"SELECT id FROM ab_predictions WHERE id IN ({marks})", chunk))
            fresh, seen = [], set(existing)
            for rec in records:
                if rec.id not in seen:
                    seen.add(rec.id)
                    fresh.append(rec)
            conn.executemany(
                "INSERT INTO ab_predictions(id, experiment, user_id, variant, counted, model_version, prediction,"
                " latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.experiment, r.user_id, r.variant, int(r.counted), r.model_version,
                  json.dumps(to_jsonable(r.prediction)), r.latency_ms, r.created_at) for r in fresh],
            )
            counted = [r for r in fresh if r.counted]
            by_experiment: dict[str, list[PredictionRecord]] = {}
            for rec in counted:
                by_experiment.setdefault(rec.experiment, []).append(rec)
            for experiment, recs in by_experiment.items():
                # New users: first exposure in this batch of a user not yet exposed (first one wins).
                users = list(dict.fromkeys(r.user_id for r in recs))
                known: set[str] = set()
                for chunk in _chunks(users, 500):
                    marks = ",".join("?" * len(chunk))
                    known.update(row[0] for row in conn.execute(
                        f"SELECT user_id FROM ab_exposures WHERE experiment = ? AND user_id IN ({marks})",
                        [experiment, *chunk]))
                first: dict[str, PredictionRecord] = {}
                for rec in recs:
                    if rec.user_id not in known and rec.user_id not in first:
                        first[rec.user_id] = rec
                conn.executemany(
                    "INSERT INTO ab_exposures(experiment, user_id, variant, share, first_seen) VALUES (?, ?, ?, ?, ?)",
                    [(experiment, r.user_id, r.variant, r.share, r.created_at) for r in first.values()],
                )
                totals: dict[str, list[float]] = {}
                for rec in recs:
                    t = totals.setdefault(rec.variant, [0, 0, 0.0, 0.0])
                    t[1] += 1
                    t[2] += rec.latency_ms
                    t[3] += rec.latency_ms * rec.latency_ms
                for rec in first.values():
                    totals[rec.variant][0] += 1
                conn.executemany(
                    "UPDATE ab_counters SET users = users + ?, predictions = predictions + ?,"
                    " latency_sum = latency_sum + ?, latency_sumsq = latency_sumsq + ?"
                    " WHERE experiment = ? AND variant = ?",
                    [(int(t[0]), int(t[1]), t[2], t[3], experiment, variant) for variant, t in totals.items()],
                )
                if first:
                    conn.execute("UPDATE ab_experiments SET share_sum = share_sum + ? WHERE name = ?",
                                 (sum(r.share for r in first.values()), experiment))
        return len(fresh)

    @staticmethod
    def _count(conn: sqlite3.Connection, rec: PredictionRecord) -> None:
        if not rec.counted:
            return
        new_user = conn.execute(
            "INSERT OR IGNORE INTO ab_exposures(experiment, user_id, variant, share, first_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (rec.experiment, rec.user_id, rec.variant, rec.share, rec.created_at),
        ).rowcount
        conn.execute(
            "UPDATE ab_counters SET users = users + ?, predictions = predictions + 1,"
            " latency_sum = latency_sum + ?, latency_sumsq = latency_sumsq + ?"
            " WHERE experiment = ? AND variant = ?",
            (new_user, rec.latency_ms, rec.latency_ms * rec.latency_ms, rec.experiment, rec.variant),
        )
        if new_user:
            conn.execute(
                "UPDATE ab_experiments SET share_sum = share_sum + ? WHERE name = ?", (rec.share, rec.experiment)
            )

    def _label(self, conn: sqlite3.Connection, row: sqlite3.Row, true_label: Any, now: float) -> None:
        conn.execute(
            "UPDATE ab_predictions SET labelled = 1, true_label = ?, labelled_at = ? WHERE seq = ?",
            (json.dumps(to_jsonable(true_label)), now, row["seq"]),
        )
        if not row["counted"]:
            return
        inc = score_outcome(json.loads(row["prediction"]) if row["prediction"] else None, true_label)
        conn.execute(
            "UPDATE ab_counters SET labelled = labelled + ?, correct = correct + ?, tp = tp + ?, fp = fp + ?,"
            " fn = fn + ?, tn = tn + ? WHERE experiment = ? AND variant = ?",
            (inc["labelled"], inc["correct"], inc["tp"], inc["fp"], inc["fn"], inc["tn"],
             row["experiment"], row["variant"]),
        )

    def record_outcome(self, experiment: str, prediction_id: str, true_label: Any, now: float) -> bool:
        """Label one prediction by id; False when unknown, of another experiment, or already labelled."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT seq, experiment, variant, counted, prediction FROM ab_predictions"
                " WHERE id = ? AND experiment = ? AND labelled = 0",
                (prediction_id, experiment),
            ).fetchall()
            if not rows:
                return False
            self._label(conn, rows[0], true_label, now)
            return True

    def record_outcomes_by_user(self, experiment: str, outcomes: Iterable[tuple[Any, Any]], now: float) -> int:
        """Label the oldest unlabelled prediction of each user; returns how many were matched."""
        matched = 0
        with self.db.transaction() as conn:
            for user_id, true_label in outcomes:
                rows = conn.execute(
                    "SELECT seq, experiment, variant, counted, prediction FROM ab_predictions"
                    " WHERE experiment = ? AND user_id = ? AND labelled = 0 ORDER BY seq LIMIT 1",
                    (experiment, str(user_id)),
                ).fetchall()
                if rows:
                    self._label(conn, rows[0], true_label, now)
                    matched += 1
        return matched

    def counters(self, experiment: str) -> dict[str, dict[str, float]]:
        rows = self.db.query("SELECT * FROM ab_counters WHERE experiment = ?", (experiment,))
        found = {r["variant"]: {f: r[f] for f in COUNTER_FIELDS} for r in rows}
        return {v: found.get(v, dict.fromkeys(COUNTER_FIELDS, 0)) for v in VARIANTS}

    def get_prediction(self, prediction_id: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM ab_predictions WHERE id = ?", (prediction_id,))
        return dict(rows[0]) if rows else None

    def close(self) -> None:
        self.db.close()
