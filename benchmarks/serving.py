"""Serving benchmark: our server (monitoring on) against bare FastAPI, KServe and MLServer, in one run.

Why: the issue's targets are relative (>= 1.3x KServe's and 1.5x MLServer's best req/s, >= 0.9x bare
FastAPI's, p99 <= 1.5x bare FastAPI's, same machine, same run, same worker count), so every server is
measured in the same session with the same model, the same single JSON row and the same load
generator (`wrk` from Debian, POST bodies via a Lua script), at 16 and 64 connections, 1 and 2
workers. Prints one JSON document: req/s, p50, p99 per cell, and the ratios.

    python benchmarks/serving.py                      # all servers, 10 s per cell (about 5 minutes)
    python benchmarks/serving.py --rounds 3           # medians of 3 rotated rounds (about 15 minutes)
    python benchmarks/serving.py --servers ours,fastapi --workers 2 --connections 64 --duration 5

Cells of our server also carry ``server_stats`` (from one worker's /monitoring/status): records
recorded/written/dropped, to show monitoring kept up, and the mean/max micro-batch size.

Servers:
- ``ours``: ``mlops serve`` with in-process monitoring (the standalone default: predictions recorded
  off the hot path through the bounded queue into SQLite);
- ``ours-ab``: the same server with two versions loaded and a running experiment, answering the
  README's request (``features`` + ``user_id`` + ``experiment_name``; a new user id per request, so
  both variants serve): the A/B path, whose targets are >= 0.9x ``ours`` and >= 2x ``fastapi``;
- ``ours-sidecar``: ``mlops serve --sidecar-url`` + ``mlops sidecar`` (the pod layout);
- ``fastapi``: a bare ``async def`` FastAPI endpoint calling ``predict_proba`` on the same pipeline;
- ``kserve``: KServe 0.21's ModelServer with a scikit-learn ``kserve.Model`` (benchmarks/peers);
- ``mlserver``: MLServer 1.7.1 + mlserver-sklearn (``parallel_workers`` 0 for 1 worker, 2 for 2).
Peers are installed by ``benchmarks/peers/setup_*.sh`` into their own venvs under
``${MLOPS_CACHE:-~/.cache/mlops-operator}/bench-venvs`` (never in the repo); a peer that cannot be
installed is reported as skipped with the reason. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ALL_SERVERS = ("ours", "ours-ab", "ours-sidecar", "fastapi", "kserve", "mlserver")
EXPERIMENT = "bench_experiment"

BARE_FASTAPI_APP = '''
import json, os
import joblib, numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = joblib.load(os.environ["BENCH_MODEL"])
NAMES = json.loads(os.environ["BENCH_FEATURES"])
app = FastAPI()

class PredictRequest(BaseModel):
    features: dict[str, float]

@app.get("/health")
async def health():
    return {"status": "healthy"}

@app.post("/predict")
async def predict(request: PredictRequest):
    row = np.array([[request.features[name] for name in NAMES]])
    proba = MODEL.predict_proba(row)[0]
    best = int(proba.argmax())
    return {"prediction": int(MODEL.classes_[best]), "confidence": float(proba[best])}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Running:
    name: str
    procs: list[subprocess.Popen]
    url: str  # full URL of the prediction endpoint
    body: str
    config: dict = field(default_factory=dict)
    # A Lua body template "<prefix>\0<suffix>": each request gets a new user id between them.
    per_request_user: tuple[str, str] | None = None


@dataclass
class Workspace:
    root: Path
    skops_path: Path
    sha256: str
    joblib_path: Path
    profile_path: Path
    feature_names: list[str]
    row: list[float]
    model_name: str = "bench"
    env: dict = field(default_factory=dict)


def prepare(root: Path, algorithm: str) -> Workspace:
    """Train the model once with `mlops train` (breast cancer data, 30 numeric features) and export the
    very same fitted pipeline with joblib for the peers."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    csv = root / "train.csv"
    frame.to_csv(csv, index=False)
    out = root / "model"
    env = {**os.environ, "MLOPS_HOME": str(root / "mlops-home"), "MLOPS_PREDICTION_ID_KEY": "bench-signing-key-0123456789abcdef-0123"}
    subprocess.run([sys.executable, "-m", "mlops", "train", "--data", str(csv), "--label", "target", "--out",
                    str(out), "--model-name", "bench", "--version", "v1", "--algorithm", algorithm],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    from mlops.serving.model_store import load_model

    sha = (out / "model.sha256").read_text().split()[0]
    loaded = load_model((out / "model.skops").as_uri(), sha256=sha)
    estimator = getattr(loaded, "estimator", loaded)
    joblib_path = root / "model.joblib"
    joblib.dump(estimator, joblib_path)
    names = [str(c) for c in data.feature_names]
    row = [float(v) for v in np.asarray(frame[names].iloc[7])]
    # The experiment the A/B row's requests name (the server reads it from the same MLOPS_HOME).
    from mlops.monitoring.ab_testing import ABTestConfig, ABTestingManager

    manager = ABTestingManager(experiment_db=root / "mlops-home" / "ab_experiments.db")
    manager.create_experiment(ABTestConfig(experiment_name=EXPERIMENT, model_a_version="v1", model_b_version="v2",
                                           traffic_split=0.5, min_samples_per_variant=100))
    manager.start_experiment(EXPERIMENT)
    manager.close()
    return Workspace(root=root, skops_path=out / "model.skops", sha256=sha, joblib_path=joblib_path,
                     profile_path=out / "profile.json", feature_names=names, row=row, env=env)


def _spawn(args: list[str], env: dict, cwd: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 120.0, method: str = "GET",
               body: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            response = httpx.request(method, url, content=body, headers={"content-type": "application/json"},
                                     timeout=2.0)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_ours(ws: Workspace, workers: int, *, sidecar: bool, ab: bool = False) -> Running:
    port = free_port()
    procs = []
    args = [sys.executable, "-m", "mlops", "serve", "--model-uri", ws.skops_path.as_uri(), "--sha256", ws.sha256,
            "--version", "v1", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--log-level", "warning"]
    if ab:  # the experiment's treatment: the same artifact under a second version name
        args += ["--model-uri", ws.skops_path.as_uri(), "--sha256", ws.sha256, "--version", "v2"]
    if sidecar:
        sidecar_port = free_port()
        procs.append(_spawn([sys.executable, "-m", "mlops", "sidecar", "--port", str(sidecar_port), "--profile",
                             str(ws.profile_path), "--model-name", ws.model_name], ws.env,
                            log=ws.root / "sidecar.log"))
        args += ["--sidecar-url", f"http://127.0.0.1:{sidecar_port}"]
    procs.append(_spawn(args, ws.env, log=ws.root / "ours.log"))
    features = dict(zip(ws.feature_names, ws.row, strict=True))
    body = json.dumps({"features": features})
    name = "ours-sidecar" if sidecar else "ours"
    template = None
    if ab:
        name = "ours-ab"
        body = json.dumps({"features": features, "user_id": "patient_0", "experiment_name": EXPERIMENT})
        prefix, _, suffix = json.dumps({"features": features, "user_id": "patient_\0",
                                        "experiment_name": EXPERIMENT}).partition("\\u0000")
        template = (prefix, suffix)
    running = Running(name, procs, f"http://127.0.0.1:{port}/predict", body, per_request_user=template)
    wait_ready(running.url, procs, method="POST", body=body)
    return running


def start_fastapi(ws: Workspace, workers: int) -> Running:
    app_dir = ws.root / "bare"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "bare_app.py").write_text(BARE_FASTAPI_APP)
    port = free_port()
    env = {**ws.env, "BENCH_MODEL": str(ws.joblib_path), "BENCH_FEATURES": json.dumps(ws.feature_names)}
    proc = _spawn([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers), "--log-level", "warning", "--no-access-log"], env, cwd=app_dir,
                  log=ws.root / "fastapi.log")
    body = json.dumps({"features": dict(zip(ws.feature_names, ws.row, strict=True))})
    running = Running("fastapi", [proc], f"http://127.0.0.1:{port}/predict", body)
    wait_ready(running.url, [proc], method="POST", body=body)
    return running


def _peer_venv(name: str) -> Path:
    script = PEERS / f"setup_{name}.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {result.stderr.strip()[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def start_kserve(ws: Workspace, workers: int, venv: Path) -> Running:
    port, grpc_port = free_port(), free_port()
    proc = _spawn([str(venv / "bin" / "python"), str(PEERS / "kserve_sklearn.py"), "--model_name", ws.model_name,
                   "--model_dir", str(ws.joblib_path), "--http_port", str(port), "--grpc_port", str(grpc_port),
                   "--workers", str(workers)], {**os.environ}, log=ws.root / "kserve.log")
    body = json.dumps({"instances": [ws.row]})
    running = Running("kserve", [proc], f"http://127.0.0.1:{port}/v1/models/{ws.model_name}:predict", body)
    wait_ready(running.url, [proc], method="POST", body=body)
    return running


def start_mlserver(ws: Workspace, workers: int, venv: Path) -> Running:
    parallel_workers = 0 if workers == 1 else workers
    folder = ws.root / f"mlserver-{parallel_workers}"
    model_dir = folder / ws.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ws.joblib_path, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": ws.model_name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }))
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": parallel_workers, "debug": False,
    }))
    proc = _spawn([str(venv / "bin" / "mlserver"), "start", str(folder)], {**os.environ},
                  log=ws.root / "mlserver.log")
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(ws.row)], "datatype": "FP64",
                                   "data": ws.row}]})
    running = Running("mlserver", [proc], f"http://127.0.0.1:{port}/v2/models/{ws.model_name}/infer", body,
                      {"parallel_workers": parallel_workers})
    wait_ready(running.url, [proc], method="POST", body=body)
    return running


