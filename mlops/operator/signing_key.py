"""Create a ModelDeployment's prediction-id signing-key Secret once (the I/O edge of the builder in
mlops.operator.resources.signing_key).

Why it exists: the key must be random and must never change under running pods, so it cannot be part
of the re-applied desired objects. It is created with a POST (never an apply), only when the Secret
does not exist: two operator replicas racing both POST, one gets 409 and uses the winner's key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from mlops.operator import ownership as own
from mlops.operator.cache import ObjectCache
from mlops.operator.k8s import Kube, KubeError
from mlops.operator.resources import naming as n
from mlops.operator.resources.signing_key import signing_key_secret


def new_key_text() -> str:
    """48 random bytes from the OS, as 64 URL-safe characters."""
    return base64.urlsafe_b64encode(os.urandom(48)).decode("ascii")


def ensure_signing_key(kube: Kube, cr: Mapping[str, Any], cache: ObjectCache | None = None) -> str | None:
    """Make sure the ModelDeployment's signing-key Secret exists; None when it does (or was just created)
    and is controlled by this ModelDeployment, else the ``ResourceConflict`` message naming the Secret
    (it is left alone, never adopted). A Secret already in the watch-fed cache costs no request."""
    meta = cr["metadata"]
    name = n.signing_key_secret_name(meta["name"])
    existing = cache.get("Secret", meta["namespace"], name) if cache is not None else None
    if existing is None or own.ownership_conflict(existing, cr, "Secret"):
        existing = kube.get("Secret", meta["namespace"], name)
    if existing is None:
        try:
            created = kube.create(signing_key_secret(cr, new_key_text()))
        except KubeError as exc:
            if exc.status != 409:
                raise
            existing = kube.get("Secret", meta["namespace"], name)
            if existing is None:
                raise
        else:
            if cache is not None:
                cache.put("Secret", created)
            return None
    return own.ownership_conflict(existing, cr, "Secret")
