"""The closed loop's second half on the real local control plane: candidate -> experiment -> verdict.

The operator runs as a real `mlops operator` process under manifests/rbac.yaml. The full-loop test
starts from real drift (1 sd shifted traffic, the operator's collector sets `Drifting`, the
RetrainPolicy controller starts the Job); the other tests play the RetrainPolicy controller's part: they call ``propose_candidate`` with the operator's own ServiceAccount
(so its RBAC is what is exercised) after "a training Job succeeded". Each model version is a real
`mlops serve` + `mlops sidecar` pair on loopback (KWOK pods stand in for the pods and become Ready), the
real `mlops route` process reads the routing ConfigMap through a kubelet-like thread, and a seeded
simulator sends users and labels their predictions with a known accuracy per arm
(``mlops.testing.experiment_stack``).

Invariants checked: the ModelDeployment's spec and metadata are never written (its managed fields
show the operator only on the status subresource: Argo CD sees no drift); a promoted candidate keeps
serving after its experiment and the RetrainPolicy are deleted and after an edit of the
ModelDeployment; a rejected candidate's Deployment is pruned; a SIGKILL after the experiment opened
(and between recording the candidate and opening its experiment) converges to one candidate and one
experiment; deleting the ModelDeployment garbage-collects everything the loop created.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlops.core import candidates as cc
from mlops.operator import candidates as cand
from mlops.operator.k8s import Kube
from mlops.testing.experiment_stack import (
    FEATURES,
    INTERVAL,
    KEY,
    ConfigMapDir,
    Kubelet,
    Operator,
    Simulator,
    free_port,
    sha256_of,
    start_mlops,
    stop_all,
    train_models,
    users,
    wait_http,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
# The sidecars are shared by the tests and count per experiment name (<policy>-rt-<hash of run id>), so
# each test has its own experiment name. The RetrainPolicy controller names a run after its Job,
# `<policy>-r<n>`: the full-loop test's run is alz-retrain-r1 under policy alz-retrain, the promotion
# test proposes the same run (same version, same `mlops serve` pair) under policy "manual".
BETTER, WORSE, KILL = "alz-retrain-r1", "run-worse-0002", "run-kill-0003"
LOOP_RUN = BETTER
EXPERIMENT_TUNING = {"minSamplesPerVariant": 200, "minimumDetectableEffect": 0.05}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return train_models(tmp_path_factory.mktemp("loop-models"))


@pytest.fixture(scope="module")
def pairs(models, tmp_path_factory):
    """`mlops serve` + `mlops sidecar` for v1 and for the two candidates (artifact: v2's model file)."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "MLOPS_PREDICTION_ID_KEY": KEY, "MLOPS_HOME": str(home)}
    versions = {"v1": models / "v1" / "model.skops", cc.version_name(BETTER): models / "v2" / "model.skops",
                cc.version_name(WORSE): models / "v2" / "model.skops"}
    procs, info = {}, {}
    try:
        for v, path in versions.items():
            sp, mp = free_port(), free_port()
            # every sidecar bins features against v1's training profile, as the chart's sidecars do with
            # the baseline profile ConfigMap: the drift the operator decides on is counted here
            procs[f"{v}-sidecar"] = start_mlops(["sidecar", "--port", str(sp), "--model-name", "alz",
                                                 "--profile", str(models / "v1" / "profile.json")], env)
            procs[f"{v}-server"] = start_mlops([
                "serve", "--model-uri", path.as_uri(), "--sha256", sha256_of(path), "--version", v,
                "--model-name", "alz", "--sidecar-url", f"http://127.0.0.1:{sp}", "--flush-interval", "0.1",
                "--host", "127.0.0.1", "--port", str(mp), "--log-level", "warning"], env)
            info[v] = {"server": f"http://127.0.0.1:{mp}", "sidecar": f"http://127.0.0.1:{sp}"}
        for v in versions:
            wait_http(info[v]["sidecar"] + "/healthz", procs[f"{v}-sidecar"])
            wait_http(info[v]["server"] + "/health", procs[f"{v}-server"])
        yield {"info": info, "procs": procs, "env": env}
    finally:
        stop_all(list(procs.values()))


@pytest.fixture(scope="module")
def operator_kube(operator_kubeconfig) -> Kube:
    """The RetrainPolicy controller's calls run with the operator's own permissions."""
    return Kube.from_environment(kubeconfig=str(operator_kubeconfig))


class Loop:
    """One namespace: ModelDeployment `alz` (v1 only, as a user wrote it), its router, an operator."""

    def __init__(self, cluster, admin: Kube, kubeconfig: Path, pairs: dict, models: Path, workdir: Path,
                 profile: bool = False):
        self.cluster, self.admin, self.models = cluster, admin, models
        self.ns = f"loop-{uuid.uuid4().hex[:8]}"
        cluster.create_namespace(self.ns)
        workdir.mkdir(parents=True, exist_ok=True)
        self.op = Operator(kubeconfig, [self.ns], workdir)
        info = pairs["info"]
        self.op.endpoints.write_text(json.dumps({f"{self.ns}/alz": [i["sidecar"] + "/metrics" for i in info.values()]}))
        self.op.start()
        v1 = models / "v1" / "model.skops"
        self.manifest = {
            "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "alz", "annotations": {cand.ANN_EXPERIMENT_DEFAULTS: json.dumps(EXPERIMENT_TUNING)}},
            "spec": {"modelName": "alz", "stableVersion": "v1",
                     "versions": [{"name": "v1", "artifact": {"uri": v1.as_uri(), "sha256": sha256_of(v1)}}],
                     "monitoring": {"collectIntervalSeconds": 5, "enabled": True}}}
        if profile:  # the baseline the operator's drift windows are tested against (`mlops train`'s profile)
            self.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-profile"},
                        "data": {"profile.json": (models / "v1" / "profile.json").read_text()}})
            self.manifest["spec"]["baselineProfileRef"] = {"configMapName": "alz-profile"}
        self.apply(self.manifest)
        self.folder = ConfigMapDir(workdir / "configmap")
        self.kubelet = Kubelet(admin, self.ns, "alz", self.folder, {v: i["server"] for v, i in info.items()})
        wait_until(self.kubelet.sync, 60, "routing ConfigMap", self.op.tail)
        self.kubelet.start()
        port = free_port()
        self.router_proc = start_mlops(["route", "--table", str(self.folder.path), "--port", str(port),
                                        "--poll-interval", "0.1"], pairs["env"])
        self.router = f"http://127.0.0.1:{port}"
        wait_http(self.router + "/healthz", self.router_proc)
        wait_until(lambda: self.mdep_status().get("currentVersion") == "v1", 90, "alz serving v1", self.op.tail)

    def apply(self, manifest: dict) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(manifest))

    def mdep(self) -> dict:
        return self.admin.get_mdep(self.ns, "alz") or {}

    def mdep_status(self) -> dict:
        return self.mdep().get("status") or {}

    def entries(self) -> dict:
        return cc.decode((self.admin.get("ConfigMap", self.ns, "alz-candidates") or {}).get("data"))

    def experiments(self) -> list[dict]:
        return self.admin.list("ABExperiment", self.ns)

    def abx_status(self, name: str) -> dict:
        return (self.admin.get("ABExperiment", self.ns, name) or {}).get("status") or {}

    def events(self, reason: str) -> list[dict]:
        return [e for e in self.admin.list("Event", self.ns) if e.get("reason") == reason]

    def router_table(self) -> dict:
        return httpx.get(self.router + "/routing", timeout=5).json()

    def deployment(self, version: str) -> dict | None:
        return self.admin.get("Deployment", self.ns, f"alz-{version}")

    def propose(self, kube: Kube, run_id: str, split: float = 0.5, policy: str = "alz-retrain") -> str:
        art = self.models / "v2" / "model.skops"
        return cand.propose_candidate(kube, namespace=self.ns, model_deployment="alz", policy=policy,
                                      run_id=run_id, uri=art.as_uri(), sha256=sha256_of(art),
                                      metrics={"accuracy": 0.9}, traffic_split=split)

    def user_fields(self) -> tuple:
        """What Argo CD compares: the spec and the user's metadata, and who manages which fields."""
        m = self.mdep()
        meta = m["metadata"]
        managers = {(f.get("manager"), f.get("subresource", "")) for f in meta.get("managedFields") or []}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                       if k != "kubectl.kubernetes.io/last-applied-configuration"}  # the test's own kubectl apply
        return m["spec"], meta.get("labels"), annotations, meta["generation"], managers

    def close(self) -> None:
        self.kubelet.stopped.set()
        stop_all([self.router_proc])
        self.op.stop()
        self.cluster.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)


