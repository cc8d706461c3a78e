"""Names and labels of the objects the operator owns, in one place.

Every builder and every cluster query (prune, collector, status) agrees on these, so a change here is
the only way the operator's view of "its" objects can change.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "mlops.duetmind.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
ABX_KIND = "ABExperiment"
ABX_PLURAL = "abexperiments"
FIELD_MANAGER = "mlops-operator"

MANAGED_BY = "mlops-operator"
PART_OF = "mlops"
LABEL_DEPLOYMENT = f"{GROUP}/model-deployment"
LABEL_VERSION = f"{GROUP}/model-version"
ANN_ARTIFACT_URI = f"{GROUP}/artifact-uri"
ANN_ARTIFACT_SHA256 = f"{GROUP}/artifact-sha256"
ANN_ARTIFACT_FORMAT = f"{GROUP}/artifact-format"
ANN_VERSION = f"{GROUP}/model-version"

COMPONENT_MODEL = "model-server"
COMPONENT_ROUTER = "router"

_DNS_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 63


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, max_len: int = MAX_NAME) -> str:
    """A DNS-1123 label derived from ``text``; shortened with a hash suffix when it would not fit."""
    slug = _DNS_INVALID.sub("-", text.lower()).strip("-") or "x"
    if len(slug) <= max_len:
        return slug
    suffix = _short_hash(text)
    return f"{slug[: max_len - len(suffix) - 1].rstrip('-')}-{suffix}"


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends)."""
    value = _LABEL_VALUE_INVALID.sub("-", text).strip("-._")
    if len(value) > 63:
        suffix = _short_hash(text)
        value = f"{value[: 63 - len(suffix) - 1].rstrip('-._')}-{suffix}"
    return value


def version_object_name(mdep_name: str, version: str) -> str:
    """Name of the Deployment and Service serving one version: ``<mdep>-<version slug>``."""
    return dns_label(f"{mdep_name}-{version}")


def router_name(mdep_name: str) -> str:
    return dns_label(mdep_name)


def routing_configmap_name(mdep_name: str) -> str:
    return dns_label(f"{mdep_name}-routing")


def signing_key_secret_name(mdep_name: str) -> str:
    """The Secret holding the prediction-id signing key shared by the router and every model pod."""
    return dns_label(f"{mdep_name}-signing-key")


def service_account_name(mdep_name: str) -> str:
    return dns_label(f"{mdep_name}-model")


def common_labels(mdep_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlops-model" if component == COMPONENT_MODEL else "mlops-router",
        "app.kubernetes.io/instance": label_value(mdep_name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_DEPLOYMENT: label_value(mdep_name),
    }


def owned_selector(mdep_name: str) -> str:
    """Label selector matching every object the operator created for one ModelDeployment."""
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_DEPLOYMENT}={label_value(mdep_name)}"


def version_selector_labels(mdep_name: str, version: str) -> dict[str, str]:
    """Pod selector of one version's Deployment (immutable once created, so minimal and stable)."""
    return {
        LABEL_DEPLOYMENT: label_value(mdep_name),
        "app.kubernetes.io/component": COMPONENT_MODEL,
        LABEL_VERSION: label_value(version),
    }


def router_selector_labels(mdep_name: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: label_value(mdep_name), "app.kubernetes.io/component": COMPONENT_ROUTER}