def ours_stats(running: Running) -> dict:
    """Monitoring and batching counters of one of our worker processes (whichever answers): proof
    that every prediction was recorded (dropped == 0) and how large the micro-batches were."""
    url = running.url.rsplit("/", 1)[0] + "/monitoring/status?hours=1"
    try:
        status = httpx.get(url, timeout=30).json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": str(exc)}
    recording = status.get("recording") or {}
    batching = status.get("batching") or {}
    return {"recorded": recording.get("recorded"), "written": recording.get("written"),
            "dropped": recording.get("dropped"), "failed": recording.get("failed"),
            "mean_batch": batching.get("mean_batch"), "max_batch_seen": batching.get("max_batch_seen")}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """req/s, latency percentiles (ms), errors from `wrk --latency` output."""
    result: dict = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.MULTILINE)
        result[f"p{pct}_ms"] = _ms(match.group(1)) if match else None
    requests = re.search(r"(\d+) requests in", output)
    result["requests"] = int(requests.group(1)) if requests else 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return result


def run_wrk(running: Running, connections: int, duration: float, lua: Path) -> dict:
    script = ('wrk.method = "POST"\n'
              'wrk.headers["Content-Type"] = "application/json"\n'
              f"wrk.body = [==[{running.body}]==]\n")
    if running.per_request_user is not None:
        prefix, suffix = running.per_request_user
        script += ("counter = 0\n"
                   "request = function()\n"
                   "  counter = counter + 1\n"
                   f"  return wrk.format(nil, nil, nil, [==[{prefix}]==] .. counter .. [==[{suffix}]==])\n"
                   "end\n")
    lua.write_text(script)
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s", "-s", str(lua),
            running.url]
    output = subprocess.run(args, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    return parse_wrk(output)


def measure(starter: Callable[[int], Running], name: str, workers: int, connections: list[int], duration: float,
            warmup: float, root: Path) -> list[dict]:
    running = starter(workers)
    cells = []
    try:
        for conns in connections:
            if warmup > 0:
                run_wrk(running, conns, warmup, root / "warmup.lua")
            result = run_wrk(running, conns, duration, root / f"{name}.lua")
            if name.startswith("ours"):
                result["server_stats"] = ours_stats(running)
            cells.append({"server": name, "workers": workers, "connections": conns, **running.config, **result})
            print(f"# {name} workers={workers} c={conns}: {result['rps']:.0f} req/s, p50 {result['p50_ms']} ms, "
                  f"p99 {result['p99_ms']} ms, non-2xx {result['non_2xx']}", file=sys.stderr, flush=True)
    finally:
        stop(running.procs)
    return cells


def _median_cells(rounds: list[list[dict]]) -> list[dict]:
    by_key: dict[tuple, list[dict]] = {}
    for cells in rounds:
        for cell in cells:
            by_key.setdefault((cell["server"], cell["workers"], cell["connections"]), []).append(cell)
    merged = []
    for _key, cells in sorted(by_key.items()):
        out = dict(cells[0])
        for metric in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms"):
            values = [c[metric] for c in cells if c.get(metric) is not None]
            out[metric] = statistics.median(values) if values else None
        out["rounds"] = len(cells)
        merged.append(out)
    return merged


def ratios(cells: list[dict], ours: str) -> dict:
    """The issue's targets, per worker count, comparing `ours` with the peers measured in this run."""

    def get(server: str, workers: int, conns: int | None = None) -> list[dict]:
        return [c for c in cells if c["server"] == server and c["workers"] == workers
                and (conns is None or c["connections"] == conns)]

    out: dict = {}
    for workers in sorted({c["workers"] for c in cells}):
        mine = get(ours, workers)
        if not mine:
            continue
        best_ours = max(c["rps"] for c in mine)
        entry: dict = {"ours_best_rps": best_ours}
        fastapi = get("fastapi", workers)
        if fastapi:
            best_fastapi = max(c["rps"] for c in fastapi)
            entry["vs_fastapi_rps"] = round(best_ours / best_fastapi, 3)
            entry["target_vs_fastapi_rps"] = 0.9
            per_conn = {}
            for cell in mine:
                bare = get("fastapi", workers, cell["connections"])
                if bare and bare[0]["p99_ms"] and cell["p99_ms"]:
                    per_conn[str(cell["connections"])] = {
                        "rps_ratio": round(cell["rps"] / bare[0]["rps"], 3),
                        "p99_ratio": round(cell["p99_ms"] / bare[0]["p99_ms"], 3),
                    }
            entry["vs_fastapi_by_connections"] = per_conn
            entry["target_p99_ratio_max"] = 1.5
        for peer, target in (("kserve", 1.3), ("mlserver", 1.5)):
            theirs = get(peer, workers)
            if theirs:
                entry[f"vs_{peer}_best_rps"] = round(best_ours / max(c["rps"] for c in theirs), 3)
                entry[f"target_vs_{peer}"] = target
        out[str(workers)] = entry
    # MLServer's "best" over every parallel_workers setting measured.
    mlserver = [c for c in cells if c["server"] == "mlserver"]
    mine_all = [c for c in cells if c["server"] == ours]
    if mlserver and mine_all:
        out["vs_mlserver_best_any_setting"] = round(max(c["rps"] for c in mine_all if c["workers"] == 1)
                                                    / max(c["rps"] for c in mlserver), 3)
    return out


def ab_ratios(cells: list[dict]) -> dict:
    """The README's request (A/B path) against plain /predict of our server and bare FastAPI, per
    worker count and connection count, measured in this run (targets: >= 0.9x and >= 2x)."""
    out: dict = {}
    for cell in (c for c in cells if c["server"] == "ours-ab"):
        key = f"workers={cell['workers']} c={cell['connections']}"
        entry: dict = {"ab_rps": cell["rps"], "ab_p99_ms": cell["p99_ms"]}
        for other, target in (("ours", 0.9), ("fastapi", 2.0)):
            match = [c for c in cells if c["server"] == other and c["workers"] == cell["workers"]
                     and c["connections"] == cell["connections"]]
            if match and match[0]["rps"]:
                entry[f"vs_{other}_rps"] = round(cell["rps"] / match[0]["rps"], 3)
                entry[f"target_vs_{other}"] = target
        out[key] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(ALL_SERVERS), help=f"comma list of {ALL_SERVERS}")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured cell")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell (0: none)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (server order rotated), median reported")
    parser.add_argument("--algorithm", choices=["logistic", "forest"], default="logistic")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(ALL_SERVERS)
    if unknown:
        print(f"unknown servers: {sorted(unknown)}", file=sys.stderr)
        return 2
    workers = [int(w) for w in args.workers.split(",")]
    connections = [int(c) for c in args.connections.split(",")]
    root = Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    started = time.monotonic()
    ws = prepare(root, args.algorithm)

    starters: dict[str, Callable[[int], Running]] = {
        "ours": lambda w: start_ours(ws, w, sidecar=False),
        "ours-sidecar": lambda w: start_ours(ws, w, sidecar=True),
        "ours-ab": lambda w: start_ours(ws, w, sidecar=False, ab=True),
        "fastapi": lambda w: start_fastapi(ws, w),
    }
    skipped: dict[str, str] = {}
    for peer, start in (("kserve", start_kserve), ("mlserver", start_mlserver)):
        if peer in servers:
            try:
                venv = _peer_venv(peer)
                starters[peer] = lambda w, start=start, venv=venv: start(ws, w, venv)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                skipped[peer] = str(exc)
    order = [s for s in servers if s in starters]
    rounds: list[list[dict]] = []
    for round_index in range(args.rounds):
        rotated = order[round_index % len(order):] + order[:round_index % len(order)]
        cells: list[dict] = []
        for name in rotated:
            for w in workers:
                try:
                    cells += measure(starters[name], name, w, connections, args.duration, args.warmup, root)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    skipped[f"{name} workers={w}"] = str(exc)[:500]
        rounds.append(cells)
    cells = _median_cells(rounds)
    import sklearn

    report = {
        "benchmark": "serving",
        "model": f"{args.algorithm} on breast_cancer (30 features), one JSON row per request",
        "load": f"wrk -t1 -cN -d{args.duration:g}s --latency (POST via Lua), warm-up {args.warmup:g}s",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "sklearn": sklearn.__version__},
        "cells": cells,
        "ratios": {name: ratios(cells, name) for name in ("ours", "ours-sidecar") if name in order},
        "ab_path": ab_ratios(cells),
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.keep:
        report["work_dir"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
