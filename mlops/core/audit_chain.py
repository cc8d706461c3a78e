"""A hash-chained, append-only audit log as plain data (a list of dicts).

Why it exists apart from ``mlops.store.retrain_store``: the operator keeps a RetrainPolicy's audit in
a ConfigMap, not in SQLite, and ``mlops retrain verify-audit --namespace NS --policy NAME`` checks it
from a shell. Both need the same rule, so it is written once, purely: entry ``i`` stores
``prev_hash`` (the hash of entry ``i-1``, or 64 zeros) and ``hash = sha256(prev_hash + canonical JSON
of {id, ts, action, payload})``. Editing, removing or reordering any entry breaks the chain at that
entry; :func:`verify` names the first one. (Truncating the newest entries cannot be seen from the
chain alone; the policy's status counts what it appended, see ``mlops.operator.retrain``.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    body = {"id": entry.get("id"), "ts": entry.get("ts"), "action": entry.get("action"),
            "payload": entry.get("payload")}
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()


def append(entries: list[dict[str, Any]], ts: float, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Append one entry to ``entries`` (in place) and return it."""
    prev = entries[-1] if entries else None
    entry: dict[str, Any] = {
        "id": (int(prev["id"]) + 1) if prev else 1,
        "ts": round(float(ts), 3),
        "action": action,
        "payload": json.loads(canonical(dict(payload))),
    }
    entry["prevHash"] = prev["hash"] if prev else GENESIS
    entry["hash"] = entry_hash(entry["prevHash"], entry)
    entries.append(entry)
    return entry


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None


def verify(entries: Sequence[Mapping[str, Any]]) -> Verification:
    """Walk the chain; report the first entry whose id, prev_hash or content does not match."""
    prev_hash = GENESIS
    for index, entry in enumerate(entries, start=1):
        entry_id = entry.get("id")
        if entry_id != index:
            return Verification(False, len(entries), index,
                                f"entry {index} is missing or out of order (found id {entry_id!r})")
        if entry.get("prevHash") != prev_hash:
            return Verification(False, len(entries), index, "prevHash does not match the previous entry's hash")
        if entry_hash(prev_hash, entry) != entry.get("hash"):
            return Verification(False, len(entries), index, "content does not match its hash (entry was modified)")
        prev_hash = str(entry["hash"])
    return Verification(True, len(entries))


def dumps(entries: Sequence[Mapping[str, Any]]) -> str:
    """One JSON object per line (what the ConfigMap stores)."""
    return "".join(canonical(e) + "\n" for e in entries)


def loads(text: str) -> list[dict[str, Any]]:
    """Parse :func:`dumps` output; a line that is not JSON becomes ``{"id": None, "raw": line}`` so that
    :func:`verify` reports it instead of the reader crashing."""
    out: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = {"id": None, "raw": line}
        out.append(value if isinstance(value, dict) else {"id": None, "raw": line})
    return out