@pytest.fixture
def loop(cluster, admin, operator_kubeconfig, pairs, models, tmp_path):
    s = Loop(cluster, admin, operator_kubeconfig, pairs, models, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def profiled_loop(cluster, admin, operator_kubeconfig, pairs, models, tmp_path):
    """The ModelDeployment names a baseline profile: the operator's collector decides Drifting itself."""
    s = Loop(cluster, admin, operator_kubeconfig, pairs, models, tmp_path, profile=True)
    try:
        yield s
    finally:
        s.close()


def _feed_until(s: Loop, experiment: str, accuracy: dict, seed: int, done, rounds: int = 14) -> dict:
    sim = Simulator(s.router, seed=seed)
    for round_ in range(rounds):
        sim.run(users(f"{experiment}-{seed}-{round_}", 400), accuracy, per_user=2)
        time.sleep(2 * INTERVAL + 0.5)
        st = s.abx_status(experiment)
        if done(st):
            return st
    raise AssertionError(f"no verdict: {s.abx_status(experiment)}\n{s.op.tail()}")


# ---------------------------------------------------------------------------------------------- tests
def test_better_candidate_is_promoted_and_keeps_serving_without_policy_or_experiment(loop, operator_kube):
    s = loop
    before = s.user_fields()
    s.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy", "metadata": {"name": "manual"},
             "spec": {"modelDeployment": "alz", "triggers": {"drift": {"threshold": 0.1}},
                      "onSuccess": {"openExperiment": True, "trafficSplit": 0.5}}})
    version = s.propose(operator_kube, BETTER, policy="manual")
    assert version == cc.version_name(BETTER) and version.startswith("rt-") and len(version) == 11
    # idempotent: the RetrainPolicy controller may call again (restart, retry) with the same run
    assert s.propose(operator_kube, BETTER, policy="manual") == version
    entries = s.entries()
    assert list(entries) == [version] and entries[version]["state"] == "candidate"
    exps = s.experiments()
    assert len(exps) == 1
    exp = exps[0]
    assert exp["metadata"]["name"] == cc.experiment_name("manual", BETTER) == f"manual-{version}"
    assert exp["spec"]["controlVersion"] == "v1" and exp["spec"]["treatmentVersion"] == version
    assert exp["spec"]["trafficSplit"] == 0.5 and exp["spec"]["autoPromote"] and exp["spec"]["autoRollback"]
    assert exp["spec"]["minSamplesPerVariant"] == 200  # the ModelDeployment's annotation tunes it
    assert exp["metadata"]["ownerReferences"][0]["uid"] == s.mdep()["metadata"]["uid"]
    assert entries[version]["experimentUid"] == exp["metadata"]["uid"]
    # the candidate is deployed like a spec version: its artifact is verified by sha256 in the init container
    dep = wait_until(lambda: s.deployment(version), 60, "candidate Deployment", s.op.tail)
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert entries[version]["artifact"]["sha256"] in init["command"]
    assert cand.candidate_outcome(operator_kube, namespace=s.ns, model_deployment="alz", run_id=BETTER) == "candidate"
    assert cand.candidate_outcome(operator_kube, namespace=s.ns, model_deployment="alz", run_id="nope") is None
    wait_until(lambda: (s.router_table().get("experiment") or {}).get("treatment") == version, 90,
               "candidate's experiment routed", s.op.tail)
    assert s.router_table()["experiment"]["treatment_share"] == 0.5

    st = _feed_until(s, exp["metadata"]["name"], {"control": 0.80, "treatment": 0.92}, seed=11,
                     done=lambda st: st.get("phase") in ("Concluded", "Completed", "Terminated"))
    assert st["phase"] == "Concluded" and st["winner"] == "treatment", st
    wait_until(lambda: cand.candidate_outcome(operator_kube, namespace=s.ns, model_deployment="alz",
                                              run_id=BETTER) == "promoted", 60, "candidate promoted", s.op.tail)
    wait_until(lambda: s.router_table()["stable_version"] == version and s.router_table()["experiment"] is None,
               90, "router stable = candidate", s.op.tail)
    wait_until(lambda: s.mdep_status().get("currentVersion") == version, 60, "currentVersion = candidate")
    with httpx.Client(base_url=s.router, timeout=10) as client:
        served = {client.post("/predict", json={"features": FEATURES, "user_id": f"after-{i}"}).json()["model_version"]
                  for i in range(40)}
    assert served == {version}
    # GitOps users are told what to write into Git: in status and in an Event
    cstatus = s.mdep_status()["candidates"][0]
    assert cstatus["name"] == version and cstatus["state"] == "promoted"
    assert entries[version]["artifact"]["sha256"] in cstatus["message"] and "spec.versions" in cstatus["message"]
    promoted_events = s.events("CandidatePromoted")
    assert promoted_events and entries[version]["artifact"]["uri"] in promoted_events[0]["message"]

    # the policy and the experiment go away: the promotion stays (it lives in the candidates ConfigMap)
    s.cluster.kubectl("delete", "retrainpolicy", "manual", "-n", s.ns)
    s.cluster.kubectl("delete", "abexperiment", exp["metadata"]["name"], "-n", s.ns)
    # an edit of the ModelDeployment that leaves stableVersion alone (new generation) keeps it too
    edited = json.loads(json.dumps(s.manifest))
    edited["spec"]["monitoring"]["collectIntervalSeconds"] = 6
    s.apply(edited)
    wait_until(lambda: s.mdep_status().get("observedGeneration") == s.mdep()["metadata"]["generation"], 60,
               "edit reconciled", s.op.tail)
    time.sleep(3)
    assert s.router_table()["stable_version"] == version
    assert s.deployment(version) is not None and s.entries()[version]["state"] == "promoted"
    assert s.mdep_status()["currentVersion"] == version

    # the operator never wrote the user's object: same spec, labels, annotations; its field manager
    # appears only on the status subresource (Argo CD compares the rest and sees no drift)
    spec, labels, annotations, generation, managers = s.user_fields()
    expected = json.loads(json.dumps(before[0]))
    expected["monitoring"]["collectIntervalSeconds"] = 6
    assert spec == expected and generation == before[3] + 1
    assert (labels, annotations) == before[1:3]
    assert {(m, sub) for m, sub in managers if m == "mlops-operator"} <= {("mlops-operator", "status")}

    # changing stableVersion (the user takes control back) ends the promotion
    back = json.loads(json.dumps(edited))
    v1 = back["spec"]["versions"][0]
    back["spec"]["versions"] = [v1, {"name": "v0", "artifact": dict(v1["artifact"])}]
    back["spec"]["stableVersion"] = "v0"
    s.kubelet.urls["v0"] = s.kubelet.urls["v1"]
    s.apply(back)
    wait_until(lambda: s.router_table()["stable_version"] == "v0", 90, "stable follows the spec again", s.op.tail)
    wait_until(lambda: s.deployment(version) is None, 60, "superseded candidate pruned", s.op.tail)

    # deleting the ModelDeployment garbage-collects everything the loop created
    s.cluster.kubectl("delete", "modeldeployment", "alz", "-n", s.ns, "--wait=false")
    wait_until(lambda: s.admin.get("ConfigMap", s.ns, "alz-candidates") is None and not s.experiments()
               and s.deployment("v1") is None, 90, "garbage collection")


