"""Pure rules about owned objects: who controls an object, and whether a live object already matches.

Why it exists: every controller of the operator (ModelDeployment now, ABExperiment and RetrainPolicy
next) creates child objects, and all of them must follow the same two rules:

- **never modify what you do not control.** An existing object whose controller owner reference is not
  this exact resource (by uid) is someone else's: the user's Service ``web``, another resource's
  Deployment whose name collides with ours, or a leftover of a deleted resource of the same name. It is
  reported as a conflict and left byte-identical, never adopted;
- **skip no-op writes.** A child whose live state already contains every field we want, and that
  carries the hash of exactly what we would apply, is not applied again (the API server would accept
  the no-op apply, but at 1,000 resources those requests are the whole load).

No I/O, no clock: the functions take plain dicts, so they are unit-tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mlops.operator.resources import naming as n

ANN_APPLIED_HASH = f"{n.GROUP}/applied-hash"


def controller_ref(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def describe(obj: Mapping[str, Any], kind: str | None = None) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind or obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}"


def ownership_conflict(live: Mapping[str, Any] | None, owner: Mapping[str, Any], kind: str) -> str | None:
    """Why ``live`` must not be touched on behalf of ``owner`` (None: it is absent or ours)."""
    if live is None:
        return None
    owner_meta = owner["metadata"]
    ref = controller_ref(live)
    if ref is not None and ref.get("uid") == owner_meta.get("uid"):
        return None
    owner_kind = owner.get("kind") or n.KIND
    what = describe(live, kind)
    if ref is None:
        return f"{what} already exists and is not controlled by {owner_kind} {owner_meta['name']}: left untouched"
    if ref.get("kind") == owner_kind and ref.get("name") == owner_meta["name"]:
        return (f"{what} is still controlled by an earlier {owner_kind} {ref.get('name')} (uid {ref.get('uid')}), "
                "waiting for garbage collection")
    return f"{what} is controlled by {ref.get('kind')} {ref.get('name')}: left untouched (name collision)"


def desired_hash(obj: Mapping[str, Any]) -> str:
    """Hash of what we apply (without the hash annotation itself)."""
    body = json.loads(json.dumps(obj, sort_keys=True, default=str))
    meta = body.get("metadata") or {}
    ann = meta.get("annotations")
    if ann is not None:
        ann.pop(ANN_APPLIED_HASH, None)
        if not ann:
            del meta["annotations"]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def stamp(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the applied-hash annotation set."""
    out = dict(obj)
    meta = dict(out["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), ANN_APPLIED_HASH: desired_hash(obj)}
    out["metadata"] = meta
    return out


def _scalar_equal(want: Any, got: Any) -> bool:
    if want == got:
        return True
    if isinstance(want, bool) or isinstance(got, bool):
        return False
    # quantities and ports: 1 vs "1"
    return isinstance(want, int | float | str) and isinstance(got, int | float | str) and str(want) == str(got)


def contains(want: Any, got: Any) -> bool:
    """Every field of ``want`` is present in ``got`` with an equal value (the server adds defaults)."""
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping):
            return False
        return all(k in got and contains(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(got, list):
            return False
        if want and all(isinstance(w, Mapping) and "name" in w for w in want):
            by_name = {g.get("name"): g for g in got if isinstance(g, Mapping)}
            order = [g.get("name") for g in got if isinstance(g, Mapping)]
            names = [w["name"] for w in want]
            # order matters where the list is positional (containers keep their relative order)
            if [x for x in order if x in names] != names:
                return False
            return all(w["name"] in by_name and contains(w, by_name[w["name"]]) for w in want)
        return len(want) == len(got) and all(contains(w, g) for w, g in zip(want, got, strict=True))
    if want is None:
        return got is None
    return _scalar_equal(want, got)


def up_to_date(stamped: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """True when ``live`` carries the hash of ``stamped`` and still holds every field of it."""
    if live is None:
        return False
    want_hash = ((stamped.get("metadata") or {}).get("annotations") or {}).get(ANN_APPLIED_HASH)
    live_meta = live.get("metadata") or {}
    if want_hash is None or (live_meta.get("annotations") or {}).get(ANN_APPLIED_HASH) != want_hash:
        return False
    want_meta = stamped.get("metadata") or {}
    for key in ("labels", "annotations"):
        if not contains(want_meta.get(key) or {}, live_meta.get(key) or {}):
            return False
    for ref in want_meta.get("ownerReferences") or []:
        if not any(contains(ref, r) for r in live_meta.get("ownerReferences") or []):
            return False
    return all(contains(v, live.get(k)) for k, v in stamped.items() if k not in ("metadata", "status", "apiVersion"))
