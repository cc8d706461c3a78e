"""ABExperiments end to end on the real local control plane.

The operator runs as a real `mlops operator` process under manifests/rbac.yaml. Each model version is a
real `mlops serve` + `mlops sidecar` pair on loopback (KWOK pods stand in for the pods), and the real
`mlops route` process reads the routing table from a folder laid out like a mounted ConfigMap. A small
thread plays the kubelet: it copies the operator's routing ConfigMap into that folder (swapping the
``..data`` link as Kubernetes does), with the in-cluster Service URLs replaced by the loopback ones.
A seeded simulator sends users through the router and labels predictions with a known accuracy per
arm (it reads the arm from the router's answer). The operator's clock is shifted through a file
(``--clock-offset-file``) to cross ramp steps and ``durationDays`` without waiting.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlops.core.ab_stats import srm_units_for_power
from mlops.core.assignment import assign_variant
from mlops.operator.k8s import Kube
from mlops.testing.experiment_stack import (
    FEATURES,
    INTERVAL,
    Scenario,
    Simulator,
    arm_totals,
    start_mlops,
    start_pairs,
    stop_all,
    train_models,
    users,
    wait_http,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return train_models(tmp_path_factory.mktemp("abx-models"))


@pytest.fixture(scope="module")
def pairs(models, tmp_path_factory):
    """One `mlops serve` + `mlops sidecar` pair per version (shared by the tests: counts are per experiment)."""
    stack = start_pairs(models, tmp_path_factory.mktemp("home"))
    try:
        yield stack
    finally:
        stop_all(list(stack["procs"].values()))


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster, crds_installed) -> Path:
    cluster.create_namespace("mlops-system")
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
    return cluster.service_account_kubeconfig("mlops-system", "mlops-operator")


@pytest.fixture(scope="module")
def admin(cluster) -> Kube:
    return Kube(cluster.api_client())


@pytest.fixture
def scenario(cluster, admin, operator_kubeconfig, pairs, models, tmp_path):
    s = Scenario(cluster, admin, operator_kubeconfig, pairs, models, tmp_path)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- tests
def test_true_effect_declares_the_treatment_and_promotes_it(scenario):
    s = scenario
    s.experiment("effect", autoPromote=True)
    wait_until(lambda: s.status("effect").get("phase") == "Running" and s.router_table().get("experiment"),
               90, "experiment Running and routed", s.op.tail)
    assert s.router_table()["experiment"]["treatment_share"] == 0.5
    sim = Simulator(s.router, seed=1)
    winner = None
    for round_ in range(12):
        sim.run(users(f"e{round_}", 500), {"control": 0.85, "treatment": 0.90}, per_user=2)
        time.sleep(2 * INTERVAL + 0.5)
        st = s.status("effect")
        if st.get("winner") == "treatment":
            winner = st
            break
    assert winner is not None, (s.status("effect"), s.op.tail())
    assert winner["phase"] == "Concluded" and winner["pValue"] < 0.05
    assert not winner["sampleRatioMismatch"]
    assert winner["promotion"]["version"] == "v2" and winner["promotedVersion"] == "v2"
    assert "Promote v2" in winner["recommendation"]
    assert s.condition("effect", "Concluded")["status"] == "True"
    # the ModelDeployment records the promotion; the router sends all stable traffic to v2
    wait_until(lambda: (s.admin.get_mdep(s.ns, "alz").get("status") or {}).get("currentVersion") == "v2", 30,
               "ModelDeployment currentVersion v2", s.op.tail)
    table = wait_until(lambda: (t := s.router_table())["stable_version"] == "v2" and t, 90, "router stable v2")
    assert table["experiment"] is None
    with httpx.Client(base_url=s.router, timeout=10) as client:
        served = {client.post("/predict", json={"features": FEATURES, "user_id": f"after-{i}"}).json()["model_version"]
                  for i in range(50)}
    assert served == {"v2"}
    assert s.events("Promoted") and s.events("Concluded")
    # the spec was never written: a new generation of the ModelDeployment takes precedence again
    mdep = s.admin.get_mdep(s.ns, "alz")
    spec = mdep["spec"]
    spec["monitoring"]["collectIntervalSeconds"] = 6
    s.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "alz"},
             "spec": spec})
    assert s.admin.get_mdep(s.ns, "alz")["spec"]["stableVersion"] == "v1"
    wait_until(lambda: s.router_table()["stable_version"] == "v1", 90, "stable back to v1 (new generation)")


def test_no_effect_completes_at_duration_without_a_winner(scenario):
    s = scenario
    s.experiment("null", durationDays=2)
    wait_until(lambda: s.router_table().get("experiment"), 90, "experiment routed", s.op.tail)
    sim = Simulator(s.router, seed=2)
    sim.run(users("n", 300), {"control": 0.85, "treatment": 0.85}, per_user=2)
    wait_until(lambda: s.status("null").get("samples") == {"control": sim.labelled["control"],
                                                           "treatment": sim.labelled["treatment"]},
               90, "samples collected", s.op.tail)
    assert s.status("null")["phase"] == "Running" and s.status("null")["winner"] == "none"
    started = s.status("null")["startedAt"]
    s.op.shift_clock(49)
    st = wait_until(lambda: (x := s.status("null")).get("phase") == "Completed" and x, 90, "Completed", s.op.tail)
    assert st["winner"] == "none" and st["startedAt"] == started and st["currentSplit"] == 0.0
    assert "No significant difference" in st["recommendation"]
    wait_until(lambda: s.router_table()["experiment"] is None, 90, "experiment left the routing table")
    assert s.router_table()["stable_version"] == "v1"


def test_guardrail_breach_rolls_back_within_one_interval(scenario):
    s = scenario
    s.experiment("guard", autoRollback=True, guardrails=[{"metric": "errorRate", "maxDegradation": 0.01}])
    st = wait_until(lambda: (x := s.status("guard")).get("salt") and x.get("phase") == "Running" and x, 30,
                    "Running", s.op.tail)
    wait_until(lambda: s.router_table().get("experiment"), 90, "experiment routed")
    salt = st["salt"]
    rng = np.random.default_rng(3)
    # the treatment fails 5x as often as control (the simulator knows the sticky assignment from the salt)
    bad = lambda u: rng.random() < (0.20 if assign_variant(salt, u, 0.5) == "treatment" else 0.04)  # noqa: E731
    sim = Simulator(s.router, seed=3)
    sim.run(users("g", 600), {"control": 0.85, "treatment": 0.85}, per_user=2, bad=bad)
    sent_at = time.monotonic()
    st = wait_until(lambda: (x := s.status("guard")).get("phase") == "Terminated" and x, 90, "Terminated", s.op.tail)
    took = time.monotonic() - sent_at
    assert st["currentSplit"] == 0.0 and st["guardrails"][0]["result"] == "breached"
    assert "Rolled back" in st["recommendation"]
    assert s.condition("guard", "GuardrailBreached")["status"] == "True"
    assert s.events("RolledBack")
    wait_until(lambda: s.router_table()["experiment"] is None, 10, "treatment out of the routing table")
    took_route = time.monotonic() - sent_at
    # the decisive counts reach the sidecars within their flush; one interval later the verdict is in status
    assert took < INTERVAL + 3.0, took
    assert took_route < INTERVAL + 4.0, took_route
    with httpx.Client(base_url=s.router, timeout=10) as client:
        r = client.post("/predict", json={"features": FEATURES, "user_id": "after"})
        assert r.status_code == 200 and r.json()["model_version"] == "v1"


def test_sample_ratio_mismatch_blocks_the_winner(scenario):
    s = scenario
    s.experiment("srm", autoPromote=True)
    st = wait_until(lambda: (x := s.status("srm")).get("salt") and x.get("phase") == "Running" and x, 30,
                    "Running", s.op.tail)
    wait_until(lambda: s.router_table().get("experiment"), 90, "experiment routed")
    salt = st["salt"]
    # a logging bug loses 18% of control users: 45/55 under a 50/50 split. The sequential SRM test
    # (alpha 0.001) needs about 5,500 users to flag that with probability 0.999 (3,200 users, as this
    # test used to send, gave it 80%: a flaky test, not a product defect); send 2% more than needed.
    loss = 0.18
    true_share = 0.5 / (1 - 0.5 * loss)
    needed = srm_units_for_power(0.5, true_share, alpha=0.001, power=0.999)
    candidates = users("s", math.ceil(1.02 * needed / (1 - 0.5 * loss)))
    drop = np.random.default_rng(4).random(len(candidates)) < loss
    kept = [u for u, d in zip(candidates, drop, strict=True) if not (d and assign_variant(salt, u, 0.5) == "control")]
    sim = Simulator(s.router, seed=4)
    # a true effect (the one the true-effect test promotes), which SRM must keep from being declared
    sim.run(kept, {"control": 0.85, "treatment": 0.90}, per_user=1)

    def settled():
        x = s.status("srm")
        done = x.get("samples") == {"control": sim.labelled["control"], "treatment": sim.labelled["treatment"]}
        return done and x.get("sampleRatioMismatch") and x

    st = wait_until(settled, 90, "every label collected and SRM flagged", s.op.tail)
    assert s.condition("srm", "SampleRatioMismatch")["status"] == "True"
    assert st["srmPValue"] < 0.001
    assert abs(st["users"]["treatment"] / (st["users"]["control"] + st["users"]["treatment"]) - true_share) < 0.02
    # the effect itself is significant, and still nothing is declared or promoted
    assert st["pValue"] < 0.05, st
    assert st["winner"] == "none" and st["phase"] == "Running" and "promotedVersion" not in st
    assert "sample-ratio mismatch" in st["recommendation"]
    assert s.events("SampleRatioMismatch") and not s.events("Promoted")


def test_ramp_steps_with_an_injected_clock_are_monotone(scenario):
    s = scenario
    s.experiment("ramp", ramping={"strategy": "steps", "steps": [
        {"split": 0.1, "afterHours": 0}, {"split": 0.25, "afterHours": 24}, {"split": 0.5, "afterHours": 48}]})
    population = users("r", 10_000)
    treated_before: set[str] = set()
    with httpx.Client(base_url=s.router, timeout=60) as client:
        for step, share in enumerate((0.1, 0.25, 0.5)):
            if step:
                s.op.shift_clock(24)
            wait_until(lambda sh=share: ((s.router_table().get("experiment") or {}).get("treatment_share") == sh),
                       90, f"router at share {share}", s.op.tail)
            treated = set()
            for start in range(0, len(population), 1000):
                chunk = population[start:start + 1000]
                r = client.post("/predict/batch", json={"batch_features": [FEATURES] * len(chunk), "user_ids": chunk})
                assert r.status_code == 200, r.text
                treated |= {u for u, p in zip(chunk, r.json()["predictions"], strict=True)
                            if p["variant"] == "treatment"}
            assert abs(len(treated) / len(population) - share) <= 0.02, (step, len(treated))
            assert treated_before <= treated  # nobody moved from treatment back to control
            treated_before = treated
            assert s.status("ramp")["rampStep"] == step + 1
    assert s.status("ramp")["currentSplit"] == 0.5


def test_restarts_keep_started_at_and_counts_monotone_and_exact(scenario, pairs):
    s = scenario
    s.experiment("restart")
    wait_until(lambda: s.router_table().get("experiment"), 90, "experiment routed", s.op.tail)
    sim = Simulator(s.router, seed=6)
    history: list[dict] = []  # every status seen, to check the counts never go down

    def collected():
        st = s.status("restart")
        if st.get("samples"):
            history.append({"samples": st["samples"], "predictions": {
                arm: (st.get("metrics") or {}).get(arm, {}).get("predictions", 0) for arm in ("control", "treatment")}})
        want = {"control": sim.labelled["control"], "treatment": sim.labelled["treatment"]}
        return st.get("samples") == want and st

    def sidecars_hold_everything():
        want = (sim.sent["control"] + sim.sent["treatment"], sim.labelled["control"] + sim.labelled["treatment"])
        return arm_totals(pairs["info"], "restart") == want

    def restart_sidecar(version: str) -> None:
        procs, info = pairs["procs"], pairs["info"]
        procs[f"{version}-sidecar"].terminate()  # SIGTERM, as the kubelet does when it restarts a container
        procs[f"{version}-sidecar"].wait(20)
        procs[f"{version}-sidecar"] = start_mlops(info[version]["sidecar_args"], pairs["env"])
        wait_http(info[version]["sidecar"] + "/healthz", procs[f"{version}-sidecar"])

    sim.run(users("a", 300), {"control": 0.85, "treatment": 0.85})
    first = wait_until(collected, 90, "first batch collected", s.op.tail)
    started = first["startedAt"]
    # SIGKILL the operator mid-experiment; while it is down a batch reaches the sidecars and the
    # treatment's sidecar restarts: those counts were never scraped, they exist only in that sidecar
    s.op.stop(signal.SIGKILL)
    sim.run(users("b", 300), {"control": 0.85, "treatment": 0.85})
    wait_until(sidecars_hold_everything, 30, "sidecars hold the second batch")
    restart_sidecar("v2")
    s.op.start()
    second = wait_until(collected, 90, "counts after the operator and sidecar restarts", s.op.tail)
    assert second["startedAt"] == started
    # restart the control's sidecar while the operator runs, then more traffic
    restart_sidecar("v1")
    sim.run(users("c", 300), {"control": 0.85, "treatment": 0.85})
    third = wait_until(collected, 60, "counts after the second sidecar restart", s.op.tail)
    assert third["startedAt"] == started
    for before, after in zip(history, history[1:], strict=False):
        for field in ("samples", "predictions"):
            assert all(after[field][arm] >= before[field][arm] for arm in ("control", "treatment")), (before, after)
    assert third["samples"] == {"control": sim.labelled["control"], "treatment": sim.labelled["treatment"]}
    assert history[-1]["predictions"] == {"control": sim.sent["control"], "treatment": sim.sent["treatment"]}


def test_conflict_and_deletion_send_traffic_back_to_stable(scenario):
    s = scenario
    s.experiment("first")
    wait_until(lambda: s.status("first").get("phase") == "Running", 90, "first Running", s.op.tail)
    s.experiment("second")
    wait_until(lambda: s.condition("second", "Conflict").get("status") == "True", 90, "Conflict", s.op.tail)
    assert s.status("second")["phase"] == "Pending" and "'first'" in s.condition("second", "Conflict")["message"]
    s.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ABExperiment", "metadata": {"name": "orphan"},
             "spec": {"modelDeployment": "missing", "controlVersion": "v1", "treatmentVersion": "v2"}})
    wait_until(lambda: "'missing' was not found" in (s.status("orphan").get("recommendation") or ""), 30,
               "missing ModelDeployment reported", s.op.tail)
    assert s.router_table()["experiment"]["name"] == "first"
    s.cluster.kubectl("delete", "abexperiment", "first", "-n", s.ns)
    # the waiting experiment takes over; deleting it too sends everything back to the stable version
    wait_until(lambda: (s.router_table().get("experiment") or {}).get("name") == "second", 90, "second routed",
               s.op.tail)
    s.cluster.kubectl("delete", "abexperiment", "second", "-n", s.ns)
    wait_until(lambda: s.router_table()["experiment"] is None, 90, "experiment removed", s.op.tail)
    assert s.router_table()["stable_version"] == "v1"
