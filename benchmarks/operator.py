"""Operator benchmark against the local control plane; prints JSON.

Measures, with `mlops operator` running as a subprocess under its own ServiceAccount (manifests/rbac.yaml):
- apply-to-Deployment-created latency: time from the ModelDeployment create request returning to the
  version Deployment's ADDED event on a watch (p50, p95 over --samples sequential creates);
- for each count in --counts (default 100 and 1000): the time until that many two-version
  ModelDeployments, applied at once into a fresh namespace (8 clients), all report phase Ready with
  observedGeneration == generation (KWOK pods), and then the API load while they sit idle: requests
  per minute over --idle-seconds, by verb, (a) as counted by the operator itself
  (mlops_operator_api_requests_total: every request its reconciler sends, Events included; kopf's
  long-lived watch streams excluded) and (b) as counted by the API server (apiserver_request_total
  deltas, all clients) with the operator running minus the same window with it stopped, so the
  control plane's own traffic (controller-manager, scheduler, KWOK heartbeats) cancels out.
  A resync of every resource (--resync-interval, default 60 s) falls inside the idle window.

    python benchmarks/operator.py                          # starts (and stops) a local control plane
    python benchmarks/operator.py --counts 100 --samples 10  # quicker
    python benchmarks/operator.py --cluster-dir .cluster   # reuses one started by `make cluster`
Targets: p50 < 1 s; idle writes flat in the count and under 60/min (issue 12).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def mdep(name: str, versions: int = 2) -> dict:
    sha = "ab" * 32
    return {
        "apiVersion": "mlops.duetmind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelName": name,
            "stableVersion": "v1",
            "versions": [
                {"name": f"v{i}", "artifact": {"uri": f"s3://bench/{name}/v{i}.skops", "sha256": sha}, "replicas": 1}
                for i in range(1, versions + 1)
            ],
        },
    }


WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE", "DELETECOLLECTION",
               "post", "put", "patch", "apply", "delete", "create", "update"}


def parse_counter(text: str, name: str, label: str) -> dict[str, float]:
    """Sum of a Prometheus counter's samples grouped by one label."""
    import re

    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, value = line.rsplit(" ", 1)
        m = re.search(label + r'="([^"]*)"', labels)
        key = m.group(1) if m else ""
        out[key] = out.get(key, 0.0) + float(value)
    return out


def parse_counter_pairs(text: str, name: str, first: str, second: str) -> dict[str, float]:
    """Sum of a counter's samples grouped by two labels, keyed ``"<first> <second>"``."""
    import re

    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, value = line.rsplit(" ", 1)
        a = re.search(first + r'="([^"]*)"', labels)
        b = re.search(second + r'="([^"]*)"', labels)
        key = f"{a.group(1) if a else ''} {b.group(1) if b else ''}"
        out[key] = out.get(key, 0.0) + float(value)
    return out