def test_worse_candidate_is_rejected_and_its_pods_are_removed(loop, operator_kube):
    s = loop
    before = s.user_fields()
    version = s.propose(operator_kube, WORSE)
    name = cc.experiment_name("alz-retrain", WORSE)
    wait_until(lambda: s.deployment(version), 60, "candidate Deployment", s.op.tail)
    wait_until(lambda: (s.router_table().get("experiment") or {}).get("treatment") == version, 90,
               "candidate's experiment routed", s.op.tail)
    st = _feed_until(s, name, {"control": 0.90, "treatment": 0.78}, seed=12,
                     done=lambda st: st.get("phase") in ("Concluded", "Completed", "Terminated"))
    assert st["phase"] == "Concluded" and st["winner"] == "control", st
    wait_until(lambda: cand.candidate_outcome(operator_kube, namespace=s.ns, model_deployment="alz",
                                              run_id=WORSE) == "rejected", 60, "candidate rejected", s.op.tail)
    wait_until(lambda: s.deployment(version) is None and s.admin.get("Service", s.ns, f"alz-{version}") is None,
               60, "candidate's Deployment and Service pruned", s.op.tail)
    wait_until(lambda: not [p for p in s.admin.list("Pod", s.ns)
                            if (p["metadata"].get("labels") or {}).get("mlops.duetmind.io/model-version") == version
                            and not p["metadata"].get("deletionTimestamp")], 60, "candidate's pods gone")
    assert s.router_table()["stable_version"] == "v1" and version not in s.router_table()["versions"]
    assert s.events("CandidateRejected")
    assert s.mdep_status()["candidates"][0]["state"] == "rejected"
    # a repeated proposal of the settled run changes nothing: no new experiment, the verdict stands
    assert s.propose(operator_kube, WORSE) == version
    assert len(s.experiments()) == 1 and s.entries()[version]["state"] == "rejected"
    assert s.user_fields()[:4] == before[:4]
    # deleting the ModelDeployment garbage-collects the candidates ConfigMap and the (concluded) experiment
    s.cluster.kubectl("delete", "modeldeployment", "alz", "-n", s.ns, "--wait=false")
    wait_until(lambda: s.admin.get("ConfigMap", s.ns, "alz-candidates") is None and not s.experiments(), 90,
               "garbage collection")


