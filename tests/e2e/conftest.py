"""Fixtures for the end-to-end tier: the image built by ``make image`` run with podman, and a local
cluster with a real kubelet node (``mlops.testing.node``).

Prerequisites (root, podman/runc, the image, the node binaries from ``make tools``) are checked up
front. When one is missing the test is skipped with the exact reason and the command that provides
it; with ``MLOPS_E2E=require`` (set by ``make test``/``make test-e2e`` and so by CI) it fails
instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def missing(reason: str) -> None:
    if os.environ.get("MLOPS_E2E") == "require":
        pytest.fail(f"e2e prerequisite missing (MLOPS_E2E=require): {reason}", pytrace=False)
    pytest.skip(f"e2e prerequisite missing: {reason}")


@pytest.fixture(scope="session")
def image() -> str:
    """The image tag, once podman can run it."""
    from mlops.testing.image import IMAGE, image_missing_reason

    reason = image_missing_reason(IMAGE)
    if reason:
        missing(reason)
    return IMAGE


@pytest.fixture(scope="session")
def real_node_prerequisites() -> None:
    """Skip (or fail under MLOPS_E2E=require) unless a real node can start here."""
    from mlops.testing.cluster import missing_binaries
    from mlops.testing.node import missing_prerequisites

    absent = missing_binaries()
    if absent:
        missing(f"control-plane binaries {', '.join(absent)}: make tools")
    node_missing = missing_prerequisites()
    if node_missing:
        missing("; ".join(node_missing))


@pytest.fixture(scope="module")
def real_cluster(image, real_node_prerequisites):
    """A local control plane with KWOK nodes (tainted) and one real kubelet node, the image loaded into
    its containerd. Torn down (host restored) even when tests fail."""
    from mlops.testing.cluster import ClusterError, start_cluster

    workdir = Path(tempfile.mkdtemp(prefix="mlops-e2e-"))
    try:
        cluster = start_cluster(workdir, real_node=True)
    except ClusterError as exc:
        pytest.fail(f"local cluster with a real node did not start: {exc}", pytrace=False)
    try:
        cluster.load_image(image)
        yield cluster
    finally:
        cluster.stop()
