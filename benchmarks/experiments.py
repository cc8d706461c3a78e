"""How fast an ABExperiment's verdict reaches status and the router, on the local control plane.

For each repetition a fresh ABExperiment (autoPromote) runs on ModelDeployment ``alz``; the simulator
sends one decisive batch through the real ``mlops route``: 250 users x 2 predictions (treatment
clearly better, 0.95 vs 0.80 accuracy), then all 500 labels in ONE ``/feedback`` request, so the
decisive sample is the whole batch (labels decide an accuracy experiment; predictions alone cannot).
We record t0 when both sidecars' ``/v1/arms`` hold every answered prediction and label of the batch
(polled every 20 ms: the decisive sample has reached the sidecars), t1 when ``status.winner`` is
``treatment`` and t2 when the router's table serves v2 as the stable version. The router reads its
table from a folder laid out like a mounted ConfigMap, refreshed by the test stack's stand-in kubelet
(0.1 s); a real kubelet's ConfigMap propagation (up to its sync period) is not part of this figure.
Between repetitions the ModelDeployment's spec is touched (a new generation), which takes precedence
over the promotion again, so every repetition starts on v1.

Prints JSON: per repetition and median seconds to verdict and to router switch, and their ratio to the
budget ``collect interval + 2 s`` from issue 13 (ratio < 1 meets it). The collect interval is the
operator's ``--metrics-interval`` (it overrides ``collectIntervalSeconds`` of the ModelDeployment).

    python benchmarks/experiments.py [--repetitions 5] [--interval 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mlops.core.arm_counts import table_from_list
from mlops.operator.k8s import Kube
from mlops.testing import experiment_stack as stack
from mlops.testing.cluster import missing_binaries, start_cluster

REPO = Path(__file__).resolve().parents[1]


def _arm_totals(info: dict, experiment: str) -> tuple[float, float]:
    predictions = labelled = 0.0
    for v in info.values():
        body = httpx.get(v["sidecar"] + "/v1/arms", timeout=5).json()
        for (exp, _phase, _arm), counts in table_from_list(body["arms"]).items():
            if exp == experiment:
                predictions += counts.predictions
                labelled += counts.labelled
    return predictions, labelled


def _poll(predicate, timeout: float, what: str, every: float, diag=lambda: "") -> float:
    """The monotonic time at which ``predicate`` first held (polled every ``every`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diag()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="operator --metrics-interval (seconds)")
    args = parser.parse_args(argv)
    if missing_binaries():
        print(json.dumps({"error": f"control-plane binaries missing: {missing_binaries()}; run `make tools`"}))
        return 2
    stack.INTERVAL = args.interval
    work = Path(tempfile.mkdtemp(prefix="bench-abx-"))
    cluster = start_cluster(work / "cluster")
    pairs = scenario = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/abexperiments.mlops.duetmind.io",
                        "crd/modeldeployments.mlops.duetmind.io")
        cluster.create_namespace("mlops-system")
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
        kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
        models = stack.train_models(Path(tempfile.mkdtemp(dir=work)))
        pairs = stack.start_pairs(models, work / "home")
        scenario = stack.Scenario(cluster, Kube(cluster.api_client()), kubeconfig, pairs, models, work / "s")
        runs = []
        for rep in range(args.repetitions):
            name = f"bench-{rep}"
            scenario.experiment(name, autoPromote=True, minSamplesPerVariant=100)
            stack.wait_until(lambda n=name: (scenario.router_table().get("experiment") or {}).get("name") == n, 60,
                             f"{name} routed", scenario.op.tail)
            sim = stack.Simulator(scenario.router, seed=100 + rep)
            sim.run(stack.users(name, 250), {"control": 0.80, "treatment": 0.95}, per_user=2)
            acked = time.monotonic()  # the single /feedback request was answered
            want_pred = sim.sent["control"] + sim.sent["treatment"]
            want_lab = sim.labelled["control"] + sim.labelled["treatment"]
            assert want_lab <= 500, want_lab  # one feedback request: the whole batch is the decisive sample
            early = scenario.status(name).get("winner") == "treatment"
            t0 = _poll(lambda n=name, w=(want_pred, want_lab): _arm_totals(pairs["info"], n) == w, 30,
                       "sidecars hold the batch", 0.02)
            t1 = _poll(lambda n=name: scenario.status(n).get("winner") == "treatment", 60, "verdict", 0.05,
                       scenario.op.tail)
            t2 = _poll(lambda: scenario.router_table()["stable_version"] == "v2", 60, "router switch", 0.02)
            st = scenario.status(name)
            runs.append({"verdict_seconds": round(t1 - t0, 3), "router_switch_seconds": round(t2 - t0, 3),
                         "sidecars_after_feedback_ack_seconds": round(t0 - acked, 3),
                         "verdict_before_sidecars_held_batch": early,
                         "labelled": dict(sim.labelled), "p_value": st.get("pValue")})
            print(json.dumps({"repetition": rep, **runs[-1]}), file=sys.stderr, flush=True)
            # next repetition: a new generation of the ModelDeployment takes precedence over the promotion
            mdep = scenario.admin.get_mdep(scenario.ns, "alz")
            spec = mdep["spec"]
            spec["monitoring"]["collectIntervalSeconds"] = 5 + rep + 1
            scenario.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
                            "metadata": {"name": "alz"}, "spec": spec})
            stack.wait_until(lambda: scenario.router_table()["stable_version"] == "v1", 60, "back on v1")
        budget = args.interval + 2.0
        verdict = statistics.median(r["verdict_seconds"] for r in runs)
        switch = statistics.median(r["router_switch_seconds"] for r in runs)
        print(json.dumps({
            "benchmark": "abexperiment decisive sample -> verdict / router switch",
            "collect_interval_seconds": args.interval,
            "budget_seconds": budget,
            "runs": runs,
            "median_verdict_seconds": verdict,
            "median_router_switch_seconds": switch,
            "verdict_vs_budget": round(verdict / budget, 3),
            "router_switch_vs_budget": round(switch / budget, 3),
        }, indent=2))
        return 0 if verdict < budget and switch < budget else 1
    finally:
        if scenario is not None:
            scenario.close()
        if pairs is not None:
            stack.stop_all(list(pairs["procs"].values()))
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
