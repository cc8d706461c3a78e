"""Durable state of A/B experiments: definitions, lifecycle, predictions, outcomes and the running
per-arm counters the analysis reads.

Why it exists: an experiment must survive restarts and be shared by the threads (and processes) of
a server, and its analysis must be O(1): every prediction and outcome updates per-arm counters
(predictions, labelled outcomes, correct ones, the binary confusion counts, latency sum and sum of
squares, distinct users) in the same transaction that stores the row, so ``analyze`` never counts
raw rows (which costs 5 to 95 ms at a million rows).

User-level sums: the analysis unit is the user (the unit of randomisation), so every counted
prediction and outcome also updates, per (allocation phase, user, metric), the user's ``(n, s)`` and,
per (phase, arm, metric), the additive :class:`~mlops.core.ab_stats.RatioSums` (units, sum n, sum s,
sum n^2, sum s^2, sum n*s) in the same transaction. Metrics: ``accuracy`` (n labelled, s correct),
``precision`` (n predicted positive, s true positives), ``recall`` (n actual positive, s true
positives), ``latency`` (n predictions, s summed latency in ms; its units are the users exposed in
the phase, which the SRM check counts).

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

from mlops.core.ab_stats import RatioSums
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
    labelled_at REAL,
    phase INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS ab_unit_sums (
    experiment TEXT NOT NULL,
    phase INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    variant TEXT NOT NULL,
    n REAL NOT NULL DEFAULT 0,
    s REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, phase, user_id, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ab_arm_sums (
    experiment TEXT NOT NULL,
    phase INTEGER NOT NULL,
    variant TEXT NOT NULL,
    metric TEXT NOT NULL,
    units INTEGER NOT NULL DEFAULT 0,
    n REAL NOT NULL DEFAULT 0,
    s REAL NOT NULL DEFAULT 0,
    nn REAL NOT NULL DEFAULT 0,
    ss REAL NOT NULL DEFAULT 0,
    ns REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, phase, variant, metric)
) WITHOUT ROWID;
"""

USER_METRICS = ("accuracy", "precision", "recall", "latency")

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
    phase: int = 0


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ExperimentExists(ValueError):
    """An experiment with this name already exists."""


