"""The kopf registry the operator runs: only on.event handlers, so kopf's per-event diff base (a deep
copy of every watched object) can be switched off; a handler that would need it is refused."""

from __future__ import annotations

import kopf
import pytest

from mlops.operator import handlers
from mlops.operator.handlers import Controller, OperatorConfig, build_registry


class NoKube:
    on_request = None


@pytest.fixture
def controller():
    c = Controller(NoKube(), OperatorConfig(namespaces=["ns"]))
    yield c
    c.shutdown()


def test_the_registry_has_watching_handlers_only(controller):
    registry = build_registry(controller)
    assert len(registry._watching.get_all_handlers()) >= 9  # ModelDeployments, owned kinds, ABX, policies, Jobs
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()


def test_the_diff_base_is_empty_and_never_copies_the_object():
    storage = handlers._no_diffbase_storage()
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"big": list(range(1000))}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_a_handler_that_needs_the_diff_base_is_refused(controller, monkeypatch):
    def register_with_update(registry, _controller):
        @kopf.on.update("apps", "v1", "deployments", registry=registry)
        def changed(**_):
            pass

    monkeypatch.setattr(handlers, "register_retrain", register_with_update)
    with pytest.raises(RuntimeError, match="not supported"):
        build_registry(controller)
