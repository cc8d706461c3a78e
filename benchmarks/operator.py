"""Operator benchmark against the local control plane; prints JSON.

Measures, with `mlops operator` running as a subprocess under its own ServiceAccount (manifests/rbac.yaml):
- apply-to-Deployment-created latency: time from the ModelDeployment create request returning to the
  version Deployment's ADDED event on a watch (p50, p95 over --samples sequential creates);
- convergence: time from the first of --count ModelDeployments being applied (concurrently, 8 clients)
  until every one reports phase Ready with observedGeneration == generation (KWOK pods). They have
  --versions versions each (default 2; each ModelDeployment then owns 8 objects and 3 Services, which the
  local control plane's /20 Service range has room for).

    python benchmarks/operator.py                      # starts (and stops) a local control plane
    python benchmarks/operator.py --cluster-dir .cluster  # reuses one started by `make cluster`
Targets (issue 7): p50 < 1 s, 100 converged < 60 s.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster-dir", help="reuse a cluster started with `python -m mlops.testing.cluster up`")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--versions", type=int, default=2, help="versions per ModelDeployment in the convergence run")
    parser.add_argument("--nodes", type=int, default=5, help="fake KWOK nodes when starting a cluster")
    args = parser.parse_args()

    from kubernetes import client, watch

    from mlops.operator.k8s import Kube
    from mlops.testing.cluster import LocalCluster, free_port, start_cluster

    own_cluster = args.cluster_dir is None
    # KWOK nodes advertise 110 pods each: 100 ModelDeployments x 3 pods (+ the latency samples) need 4+.
    cluster = (start_cluster(Path(tempfile.mkdtemp(prefix="mlops-bench-")), node_count=args.nodes) if own_cluster
               else LocalCluster.load(Path(args.cluster_dir)))
    operator = None
    log_path = Path(tempfile.mkdtemp(prefix="mlops-bench-log-")) / "operator.log"
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        cluster.kubectl("create", "namespace", "mlops-system", check=False)
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
        sa_kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
        suffix = uuid.uuid4().hex[:6]
        lat_ns, conv_ns = f"bench-lat-{suffix}", f"bench-conv-{suffix}"
        for ns in (lat_ns, conv_ns):
            cluster.create_namespace(ns)

        with open(log_path, "wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "mlops", "operator", "--kubeconfig", str(sa_kubeconfig), "-n", lat_ns,
                 "-n", conv_ns, "--bind", "127.0.0.1", "--metrics-port", str(free_port()),
                 "--liveness-port", str(free_port()), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
            )
        admin_api = cluster.api_client()
        kube = Kube(admin_api, field_manager="benchmark")
        time.sleep(3)  # operator start-up (imports, login, first LIST)

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
        # Free the latency samples' objects so the convergence run starts from an idle cluster.
        cluster.kubectl("delete", "namespace", lat_ns, "--wait=true", "--timeout=120s")

        # ---- N ModelDeployments converge ---------------------------------------------------------
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: kube.apply({**mdep(f"m{i}", args.versions), "metadata": {"name": f"m{i}", "namespace": conv_ns}}),
                          range(args.count)))
        applied = time.perf_counter() - t0
        ready = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            items = kube.list_mdeps(conv_ns)
            ready = sum(
                1 for cr in items
                if (cr.get("status") or {}).get("phase") == "Ready"
                and cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
            )
            if ready == args.count:
                break
            time.sleep(0.25)
        converged = time.perf_counter() - t0
        result = {
            "benchmark": "operator",
            "cpus": os.cpu_count(),
            "apply_to_deployment_created_seconds": {
                "samples": len(latencies),
                "p50": round(percentile(latencies, 0.50), 4),
                "p95": round(percentile(latencies, 0.95), 4),
                "mean": round(statistics.fmean(latencies), 4),
                "max": round(max(latencies), 4),
                "target_p50": 1.0,
            },
            "converge": {
                "model_deployments": args.count,
                "versions_each": args.versions,
                "objects_per_model_deployment": 4 + 2 * args.versions,
                "apply_seconds": round(applied, 3),
                "all_ready_seconds": round(converged, 3) if ready == args.count else None,
                "ready": ready,
                "target_seconds": 60.0,
            },
        }
        print(json.dumps(result, indent=2))
        ok = result["apply_to_deployment_created_seconds"]["p50"] < 1.0 and ready == args.count and converged < 60
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
