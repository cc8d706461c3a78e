"""Durable state of the retraining engine for one model: trigger events, a hash-chained
append-only audit log, pending approvals and the ledger of data files already counted.

Why a separate store: a retraining decision must survive the process that made it (a run that was
blocked, approved or failed is evidence for the next decision and for an auditor), several
processes share it (the trigger's loop, ``mlops retrain approve`` from a shell), and the audit log
must show tampering. Each audit row stores ``prev_hash`` and ``hash = sha256(prev_hash +
canonical JSON of the row)``; SQLite triggers refuse UPDATE and DELETE on it, and
:meth:`RetrainStore.verify_audit` finds the first entry that no longer matches its hash.

Everything here takes times as epoch seconds; the clock lives in the caller.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops.core.retrain_policy import History, PendingTrigger, RunRecord
from mlops.store.sqlite import Database, model_dir

GENESIS_HASH = "0" * 64
DB_FILENAME = "retrain.db"

# Event statuses. An event is one trigger and what became of it.
BLOCKED = "blocked"
PENDING_APPROVAL = "pending_approval"
APPROVED = "approved"
REJECTED = "rejected"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
PENDING_STATUSES = (PENDING_APPROVAL, APPROVED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS retrain_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp REAL NOT NULL,
    trigger_type TEXT NOT NULL,
    trigger_reason TEXT NOT NULL,
    status TEXT NOT NULL,
    data_size INTEGER NOT NULL DEFAULT 0,
    previous_model_version TEXT,
    new_model_version TEXT,
    performance_before REAL,
    performance_after REAL,
    success INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    block_code TEXT,
    block_reason TEXT,
    suppressed_repeats INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    duration_seconds REAL,
    exit_status INTEGER,
    output_tail TEXT,
    runner TEXT,
    owner_pid INTEGER,
    decided_by TEXT,
    audit_event_id INTEGER
);
CREATE INDEX IF NOT EXISTS retrain_events_ts ON retrain_events(timestamp);
CREATE INDEX IF NOT EXISTS retrain_events_status ON retrain_events(status);

CREATE TABLE IF NOT EXISTS retrain_audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    action TEXT NOT NULL,
    event_id INTEGER,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS retrain_audit_no_update BEFORE UPDATE ON retrain_audit
BEGIN SELECT RAISE(ABORT, 'retrain_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS retrain_audit_no_delete BEFORE DELETE ON retrain_audit
BEGIN SELECT RAISE(ABORT, 'retrain_audit is append-only'); END;

CREATE TABLE IF NOT EXISTS retrain_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    rows INTEGER,
    stable INTEGER NOT NULL DEFAULT 0,
    consumed_rows INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT
);

CREATE TABLE IF NOT EXISTS retrain_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

EVENT_COLUMNS = (
    "id", "timestamp", "trigger_type", "trigger_reason", "status", "data_size",
    "previous_model_version", "new_model_version", "performance_before", "performance_after",
    "success", "error_message", "block_code", "block_reason", "suppressed_repeats", "started_at",
    "finished_at", "duration_seconds", "exit_status", "output_tail", "runner", "owner_pid",
    "decided_by", "audit_event_id",
)


def canonical_json(value: Any) -> str:
    """One byte-exact JSON text per value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str)


def entry_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """sha256 over the previous hash and the canonical JSON of the row (without its hashes)."""
    body = {k: row[k] for k in ("id", "ts", "action", "event_id", "payload")}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class FileState:
    path: str
    size: int
    mtime_ns: int
    rows: int | None
    stable: bool
    consumed_rows: int


def db_path_for(model_name: str) -> Path:
    return model_dir(model_name) / DB_FILENAME


