"""Test-wide settings: every test gets its own MLOPS_HOME so durable state never leaks between tests
or into the working tree."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_mlops_home(tmp_path, monkeypatch):
    home = tmp_path / "mlops-home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    return home


class _Tools(dict):
    """Tool name -> path; asking for one that is not built fails the test with the command to build it."""

    def __getitem__(self, name: str) -> str:
        import os

        path = super().__getitem__(name)
        if path is None or not os.access(path, os.X_OK):
            if name == "promtool":
                pytest.fail("promtool not found: .ci/run installs Debian's prometheus package "
                            "(apt-get install prometheus)", pytrace=False)
            pytest.fail(f"{name} not built at {path}: run `make tools` (bash hack/build-tools.sh builds it "
                        "from Go modules into the cache)", pytrace=False)
        return path


@pytest.fixture(scope="session")
def chart_tools() -> dict[str, str]:
    """Paths of helm, kubeconform and luahealth, built from Go modules by hack/build-tools.sh
    (`make tools`), and promtool from Debian's prometheus package."""
    import shutil
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(repo / "hack" / "build-tools.sh"), "--print"], capture_output=True,
                         text=True, check=True).stdout
    tools = _Tools(line.split(" ", 1) for line in out.splitlines())
    tools["promtool"] = shutil.which("promtool")
    return tools