def per_minute(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    keys = set(before) | set(after)
    return {k: round((after.get(k, 0) - before.get(k, 0)) * 60 / seconds, 1) for k in sorted(keys)
            if after.get(k, 0) - before.get(k, 0) > 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster-dir", help="reuse a cluster started with `python -m mlops.testing.cluster up`")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--counts", default="100,1000", help="comma-separated ModelDeployment counts")
    parser.add_argument("--versions", type=int, default=2, help="versions per ModelDeployment in the convergence run")
    parser.add_argument("--idle-seconds", type=float, default=90.0, help="idle window measured per count")
    parser.add_argument("--resync-interval", type=float, default=60.0)
    parser.add_argument("--nodes", type=int, default=0,
                        help="fake KWOK nodes when starting a cluster (default: enough for the largest count)")
    parser.add_argument("--converge-timeout", type=float, default=900.0)
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(",") if c.strip())

    import httpx
    from kubernetes import client, watch

    from mlops.operator.k8s import Kube
    from mlops.testing.cluster import LocalCluster, free_port, start_cluster

    own_cluster = args.cluster_dir is None
    # KWOK nodes advertise 110 pods each: N ModelDeployments x (versions + router) pods, plus headroom.
    nodes = args.nodes or max(5, (max(counts) * (args.versions + 1) + args.samples * 3) // 100 + 2)
    cluster = (start_cluster(Path(tempfile.mkdtemp(prefix="mlops-bench-")), node_count=nodes) if own_cluster
               else LocalCluster.load(Path(args.cluster_dir)))
    operator = None
    log_path = Path(tempfile.mkdtemp(prefix="mlops-bench-log-")) / "operator.log"
    metrics_port = free_port()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        cluster.kubectl("create", "namespace", "mlops-system", check=False)
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
        sa_kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
        suffix = uuid.uuid4().hex[:6]
        lat_ns = f"bench-lat-{suffix}"
        conv_ns = {count: f"bench-{count}-{suffix}" for count in counts}
        for ns in (lat_ns, *conv_ns.values()):
            cluster.create_namespace(ns)

        def start_operator(namespaces: list[str]) -> subprocess.Popen:
            ns_args = [a for ns in namespaces for a in ("-n", ns)]
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mlops", "operator", "--kubeconfig", str(sa_kubeconfig), *ns_args,
                     "--bind", "127.0.0.1", "--metrics-port", str(metrics_port), "--liveness-port", str(free_port()),
                     "--log-format", "json", "--resync-interval", str(args.resync_interval)],
                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
                )
            deadline = time.monotonic() + 300  # imports, login, cache priming (slow on a loaded machine)
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"operator exited with {proc.returncode}; see {log_path}")
                try:
                    httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            time.sleep(3)  # watches established
            return proc

        def stop_operator(proc: subprocess.Popen) -> None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

        def operator_counts() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            return parse_counter(text, "mlops_operator_api_requests_total", "verb")

        def operator_counts_by_resource() -> dict[str, float]:
            """verb resource -> count: names the writer when idle writes are not flat."""
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            verbs = parse_counter_pairs(text, "mlops_operator_api_requests_total", "verb", "resource")
            return verbs

        def apiserver_counts() -> dict[str, float]:
            text = cluster.kubectl("get", "--raw", "/metrics").stdout
            return parse_counter(text, "apiserver_request_total", "verb")

        operator = start_operator([lat_ns, *conv_ns.values()])
        admin_api = cluster.api_client()
        kube = Kube(admin_api, field_manager="benchmark")

        # ---- apply -> Deployment created latency ------------------------------------------------
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watcher() -> None:
            apps = client.AppsV1Api(cluster.api_client())
            w = watch.Watch()
            while not stop.is_set():
                for ev in w.stream(apps.list_namespaced_deployment, lat_ns, timeout_seconds=5):
                    if ev["type"] == "ADDED":
                        seen.setdefault(ev["object"].metadata.name, time.perf_counter())
                    if stop.is_set():
                        break

        thread = threading.Thread(target=watcher, daemon=True)
        thread.start()
        time.sleep(1)
        latencies = []
        for i in range(args.samples):
            name = f"lat{i}"
            t0 = time.perf_counter()
            kube.apply({**mdep(name), "metadata": {"name": name, "namespace": lat_ns}})
            deadline = time.monotonic() + 30
            while f"{name}-v1" not in seen and time.monotonic() < deadline:
                time.sleep(0.002)
            if f"{name}-v1" not in seen:
                raise SystemExit(f"Deployment {name}-v1 not created within 30 s; see {log_path}")
            latencies.append(seen[f"{name}-v1"] - t0)
            time.sleep(0.2)
        stop.set()
        # Free the latency samples' objects so the convergence runs start from an idle cluster.
        cluster.kubectl("delete", "namespace", lat_ns, "--wait=true", "--timeout=180s")

        # ---- N ModelDeployments converge, then sit idle -------------------------------------------
        runs = []
        for count in counts:
            ns = conv_ns[count]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i, ns=ns: kube.apply(
                    {**mdep(f"m{i}", args.versions), "metadata": {"name": f"m{i}", "namespace": ns}}), range(count)))
            applied = time.perf_counter() - t0
            ready = 0
            deadline = time.monotonic() + args.converge_timeout
            while time.monotonic() < deadline:
                items = kube.list_mdeps(ns)
                ready = sum(
                    1 for cr in items
                    if (cr.get("status") or {}).get("phase") == "Ready"
                    and cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
                )
                if ready == count:
                    break
                time.sleep(1.0)
            converged = time.perf_counter() - t0
            time.sleep(15)  # let rollouts' trailing status updates settle
            op0, res0, api0, w0 = operator_counts(), operator_counts_by_resource(), apiserver_counts(), time.perf_counter()
            time.sleep(args.idle_seconds)
            op1, res1, api1, w1 = operator_counts(), operator_counts_by_resource(), apiserver_counts(), time.perf_counter()
            with_operator = per_minute(api0, api1, w1 - w0)
            # the same window without the operator: the control plane's own idle traffic
            stop_operator(operator)
            time.sleep(5)
            api2, w2 = apiserver_counts(), time.perf_counter()
            time.sleep(args.idle_seconds)
            api3, w3 = apiserver_counts(), time.perf_counter()
            without = per_minute(api2, api3, w3 - w2)
            operator = start_operator(list(conv_ns.values()))
            own = per_minute(op0, op1, w1 - w0)
            difference = {k: round(with_operator.get(k, 0) - without.get(k, 0), 1)
                          for k in sorted(set(with_operator) | set(without))}
            runs.append({
                "model_deployments": count,
                "versions_each": args.versions,
                "objects_per_model_deployment": 4 + 2 * args.versions,
                "apply_seconds": round(applied, 3),
                "all_ready_seconds": round(converged, 3) if ready == count else None,
                "ready": ready,
                "idle_window_seconds": round(w1 - w0, 1),
                "operator_requests_per_minute": own,
                "operator_writes_per_minute": round(sum(v for k, v in own.items() if k in WRITE_VERBS), 1),
                "operator_total_per_minute": round(sum(own.values()), 1),
                "operator_requests_per_minute_by_resource": per_minute(res0, res1, w1 - w0),
                "apiserver_requests_per_minute_with_operator": with_operator,
                "apiserver_requests_per_minute_without_operator": without,
                "apiserver_difference_per_minute": difference,
                "apiserver_difference_writes_per_minute": round(
                    sum(v for k, v in difference.items() if k in WRITE_VERBS), 1),
            })
            print(json.dumps({"partial": runs[-1]}), file=sys.stderr, flush=True)  # survives an interrupted run
            # free the nodes' pod slots for the next count
            cluster.kubectl("delete", "namespace", ns, "--wait=false")
        result = {
            "benchmark": "operator",
            "cpus": os.cpu_count(),
            "kwok_nodes": nodes,
            "apply_to_deployment_created_seconds": {
                "samples": len(latencies),
                "p50": round(percentile(latencies, 0.50), 4),
                "p95": round(percentile(latencies, 0.95), 4),
                "mean": round(statistics.fmean(latencies), 4),
                "max": round(max(latencies), 4),
                "target_p50": 1.0,
            },
            "scale": runs,
            "idle_writes_ratio_largest_vs_smallest": (
                round(runs[-1]["operator_writes_per_minute"] / runs[0]["operator_writes_per_minute"], 2)
                if len(runs) > 1 and runs[0]["operator_writes_per_minute"] else None),
            "idle_total_ratio_largest_vs_smallest": (
                round(runs[-1]["operator_total_per_minute"] / runs[0]["operator_total_per_minute"], 2)
                if len(runs) > 1 and runs[0]["operator_total_per_minute"] else None),
            "target_idle_writes_per_minute": 60,
        }
        print(json.dumps(result, indent=2))
        ok = (result["apply_to_deployment_created_seconds"]["p50"] < 1.0
              and all(r["ready"] == r["model_deployments"] for r in runs)
              and all(r["operator_writes_per_minute"] < 60 for r in runs))
        return 0 if ok else 1
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        if own_cluster:
            cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
