"""How fast an ABExperiment's verdict reaches status and the router, on the local control plane.

For each repetition a fresh ABExperiment (autoPromote) runs on ModelDeployment ``alz``; the simulator
sends a decisive batch through the real ``mlops route`` (treatment clearly better). We record t0 when
both sidecars' ``/v1/arms`` hold every answered prediction and label of the batch (the decisive
sample has reached the sidecars), t1 when ``status.winner`` is ``treatment``, t2 when the router's
table serves v2 as the stable version. Between repetitions the ModelDeployment's spec is touched (a
new generation), which takes precedence over the promotion again, so every repetition starts on v1.

Prints JSON: per repetition and median seconds to verdict and to router switch, and their ratio to the
budget ``collect interval + 2 s`` from the issue (ratio < 1 meets it).

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
            sim.run(stack.users(name, 600), {"control": 0.80, "treatment": 0.95}, per_user=2)
            want_pred = sim.sent["control"] + sim.sent["treatment"]
            want_lab = sim.labelled["control"] + sim.labelled["treatment"]
            stack.wait_until(lambda n=name, w=(want_pred, want_lab): _arm_totals(pairs["info"], n) == w, 30,
                             "sidecars hold the batch")
            t0 = time.monotonic()
            stack.wait_until(lambda n=name: scenario.status(n).get("winner") == "treatment", 60, "verdict",
                             scenario.op.tail)
            t1 = time.monotonic()
            stack.wait_until(lambda: scenario.router_table()["stable_version"] == "v2", 60, "router switch")
            t2 = time.monotonic()
            runs.append({"verdict_seconds": round(t1 - t0, 3), "router_switch_seconds": round(t2 - t0, 3)})
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
        return 0
    finally:
        if scenario is not None:
            scenario.close()
        if pairs is not None:
            stack.stop_all(list(pairs["procs"].values()))
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