def test_sigkill_at_each_step_converges_to_one_candidate_and_one_experiment(loop, operator_kube):
    s = loop
    s.kubelet.urls[cc.version_name(KILL)] = s.kubelet.urls[cc.version_name(WORSE)]  # served by the same pair
    # 1. killed after recording the candidate, before opening its experiment: the entry is written
    #    (as propose_candidate's first write does) and the process dies; the operator completes it
    art = s.models / "v2" / "model.skops"
    mdep = s.admin.get_mdep(s.ns, "alz")
    cand._ensure_configmap(operator_kube, mdep)
    entry = cc.new_entry(run_id=KILL, policy="alz-retrain", uri=art.as_uri(), sha256=sha256_of(art), format="skops",
                         metrics={}, experiment=cc.experiment_name("alz-retrain", KILL), now="2026-01-01T00:00:00Z")
    entry["experimentSpec"] = cand._experiment_spec(mdep, "v1", entry["name"], 0.5)
    cand._put_entry(operator_kube, s.ns, "alz", entry)
    exp = wait_until(lambda: s.experiments(), 60, "the operator opens the recorded experiment", s.op.tail)[0]
    assert exp["metadata"]["name"] == entry["experiment"]
    wait_until(lambda: s.entries()[entry["name"]].get("experimentUid") == exp["metadata"]["uid"], 30, "uid recorded")
    # the RetrainPolicy controller, restarted, calls again: nothing new
    assert s.propose(operator_kube, KILL) == entry["name"]
    assert [e["metadata"]["uid"] for e in s.experiments()] == [exp["metadata"]["uid"]]

    # 2. killed after the experiment opened and started
    started = wait_until(lambda: s.abx_status(exp["metadata"]["name"]).get("startedAt"), 60, "experiment started",
                         s.op.tail)
    s.op.stop(signal.SIGKILL)
    assert s.propose(operator_kube, KILL) == entry["name"]  # the retry while the operator is down
    s.op.start()
    wait_until(lambda: (s.router_table().get("experiment") or {}).get("treatment") == entry["name"], 90,
               "routed after the restart", s.op.tail)
    time.sleep(3)
    assert len(s.experiments()) == 1 and s.experiments()[0]["metadata"]["uid"] == exp["metadata"]["uid"]
    assert s.abx_status(exp["metadata"]["name"])["startedAt"] == started
    assert list(s.entries()) == [entry["name"]] and s.entries()[entry["name"]]["state"] == "candidate"
    candidates = [d for d in s.admin.list("Deployment", s.ns) if d["metadata"]["name"] == f"alz-{entry['name']}"]
    assert len(candidates) == 1

    # 3. the experiment is deleted before a verdict: the candidate is discarded, not re-opened
    s.cluster.kubectl("delete", "abexperiment", exp["metadata"]["name"], "-n", s.ns)
    wait_until(lambda: s.entries()[entry["name"]]["state"] == "rejected", 60, "rejected after deletion", s.op.tail)
    wait_until(lambda: s.deployment(entry["name"]) is None, 60, "candidate pruned", s.op.tail)
    assert s.propose(operator_kube, KILL) == entry["name"] and not s.experiments()


