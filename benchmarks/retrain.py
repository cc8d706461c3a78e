"""How fast a RetrainPolicy turns detected drift into a Job, and a finished Job into a candidate.

On the local control plane, with the operator as a process under its own RBAC. For each repetition
a fresh RetrainPolicy (drift trigger) watches ModelDeployment ``m``; the benchmark plays the metrics
collector and the training container, as the integration tests do:

- t0: the ModelDeployment's status gets ``Drifting=True`` and a drift score (the collector's write);
- t1: the policy's Job exists (polled every 20 ms);
- t2: the Job is Complete (the benchmark wrote the pod's terminated state with the artifact record);
- t3: the candidate is in the policy's status (``lastCandidate``: ``recorded``, or ``proposed`` with
  ``--open-experiment``);
- t4 (``--open-experiment`` only): the experiment receives traffic: the ModelDeployment's routing
  ConfigMap (what every router pod reads) names the candidate as the treatment of an unpaused
  experiment with a nonzero share. It includes deploying the candidate (its KWOK pod becoming Ready)
  and the ABExperiment starting. Between repetitions the benchmark deletes the experiment (the
  candidate is then rejected and pruned) so that each repetition's experiment can hold the routing.

Prints JSON: per repetition and median seconds drift -> Job, Job complete -> candidate and (with
``--open-experiment``) Job complete -> experiment routed, with their ratio to the operator's evaluation interval (the level-based baseline: without the watch-driven
wake-ups a change waits up to one interval; ratio < 1 is faster than that).

    python benchmarks/retrain.py [--repetitions 5] [--interval 5] [--open-experiment]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlops.core import candidates as cc
from mlops.operator.k8s import Kube
from mlops.testing import experiment_stack as stack
from mlops.testing.cluster import missing_binaries, start_cluster

REPO = Path(__file__).resolve().parents[1]
NS = "bench-rtp"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _drift(admin: Kube, on: bool) -> None:
    mdep = admin.get_mdep(NS, "m")
    conditions = [c for c in (mdep.get("status") or {}).get("conditions") or [] if c["type"] != "Drifting"]
    conditions.append({"type": "Drifting", "status": "True" if on else "False", "reason": "FeatureDrift" if on
                       else "NoDrift", "message": "benchmark collector", "lastTransitionTime": _now()})
    metrics = {"predictions": 5000, "driftScore": 0.5 if on else 0.0, "driftedFeatures": ["age"] if on else [],
               "driftWindowRows": 600}
    admin.patch_status(NS, "m", {"metrics": metrics, "conditions": conditions})


def _routed_experiment(admin: Kube) -> dict:
    """The experiment in the routing ConfigMap the routers read (empty when none routes)."""
    text = (((admin.get("ConfigMap", NS, "m-routing") or {}).get("data") or {}).get("routing.json")) or "{}"
    return json.loads(text).get("experiment") or {}


def _poll(predicate, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--interval", type=float, default=5.0, help="operator --metrics-interval (seconds)")
    parser.add_argument("--open-experiment", action="store_true",
                        help="onSuccess.openExperiment: also time Job complete -> experiment routed")
    args = parser.parse_args(argv)
    if missing_binaries():
        print(json.dumps({"error": f"control-plane binaries missing: {missing_binaries()}; run `make tools`"}))
        return 2
    stack.INTERVAL = args.interval
    work = Path(tempfile.mkdtemp(prefix="bench-rtp-"))
    cluster = start_cluster(work / "cluster")
    op = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/retrainpolicies.mlops.duetmind.io")
        cluster.create_namespace("mlops-system")
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
        kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
        cluster.create_namespace(NS)
        admin = Kube(cluster.api_client())
        op = stack.Operator(kubeconfig, [NS], work).start()
        model = work / "m.skops"
        model.write_bytes(b"benchmark model")
        sha = hashlib.sha256(model.read_bytes()).hexdigest()

        def apply(manifest: dict) -> None:
            cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(manifest))

        apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
               "spec": {"modelName": "m", "stableVersion": "v1", "monitoring": {"enabled": False},
                        "versions": [{"name": "v1", "artifact": {"uri": model.as_uri(), "sha256": sha}}]}})
        _poll(lambda: (admin.get_mdep(NS, "m").get("status") or {}).get("phase") == "Ready", 180, "mdep Ready", 0.2)
        to_job, to_candidate, to_routed = [], [], []
        for rep in range(args.repetitions):
            name = f"p{rep}"
            _drift(admin, False)
            apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy", "metadata": {"name": name},
                   "spec": {"modelDeployment": "m", "triggers": {"drift": {"threshold": 0.1}},
                            "onSuccess": {"openExperiment": args.open_experiment},
                            "jobTemplate": {"spec": {"template": {
                                "metadata": {"annotations": {"mlops.duetmind.io/kwok-hold": "true"}},
                                "spec": {"containers": [{"name": "train", "image": "mlops-operator:bench"}]}}}}}})
            _poll(lambda name=name: ((admin.get("RetrainPolicy", NS, name) or {}).get("status") or {}).get("phase")
                  == "Idle", 60, "policy evaluated", 0.1)
            t0 = time.monotonic()
            _drift(admin, True)
            job = f"{name}-r1"
            _poll(lambda job=job: admin.get("Job", NS, job), 60, "Job created")
            t1 = time.monotonic()
            pod = _poll(lambda job=job: [p for p in admin.list("Pod", NS, f"job-name={job}")
                                         if (p.get("status") or {}).get("phase") == "Running"], 60, "pod Running", 0.1)[0]
            record = json.dumps({"uri": model.as_uri(), "sha256": sha, "format": "skops",
                                 "metrics": {"accuracy": 0.9}, "runId": job})
            admin.patch_status(NS, pod["metadata"]["name"], {"phase": "Succeeded", "containerStatuses": [{
                "name": "train", "image": "mlops-operator:bench", "imageID": "", "ready": False, "restartCount": 0,
                "started": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": record,
                                                           "startedAt": _now(), "finishedAt": _now()}}}]}, kind="Pod")
            _poll(lambda job=job: any(c["type"] == "Complete" and c["status"] == "True" for c in
                                      ((admin.get("Job", NS, job) or {}).get("status") or {}).get("conditions") or []),
                  60, "Job Complete")
            t2 = time.monotonic()
            want = "proposed" if args.open_experiment else "recorded"
            _poll(lambda name=name, want=want: (((admin.get("RetrainPolicy", NS, name) or {}).get("status") or {})
                                     .get("lastCandidate") or {}).get("status") == want, 60, f"candidate {want}")
            t3 = time.monotonic()
            to_job.append(t1 - t0)
            to_candidate.append(t3 - t2)
            line = {"repetition": rep, "drift_to_job_s": round(t1 - t0, 3),
                    "job_complete_to_candidate_s": round(t3 - t2, 3)}
            if args.open_experiment:
                version = cc.version_name(job)
                _poll(lambda version=version: (lambda e: e.get("treatment") == version and not e.get("paused")
                                               and e.get("treatment_share", 0) > 0)(_routed_experiment(admin)),
                      180, "experiment routed")
                t4 = time.monotonic()
                to_routed.append(t4 - t2)
                line["job_complete_to_experiment_routed_s"] = round(t4 - t2, 3)
                cluster.kubectl("delete", "abexperiment", cc.experiment_name(name, job), "-n", NS)
                _poll(lambda: not _routed_experiment(admin), 120, "experiment unrouted", 0.2)
            print(json.dumps(line), file=sys.stderr)
            cluster.kubectl("delete", "rtp", name, "-n", NS)
        median_job, median_candidate = statistics.median(to_job), statistics.median(to_candidate)
        routed = {}
        if to_routed:
            median_routed = statistics.median(to_routed)
            routed = {"job_complete_to_experiment_routed_s": [round(x, 3) for x in to_routed],
                      "median_job_complete_to_experiment_routed_s": round(median_routed, 3),
                      "ratio_experiment_routed_vs_interval": round(median_routed / args.interval, 3)}
        print(json.dumps({
            "benchmark": "retrain",
            "repetitions": args.repetitions,
            "interval_s": args.interval,
            "candidate": "proposed" if args.open_experiment else "recorded",
            "drift_to_job_s": [round(x, 3) for x in to_job],
            "job_complete_to_candidate_s": [round(x, 3) for x in to_candidate],
            "median_drift_to_job_s": round(median_job, 3),
            "median_job_complete_to_candidate_s": round(median_candidate, 3),
            "ratio_drift_to_job_vs_interval": round(median_job / args.interval, 3),
            "ratio_candidate_vs_interval": round(median_candidate / args.interval, 3),
            **routed,
        }, indent=2))
        return 0
    finally:
        if op is not None:
            op.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
