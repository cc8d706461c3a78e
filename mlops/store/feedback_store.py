"""Durable de-duplication of feedback: the first true label per prediction id wins.

Why it exists: a client that retries, or replays one prediction id 1,000 times, must add one labelled
outcome, not 1,000 -- and a restart must not forget which ids were already labelled. The ledger is
one SQLite table keyed by prediction id (``INSERT OR IGNORE``: the first writer wins, atomically,
also across the processes of ``mlops serve --workers N`` sharing the file); later ones are counted
as duplicates (a durable counter in the same database).

Rows older than ``retention_seconds`` are pruned (feedback normally arrives within days), so the file
stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mlops.store.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback_seen (
    prediction_id TEXT PRIMARY KEY,
    true_label TEXT NOT NULL,
    ts REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feedback_seen_ts ON feedback_seen (ts);
CREATE TABLE IF NOT EXISTS feedback_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO feedback_meta(key, value) VALUES ('duplicates', 0);
"""

DEFAULT_RETENTION_SECONDS = 90 * 24 * 3600.0


class FeedbackLedger:
    """``claim`` marks prediction ids as labelled; True for the ones seen for the first time."""

    def __init__(self, path: str | os.PathLike[str], retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self.db = Database(path, SCHEMA)
        self.retention_seconds = retention_seconds
        self._claims = 0

    def claim(self, items: Sequence[tuple[str, str]], now: float) -> list[bool]:
        """``items``: (prediction id, true label as text). Duplicates inside ``items`` count too."""
        fresh: list[bool] = []
        with self.db.transaction() as conn:
            for pid, label in items:
                cur = conn.execute("INSERT OR IGNORE INTO feedback_seen(prediction_id, true_label, ts) VALUES (?, ?, ?)",
                                   (pid, label, now))
                fresh.append(cur.rowcount == 1)
            dupes = len(fresh) - sum(fresh)
            if dupes:
                conn.execute("UPDATE feedback_meta SET value = value + ? WHERE key = 'duplicates'", (dupes,))
            self._claims += 1
            if self._claims % 1000 == 0:
                conn.execute("DELETE FROM feedback_seen WHERE ts < ?", (now - self.retention_seconds,))
        return fresh

    def first_label(self, prediction_id: str) -> str | None:
        rows = self.db.query("SELECT true_label FROM feedback_seen WHERE prediction_id = ?", (prediction_id,))
        return rows[0][0] if rows else None

    @property
    def duplicates_total(self) -> int:
        return int(self.db.query("SELECT value FROM feedback_meta WHERE key = 'duplicates'")[0][0])

    @property
    def labelled_total(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM feedback_seen")[0][0])

    def close(self) -> None:
        self.db.close()
