"""Run an ABExperiment end to end on your machine, no Docker and no cloud.

What it does: starts the local control plane (``make tools`` once builds it), installs the CRDs and
the operator's RBAC, runs ``mlops operator`` under that RBAC, trains two versions of a small model
(``mlops train``), serves each with ``mlops serve`` + ``mlops sidecar`` on loopback, runs the real
``mlops route`` in front of them (fed from the operator's routing ConfigMap), applies a
ModelDeployment ``alz`` and an ABExperiment ``alz-v2-vs-v1`` with ``autoPromote``, then sends
simulated users through the router (control accuracy 0.85, treatment 0.90) and prints
``kubectl get abx`` after every round until the experiment concludes and the router sends all
stable traffic to v2. Everything it started is stopped at the end.

    python examples/02-ab-experiment/run_local.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from mlops.operator.k8s import Kube
from mlops.testing.cluster import missing_binaries, start_cluster
from mlops.testing.experiment_stack import (
    INTERVAL,
    Scenario,
    Simulator,
    start_pairs,
    stop_all,
    train_models,
    users,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    if missing_binaries():
        print(f"control-plane binaries missing ({', '.join(missing_binaries())}): run `make tools` once",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="abx-demo-"))
    print(f"working in {work}")
    cluster = start_cluster(work / "cluster")
    pairs = None
    scenario = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/abexperiments.mlops.duetmind.io",
                        "crd/modeldeployments.mlops.duetmind.io")
        cluster.create_namespace("mlops-system")
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
        kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
        print("training v1 (logistic) and v2 (forest)...")
        models = train_models(Path(tempfile.mkdtemp(dir=work)))
        pairs = start_pairs(models, work / "home")
        scenario = Scenario(cluster, Kube(cluster.api_client()), kubeconfig, pairs, models, work / "scenario")
        scenario.experiment("alz-v2-vs-v1", autoPromote=True, minSamplesPerVariant=500)
        wait_until(lambda: (scenario.router_table().get("experiment") or {}).get("name"), 60,
                   "the experiment in the router's table", scenario.op.tail)
        print(f"namespace {scenario.ns}: experiment running, router at {scenario.router}")
        sim = Simulator(scenario.router, seed=1)
        for round_ in range(15):
            sim.run(users(f"demo{round_}", 500), {"control": 0.85, "treatment": 0.90}, per_user=2)
            time.sleep(2 * INTERVAL + 0.5)
            print(cluster.kubectl("get", "abx", "-n", scenario.ns).stdout.rstrip())
            status = scenario.status("alz-v2-vs-v1")
            if status.get("phase") in ("Concluded", "Completed", "Terminated"):
                break
        status = scenario.status("alz-v2-vs-v1")
        print("\nrecommendation:", status.get("recommendation"))
        print(json.dumps({k: status.get(k) for k in ("phase", "winner", "pValue", "effectSize", "confidenceInterval",
                                                     "samples", "users", "srmPValue", "promotion")}, indent=2))
        time.sleep(2)
        print("router table:", json.dumps({k: scenario.router_table().get(k) for k in ("stable_version", "experiment")}))
        return 0 if status.get("winner") == "treatment" else 1
    finally:
        if scenario is not None:
            scenario.close()
        if pairs is not None:
            stop_all(list(pairs["procs"].values()))
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
