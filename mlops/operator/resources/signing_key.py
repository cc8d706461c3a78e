"""Pure builder: the per-ModelDeployment prediction-id signing key Secret and how pods mount it.

Why it exists: routed feedback is verified by the router and by whichever replica of the serving
version receives it, so all of them must sign and verify prediction ids with one key. The operator
creates one Secret ``<deployment>-signing-key`` per ModelDeployment (owned by it, so deletion
cascades), mounted read-only into the router and every model container; the servers read the file
named by ``MLOPS_PREDICTION_ID_KEY_FILE`` (see mlops.serving.signing).

The key bytes are random, so they are *not* part of ``desired_objects`` (a pure function cannot make
them, and re-applying would overwrite the key): the handler creates the Secret once, with a key it
generates, only when it does not exist yet (mlops.operator.signing_key).

Rotation: put the new key under ``key`` and the old one under ``previous-key`` in the Secret; pods
sign with the new key and still accept ids signed with the old one until ``previous-key`` is removed.
Kubernetes refreshes mounted Secret files, but the processes read the key at start, so roll the pods
(``kubectl rollout restart``) after editing the Secret.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from mlops.operator.resources import naming as n

SIGNING_KEY_DIR = "/etc/mlops/signing-key"
KEY_ITEM = "key"
PREVIOUS_KEY_ITEM = "previous-key"
VOLUME = "signing-key"


def signing_key_secret(cr: Mapping[str, Any], key_text: str) -> dict[str, Any]:
    """The Secret holding ``key_text`` (the handler generates it; at least 32 bytes)."""
    if len(key_text.encode()) < 32:
        raise ValueError("a signing key must be at least 32 bytes")
    from mlops.operator.resources.model_deployment import owner_reference

    meta = cr["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": n.signing_key_secret_name(name),
            "namespace": meta["namespace"],
            "labels": n.common_labels(name, n.COMPONENT_ROUTER),
            "ownerReferences": [owner_reference(cr)],
        },
        "data": {KEY_ITEM: base64.b64encode(key_text.encode()).decode("ascii")},
    }


def signing_key_volume(mdep_name: str) -> dict[str, Any]:
    # 0440 + the pod's fsGroup: readable by the (non-root) containers, by nobody else.
    return {"name": VOLUME, "secret": {"secretName": n.signing_key_secret_name(mdep_name), "defaultMode": 0o440}}


def signing_key_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": SIGNING_KEY_DIR, "readOnly": True}


def signing_key_env() -> list[dict[str, str]]:
    return [
        {"name": "MLOPS_PREDICTION_ID_KEY_FILE", "value": f"{SIGNING_KEY_DIR}/{KEY_ITEM}"},
        {"name": "MLOPS_PREDICTION_ID_PREVIOUS_KEY_FILE", "value": f"{SIGNING_KEY_DIR}/{PREVIOUS_KEY_ITEM}"},
    ]