def test_bad_input_is_a_clear_error(loop, operator_kube):
    s = loop
    art = s.models / "v2" / "model.skops"
    with pytest.raises(ValueError, match="sha256"):
        cand.propose_candidate(operator_kube, namespace=s.ns, model_deployment="alz", policy="p", run_id="r",
                               uri=art.as_uri(), sha256="abc")
    with pytest.raises(ValueError, match="uri"):
        cand.propose_candidate(operator_kube, namespace=s.ns, model_deployment="alz", policy="p", run_id="r",
                               uri="ftp://x/model.skops", sha256="0" * 64)
    from mlops.operator.k8s import KubeError

    with pytest.raises(KubeError) as err:
        cand.propose_candidate(operator_kube, namespace=s.ns, model_deployment="missing", policy="p", run_id="r",
                               uri=art.as_uri(), sha256="0" * 64)
    assert err.value.status == 404
    # a run proposed twice with a different artifact is refused, the first record stands
    s.propose(operator_kube, "run-twice")
    with pytest.raises(ValueError, match="already proposed"):
        cand.propose_candidate(operator_kube, namespace=s.ns, model_deployment="alz", policy="alz-retrain",
                               run_id="run-twice", uri=art.as_uri(), sha256="1" * 64)
    assert len(s.experiments()) == 1


