"""`mlops.core` is pure: import-linter forbids I/O frameworks; this test catches what the linter
cannot express, clock reads, unseeded randomness, file and process access."""

from __future__ import annotations

import ast
from pathlib import Path

import mlops.core

CORE = Path(mlops.core.__file__).parent

FORBIDDEN_CALLS = {
    "time.time", "time.monotonic", "time.perf_counter", "time.sleep", "time.time_ns",
    "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
    "datetime.datetime.now", "datetime.datetime.utcnow",
    "random.random", "random.randint", "random.choice", "random.shuffle", "random.uniform",
    "np.random.rand", "np.random.randn", "np.random.normal", "np.random.choice",
    "np.random.random", "np.random.default_rng", "numpy.random.default_rng",
    "os.environ.get", "os.getenv", "open", "subprocess.run", "subprocess.Popen",
}
FORBIDDEN_IMPORTS = {"sqlite3", "subprocess", "socket", "threading", "asyncio", "requests", "httpx", "urllib.request"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func) in FORBIDDEN_CALLS:
            found.append(f"{path.name}:{node.lineno} calls {_dotted(node.func)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_IMPORTS:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_IMPORTS:
            found.append(f"{path.name}:{node.lineno} imports from {node.module}")
    return found


def test_core_reads_no_clock_no_randomness_no_files():
    files = sorted(CORE.rglob("*.py"))
    assert files, "mlops/core has no modules"
    violations = [v for f in files for v in _violations(f)]
    assert violations == []


def test_purity_checker_catches_a_clock_read(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nimport sqlite3\n\ndef f():\n    return time.time()\n")
    assert sorted(_violations(sample)) == ["sample.py:2 imports sqlite3", "sample.py:5 calls time.time"]
