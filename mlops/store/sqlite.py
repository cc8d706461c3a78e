"""One way to open the project's SQLite databases: WAL journal, a busy timeout, one connection per
thread, and the data folder resolved from ``MLOPS_HOME``.

Every durable engine (monitoring, A/B experiments, retraining audit) goes through here so that
durability settings are decided once: WAL with ``synchronous=NORMAL`` survives a killed process
(SIGKILL) without losing committed transactions; only a power loss can drop the last ones.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_HOME_DIRNAME = ".mlops"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def mlops_home() -> Path:
    """The folder for durable state: ``$MLOPS_HOME`` or ``./.mlops`` under the current directory."""
    return Path(os.environ.get("MLOPS_HOME") or Path.cwd() / DEFAULT_HOME_DIRNAME)


def model_dir(model_name: str) -> Path:
    """Per-model state folder (created). The model name is sanitised into one path component."""
    if not model_name or not model_name.strip():
        raise ValueError("model_name must be a non-empty string")
    safe = _SAFE_NAME.sub("_", model_name.strip())
    path = mlops_home() / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating parent folders) a database in WAL mode, autocommit off, 30 s busy timeout."""
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Database:
    """A database file shared by the threads of one process: one connection per thread, explicit
    transactions through :meth:`transaction` (``BEGIN IMMEDIATE`` so writers queue instead of
    failing on upgrade), and schema statements applied once on open."""

    def __init__(self, path: str | os.PathLike[str], schema: str = "") -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if schema:
            # executescript commits on its own; schemas are written with IF NOT EXISTS, so a
            # concurrent opener applying the same statements is harmless.
            self.conn.executescript(schema)

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
