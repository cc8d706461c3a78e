"""Test-wide settings: every test gets its own MLOPS_HOME so durable state never leaks between tests
or into the working tree."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_mlops_home(tmp_path, monkeypatch):
    home = tmp_path / "mlops-home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    return home