class ABStore:
    """SQLite persistence for ``ABTestingManager`` (one file, WAL, safe across threads)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = Database(path, SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Stores written before user-level sums: add the phase column and replay the counted rows
        into the user sums (phase 0), so old experiments are analysed per user too."""
        with self.db.transaction() as conn:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(ab_predictions)").fetchall()}
            if "phase" in columns:
                return
            conn.execute("ALTER TABLE ab_predictions ADD COLUMN phase INTEGER NOT NULL DEFAULT 0")
            rows = conn.execute(
                "SELECT experiment, user_id, variant, prediction, latency_ms, labelled, true_label FROM ab_predictions"
                " WHERE counted = 1 ORDER BY seq"
            ).fetchall()
            for row in rows:
                self._add_units(conn, [(row["experiment"], 0, row["user_id"], row["variant"], "latency", 1.0,
                                        float(row["latency_ms"]))])
                if row["labelled"]:
                    pred = json.loads(row["prediction"]) if row["prediction"] else None
                    label = json.loads(row["true_label"]) if row["true_label"] else None
                    self._add_outcome(conn, row["experiment"], 0, row["user_id"], row["variant"],
                                      score_outcome(pred, label))

    def _add_outcome(self, conn: sqlite3.Connection, experiment: str, phase: int, user: str, variant: str,
                     inc: dict[str, int]) -> None:
        items = [(experiment, phase, user, variant, "accuracy", 1.0, float(inc["correct"]))]
        if inc["tp"] or inc["fp"]:
            items.append((experiment, phase, user, variant, "precision", 1.0, float(inc["tp"])))
        if inc["tp"] or inc["fn"]:
            items.append((experiment, phase, user, variant, "recall", 1.0, float(inc["tp"])))
        self._add_units(conn, items)

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
                " latency_ms, created_at, phase) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.experiment, rec.user_id, rec.variant, int(rec.counted), rec.model_version,
                 json.dumps(to_jsonable(rec.prediction)), rec.latency_ms, rec.created_at, int(rec.phase)),
            )
            self._count_many(conn, [rec])

    def record_predictions(self, records: Iterable[PredictionRecord]) -> int:
        """Many predictions in one transaction (the model server's group commit), counted exactly as
        ``record_prediction`` one by one (per-user units per phase included). Idempotent: a record whose
        id is already stored (a retried batch) is skipped. Returns how many were new."""
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
                " latency_ms, created_at, phase) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.experiment, r.user_id, r.variant, int(r.counted), r.model_version,
                  json.dumps(to_jsonable(r.prediction)), r.latency_ms, r.created_at, int(r.phase)) for r in fresh],
            )
            self._count_many(conn, fresh)
        return len(fresh)

    def _count_many(self, conn: sqlite3.Connection, records: list[PredictionRecord]) -> None:
        """Count a batch of predictions (exposures, per-arm counters, per-user latency units) with a
        handful of statements instead of ~7 per record (the A/B recorder thread shares the GIL with the
        server's event loop). Exactly the sums of counting one record at a time: per-user increments
        of one batch telescope (``n^2`` after minus before), and a user is new when the batch's first
        record of it is. A user whose variant changes inside one batch (not sticky) is counted one
        record at a time."""
        counted = [r for r in records if r.counted]
        if not counted:
            return
        variants: dict[tuple[str, int, str], str] = {}
        for rec in counted:
            if variants.setdefault((rec.experiment, rec.phase, rec.user_id), rec.variant) != rec.variant:
                for one in counted:
                    self._count_many(conn, [one])
                return
        first: dict[tuple[str, str], PredictionRecord] = {}
        for rec in counted:
            first.setdefault((rec.experiment, rec.user_id), rec)
        known: set[tuple[str, str]] = set()
        by_experiment: dict[str, list[str]] = {}
        for experiment, user in first:
            by_experiment.setdefault(experiment, []).append(user)
        for experiment, users in by_experiment.items():
            for chunk in _chunks(users, 500):
                known.update((experiment, row[0]) for row in conn.execute(
                    f"SELECT user_id FROM ab_exposures WHERE experiment = ? AND user_id IN ({','.join('?' * len(chunk))})",
                    [experiment, *chunk]))
        new_users = [rec for key, rec in first.items() if key not in known]
        conn.executemany(
            "INSERT INTO ab_exposures(experiment, user_id, variant, share, first_seen) VALUES (?, ?, ?, ?, ?)",
            [(r.experiment, r.user_id, r.variant, r.share, r.created_at) for r in new_users])
        counters: dict[tuple[str, str], list[float]] = {}
        for rec in counted:
            c = counters.setdefault((rec.experiment, rec.variant), [0, 0, 0.0, 0.0])
            c[1] += 1
            c[2] += rec.latency_ms
            c[3] += rec.latency_ms * rec.latency_ms
        shares: dict[str, float] = {}
        for rec in new_users:
            counters[(rec.experiment, rec.variant)][0] += 1
            shares[rec.experiment] = shares.get(rec.experiment, 0.0) + rec.share
        conn.executemany(
            "UPDATE ab_counters SET users = users + ?, predictions = predictions + ?,"
            " latency_sum = latency_sum + ?, latency_sumsq = latency_sumsq + ? WHERE experiment = ? AND variant = ?",
            [(int(c[0]), int(c[1]), c[2], c[3], e, v) for (e, v), c in counters.items()])
        conn.executemany("UPDATE ab_experiments SET share_sum = share_sum + ? WHERE name = ?",
                         [(share, e) for e, share in shares.items()])
        self._add_units(conn, [(r.experiment, int(r.phase), r.user_id, r.variant, "latency", 1.0, float(r.latency_ms))
                               for r in counted])

    @staticmethod
    def _add_units(conn: sqlite3.Connection, items: list[tuple[str, int, str, str, str, float, float]]) -> None:
        """Add each ``(dn, ds)`` to its user's sums and update the arms' RatioSums incrementally (each
        key's variant fixed within the batch)."""
        sums: dict[tuple[str, int, str, str], list[Any]] = {}
        for experiment, phase, user, variant, metric, dn, ds in items:
            entry = sums.setdefault((experiment, phase, metric, user), [variant, 0.0, 0.0])
            entry[1] += dn
            entry[2] += ds
        old: dict[tuple[str, int, str, str], tuple[float, float]] = {}
        groups: dict[tuple[str, int, str], list[str]] = {}
        for experiment, phase, metric, user in sums:
            groups.setdefault((experiment, phase, metric), []).append(user)
        for (experiment, phase, metric), users in groups.items():
            for chunk in _chunks(users, 500):
                for row in conn.execute(
                        "SELECT user_id, n, s FROM ab_unit_sums WHERE experiment = ? AND phase = ? AND metric = ?"
                        f" AND user_id IN ({','.join('?' * len(chunk))})", [experiment, phase, metric, *chunk]):
                    old[(experiment, phase, metric, row[0])] = (float(row[1]), float(row[2]))
        rows, arms = [], {}
        for key, (variant, dn, ds) in sums.items():
            experiment, phase, metric, user = key
            old_n, old_s = old.get(key, (0.0, 0.0))
            new_n, new_s = old_n + dn, old_s + ds
            rows.append((experiment, phase, user, metric, variant, new_n, new_s))
            arm = arms.setdefault((experiment, phase, variant, metric), [0, 0.0, 0.0, 0.0, 0.0, 0.0])
            arm[0] += 1 if old_n <= 0 < new_n else 0
            arm[1] += dn
            arm[2] += ds
            arm[3] += new_n * new_n - old_n * old_n
            arm[4] += new_s * new_s - old_s * old_s
            arm[5] += new_n * new_s - old_n * old_s
        conn.executemany("INSERT OR REPLACE INTO ab_unit_sums(experiment, phase, user_id, metric, variant, n, s)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT OR IGNORE INTO ab_arm_sums(experiment, phase, variant, metric) VALUES (?, ?, ?, ?)",
                         list(arms))
        conn.executemany(
            "UPDATE ab_arm_sums SET units = units + ?, n = n + ?, s = s + ?, nn = nn + ?, ss = ss + ?, ns = ns + ?"
            " WHERE experiment = ? AND phase = ? AND variant = ? AND metric = ?",
            [(int(a[0]), *a[1:], *key) for key, a in arms.items()])

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
        self._add_outcome(conn, row["experiment"], int(row["phase"]), row["user_id"], row["variant"], inc)

    def record_outcome(self, experiment: str, prediction_id: str, true_label: Any, now: float) -> bool:
        """Label one prediction by id; False when unknown, of another experiment, or already labelled."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT seq, experiment, user_id, variant, counted, prediction, phase FROM ab_predictions"
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
                    "SELECT seq, experiment, user_id, variant, counted, prediction, phase FROM ab_predictions"
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

    def phase_sums(self, experiment: str) -> dict[int, dict[str, dict[str, RatioSums]]]:
        """``{phase: {variant: {metric: RatioSums}}}`` (users as units) for every phase with data."""
        rows = self.db.query("SELECT * FROM ab_arm_sums WHERE experiment = ?", (experiment,))
        out: dict[int, dict[str, dict[str, RatioSums]]] = {}
        for r in rows:
            arms = out.setdefault(int(r["phase"]), {v: {} for v in VARIANTS})
            arms.setdefault(r["variant"], {})[r["metric"]] = RatioSums(
                int(r["units"]), float(r["n"]), float(r["s"]), float(r["nn"]), float(r["ss"]), float(r["ns"]))
        return out

    def get_prediction(self, prediction_id: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM ab_predictions WHERE id = ?", (prediction_id,))
        return dict(rows[0]) if rows else None

    def close(self) -> None:
        self.db.close()