class RetrainStore:
    """The retraining state of one model in ``$MLOPS_HOME/<model>/retrain.db``."""

    def __init__(self, model_name: str, path: str | Path | None = None) -> None:
        self.model_name = model_name
        self.path = Path(path) if path is not None else db_path_for(model_name)
        self.db = Database(self.path, SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE``: decisions read history and write the outcome atomically, so two
        processes cannot both start a run."""
        with self.db.transaction() as conn:
            yield conn

    def _conn(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        return conn if conn is not None else self.db.conn

    # ----------------------------------------------------------------- meta
    def get_meta(self, key: str, conn: sqlite3.Connection | None = None) -> str | None:
        row = self._conn(conn).execute("SELECT value FROM retrain_meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str, *, only_if_missing: bool = False) -> str:
        """Store a value; with ``only_if_missing`` keep an existing one. Returns the stored value."""
        with self.transaction() as conn:
            verb = "INSERT OR IGNORE" if only_if_missing else "INSERT OR REPLACE"
            conn.execute(f"{verb} INTO retrain_meta(key, value) VALUES (?, ?)", (key, value))
            return conn.execute("SELECT value FROM retrain_meta WHERE key=?", (key,)).fetchone()["value"]

    # ---------------------------------------------------------------- audit
    def append_audit(self, conn: sqlite3.Connection, ts: float, action: str, event_id: int | None,
                     payload: dict[str, Any]) -> int:
        """Append one entry; call inside :meth:`transaction` so the chain cannot fork."""
        last = conn.execute("SELECT id, hash FROM retrain_audit ORDER BY id DESC LIMIT 1").fetchone()
        new_id = (last["id"] + 1) if last else 1
        prev_hash = last["hash"] if last else GENESIS_HASH
        row = {"id": new_id, "ts": float(ts), "action": action, "event_id": event_id,
               "payload": canonical_json(payload)}
        digest = entry_hash(prev_hash, row)
        conn.execute(
            "INSERT INTO retrain_audit(id, ts, action, event_id, payload, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (new_id, row["ts"], action, event_id, row["payload"], prev_hash, digest),
        )
        return new_id

    def audit_entries(self, since_id: int = 0) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM retrain_audit WHERE id > ? ORDER BY id", (since_id,))
        return [dict(r) for r in rows]

    def verify_audit(self) -> AuditVerification:
        """Walk the chain; the first entry whose stored hash, prev_hash or id sequence does not
        match is reported. (Truncating the newest entries cannot be seen from the chain alone.)"""
        prev_hash = GENESIS_HASH
        expected_id = 1
        count = 0
        for r in self.db.query("SELECT * FROM retrain_audit ORDER BY id"):
            row = dict(r)
            count += 1
            if row["id"] != expected_id:
                return AuditVerification(False, count, row["id"],
                                         f"entry {expected_id} is missing (found {row['id']} next)")
            if row["prev_hash"] != prev_hash:
                return AuditVerification(False, count, row["id"],
                                         "prev_hash does not match the previous entry's hash")
            if entry_hash(prev_hash, row) != row["hash"]:
                return AuditVerification(False, count, row["id"],
                                         "content does not match its hash (entry was modified)")
            prev_hash = row["hash"]
            expected_id += 1
        return AuditVerification(True, count)

    # --------------------------------------------------------------- events
    def insert_event(self, conn: sqlite3.Connection, **fields: Any) -> int:
        cols = [c for c in fields if c in EVENT_COLUMNS and c != "id"]
        cur = conn.execute(
            f"INSERT INTO retrain_events({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [fields[c] for c in cols],
        )
        return int(cur.lastrowid)

    def update_event(self, conn: sqlite3.Connection, event_id: int, **fields: Any) -> None:
        cols = [c for c in fields if c in EVENT_COLUMNS and c != "id"]
        if cols:
            conn.execute(
                f"UPDATE retrain_events SET {', '.join(f'{c}=?' for c in cols)} WHERE id=?",
                [*(fields[c] for c in cols), event_id],
            )

    def record(self, conn: sqlite3.Connection, ts: float, action: str, event_id: int,
               payload: dict[str, Any]) -> int:
        """Audit an action on an event and point the event at its newest audit entry."""
        audit_id = self.append_audit(conn, ts, action, event_id, payload)
        conn.execute("UPDATE retrain_events SET audit_event_id=? WHERE id=?", (audit_id, event_id))
        return audit_id

    def get_event(self, event_id: int, conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        row = self._conn(conn).execute("SELECT * FROM retrain_events WHERE id=?", (event_id,)).fetchone()
        return dict(row) if row else None

    def events_since(self, since: float, *, include_blocked: bool = True) -> list[dict[str, Any]]:
        sql = "SELECT * FROM retrain_events WHERE timestamp >= ?"
        if not include_blocked:
            sql += f" AND status != '{BLOCKED}'"
        return [dict(r) for r in self.db.query(sql + " ORDER BY timestamp DESC, id DESC", (since,))]

    def events_with_status(self, statuses: Iterable[str], conn: sqlite3.Connection | None = None
                           ) -> list[dict[str, Any]]:
        statuses = tuple(statuses)
        rows = self._conn(conn).execute(
            f"SELECT * FROM retrain_events WHERE status IN ({', '.join('?' for _ in statuses)}) ORDER BY id",
            statuses,
        ).fetchall()
        return [dict(r) for r in rows]

    def last_event_of(self, trigger_type: str, status: str, conn: sqlite3.Connection | None = None
                      ) -> dict[str, Any] | None:
        row = self._conn(conn).execute(
            "SELECT * FROM retrain_events WHERE trigger_type=? AND status=? ORDER BY id DESC LIMIT 1",
            (trigger_type, status),
        ).fetchone()
        return dict(row) if row else None

    def last_success(self, conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        row = self._conn(conn).execute(
            "SELECT * FROM retrain_events WHERE status=? ORDER BY finished_at DESC, id DESC LIMIT 1",
            (SUCCEEDED,),
        ).fetchone()
        return dict(row) if row else None

    def history(self, now: float, conn: sqlite3.Connection | None = None) -> History:
        """What ``decide`` needs: runs that could matter to the limits (the newest success, and
        everything started in the last 48 h) plus the pending triggers."""
        c = self._conn(conn)
        rows = c.execute(
            "SELECT started_at, finished_at, status FROM retrain_events "
            "WHERE started_at IS NOT NULL AND (status=? OR started_at >= ?)",
            (RUNNING, now - 2 * 86_400.0),
        ).fetchall()
        runs = [RunRecord(r["started_at"], r["finished_at"],
                          None if r["status"] == RUNNING else r["status"] == SUCCEEDED) for r in rows]
        last = self.last_success(c)
        if last is not None and not any(r.success and r.started_at == last["started_at"] for r in runs):
            runs.append(RunRecord(last["started_at"], last["finished_at"], True))
        pending = [PendingTrigger(r["id"], r["trigger_type"], r["status"])
                   for r in self.events_with_status(PENDING_STATUSES, c)]
        return History(runs=tuple(sorted(runs, key=lambda r: r.started_at)), pending=tuple(pending))

    # ---------------------------------------------------------- file ledger
    def files(self, conn: sqlite3.Connection | None = None) -> dict[str, FileState]:
        rows = self._conn(conn).execute("SELECT * FROM retrain_files").fetchall()
        return {r["path"]: FileState(r["path"], r["size"], r["mtime_ns"], r["rows"], bool(r["stable"]),
                                     r["consumed_rows"]) for r in rows}

    def upsert_file(self, conn: sqlite3.Connection, path: str, size: int, mtime_ns: int,
                    rows: int | None, stable: bool, now: float, *, consumed_rows: int | None = None,
                    error: str | None = None) -> None:
        conn.execute(
            "INSERT INTO retrain_files(path, size, mtime_ns, rows, stable, consumed_rows, first_seen, updated, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, rows=excluded.rows, "
            "stable=excluded.stable, updated=excluded.updated, error=excluded.error, "
            "consumed_rows=CASE WHEN ? IS NULL THEN retrain_files.consumed_rows ELSE excluded.consumed_rows END",
            (path, size, mtime_ns, rows, int(stable), consumed_rows or 0, now, now, error, consumed_rows),
        )

    def pending_rows(self, conn: sqlite3.Connection | None = None) -> dict[str, int]:
        """Rows counted in stable files and not yet used by a successful retrain, per path."""
        rows = self._conn(conn).execute(
            "SELECT path, rows, consumed_rows FROM retrain_files WHERE stable=1 AND rows > consumed_rows"
        ).fetchall()
        return {r["path"]: int(r["rows"] - r["consumed_rows"]) for r in rows}

    def consume_rows(self, conn: sqlite3.Connection, snapshot: dict[str, int]) -> None:
        """Mark rows as used by a successful retrain. ``snapshot`` maps path -> total rows seen
        when the run started (rows that arrived during the run stay new)."""
        for path, total in snapshot.items():
            conn.execute(
                "UPDATE retrain_files SET consumed_rows=MAX(consumed_rows, ?) WHERE path=?", (total, path)
            )

    def file_totals(self, conn: sqlite3.Connection | None = None) -> dict[str, int]:
        rows = self._conn(conn).execute(
            "SELECT path, rows FROM retrain_files WHERE stable=1 AND rows IS NOT NULL"
        ).fetchall()
        return {r["path"]: int(r["rows"]) for r in rows}