HOLD = "mlops.duetmind.io/kwok-hold"


def _send_drifted(router: str, rows: int, seed: int) -> None:
    """Traffic whose `age` is shifted by one training standard deviation (8 years); `score` as in training."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=router, timeout=30) as client:
        for i in range(rows):
            features = {"age": round(float(rng.normal(70 + 8, 8)), 1), "score": round(float(rng.normal(25, 3)), 2)}
            r = client.post("/predict", json={"features": features, "user_id": f"drifted-{seed}-{i}"})
            assert r.status_code == 200, r.text


def _drifting(s: Loop) -> dict:
    return next((c for c in s.mdep_status().get("conditions") or [] if c["type"] == "Drifting"), {})


def test_full_loop_from_real_drifted_traffic(profiled_loop):
    """drift -> one Job -> artifact record -> candidate deployed -> experiment at the policy's split ->
    promotion, with the RetrainPolicy controller (issue 14) in the same operator process. The drift is
    real: traffic with `age` shifted by 1 sd goes through the router to v1's `mlops serve`, its sidecar
    bins it against the training profile, and the operator's collector scrapes the sidecars and sets
    `Drifting` from its own window test. The test plays only the training container (the KWOK pod's
    termination message)."""
    s = profiled_loop
    before = s.user_fields()
    s.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy", "metadata": {"name": "alz-retrain"},
             "spec": {"modelDeployment": "alz", "triggers": {"drift": {"threshold": 0.1}},
                      "constraints": {"minHoursBetweenRetrains": 6, "maxRetrainsPerDay": 4},
                      "jobTemplate": {"spec": {"template": {
                          "metadata": {"annotations": {HOLD: "true"}},
                          "spec": {"containers": [{"name": "train", "image": "mlops-operator:test",
                                                   "command": ["mlops", "train", "--termination-message-path",
                                                               "/dev/termination-log"]}]}}}},
                      "onSuccess": {"openExperiment": True, "trafficSplit": 0.5}}})
    wait_until(lambda: ((s.admin.get("RetrainPolicy", s.ns, "alz-retrain") or {}).get("status") or {}).get("phase")
               == "Idle", 60, "policy evaluated", s.op.tail)
    # the operator's first scrape of the sidecars only sets its counters' baseline (what they counted
    # for earlier tests is not new): drifted traffic is sent after it, so all of it is in the windows
    wait_until(lambda: (s.mdep_status().get("metrics") or {}).get("collectedAt"), 90, "first collection",
               s.op.tail)
    assert _drifting(s).get("status") != "True" and not s.admin.list("Job", s.ns)
    # 600 rows: every drift window holds at least 100 (windows.MIN_DRIFT_WINDOW_ROWS), however the
    # collections cut the stream, and a 1 sd shift in such a window is far beyond its 5e-5 level
    _send_drifted(s.router, 600, seed=31)
    drifting = wait_until(lambda: _drifting(s).get("status") == "True" and _drifting(s), 120,
                          "the operator sets Drifting from the sidecars' counts", s.op.tail)
    assert drifting["reason"] == "FeatureDrift" and "age" in drifting["message"], drifting
    metrics = s.mdep_status()["metrics"]
    assert metrics["driftedFeatures"] == ["age"], metrics  # the unshifted feature is not named
    assert metrics["driftWindowRows"] >= 100 and metrics["driftScore"] > 0.1, metrics
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    jobs = wait_until(lambda: s.admin.list("Job", s.ns), 60, "a retraining Job", s.op.tail)
    assert [j["metadata"]["name"] for j in jobs] == [LOOP_RUN]
    # the training container's part: it reports the artifact through its termination message
    pod = wait_until(lambda: s.admin.list("Pod", s.ns, f"job-name={LOOP_RUN}"), 60, "training pod")[0]
    wait_until(lambda: (s.admin.get("Pod", s.ns, pod["metadata"]["name"]).get("status") or {}).get("phase")
               == "Running", 60, "training pod Running")
    art = s.models / "v2" / "model.skops"
    record = {"uri": art.as_uri(), "sha256": sha256_of(art), "format": "skops", "metrics": {"accuracy": 0.92},
              "runId": LOOP_RUN}
    s.admin.patch_status(s.ns, pod["metadata"]["name"], {"phase": "Succeeded", "containerStatuses": [{
        "name": "train", "image": "mlops-operator:test", "imageID": "", "ready": False, "restartCount": 0,
        "started": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(record),
                                                   "startedAt": now, "finishedAt": now}}}]}, kind="Pod")
    version = cc.version_name(LOOP_RUN)
    exp_name = cc.experiment_name("alz-retrain", LOOP_RUN)
    wait_until(lambda: s.admin.get("ABExperiment", s.ns, exp_name), 90, "the candidate's experiment", s.op.tail)
    assert s.entries()[version]["state"] == "candidate"
    wait_until(lambda: s.deployment(version), 60, "candidate Deployment", s.op.tail)
    wait_until(lambda: (s.router_table().get("experiment") or {}).get("treatment") == version, 90,
               "candidate's experiment routed", s.op.tail)
    assert s.router_table()["experiment"]["treatment_share"] == 0.5  # the policy's onSuccess.trafficSplit
    st = _feed_until(s, exp_name, {"control": 0.80, "treatment": 0.92}, seed=21,
                     done=lambda st: st.get("phase") in ("Concluded", "Completed", "Terminated"))
    assert st["phase"] == "Concluded" and st["winner"] == "treatment", st
    wait_until(lambda: s.router_table()["stable_version"] == version, 90, "router stable = candidate", s.op.tail)
    wait_until(lambda: s.entries()[version]["state"] == "promoted", 30, "candidate promoted")
    # the policy's controller reads the outcome back through candidate_outcome
    wait_until(lambda: "promoted" in json.dumps((s.admin.get("RetrainPolicy", s.ns, "alz-retrain") or {})
                                                .get("status") or {}), 60, "outcome in the policy's status",
               s.op.tail)
    assert len(s.admin.list("Job", s.ns)) == 1 and len(s.experiments()) == 1
    assert s.user_fields()[0] == before[0] and s.user_fields()[3] == before[3]


def test_rbac_lets_the_operator_open_experiments_but_never_write_a_modeldeployment(cluster, operator_kubeconfig):
    """The first invariant holds by construction: the operator's own RBAC cannot write a spec."""
    def can(verb: str, what: str, *extra: str) -> str:
        return cluster.kubectl("auth", "can-i", verb, what, *extra, "-n", "default", kubeconfig=operator_kubeconfig,
                               check=False).stdout.strip()

    assert can("create", "abexperiments.mlops.duetmind.io") == "yes"
    assert can("patch", "modeldeployments.mlops.duetmind.io", "--subresource=status") == "yes"
    for verb in ("create", "update", "patch", "delete"):
        assert can(verb, "modeldeployments.mlops.duetmind.io") == "no", verb
