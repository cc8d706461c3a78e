"""Reconcile status for the failure modes of issue 12: conflicts, errors, pods that do not start,
a stable version at zero replicas, 'verified' only when a digest was checked, currentVersion moving
only once the router rolled out the new table."""

from __future__ import annotations

from mlops.operator import status as st
from mlops.operator.resources.model_deployment import ArtifactCheck, Observed, plan
from tests.unit.test_operator_status import SHA, T0, conds, cr, dep


def ready_deps(v1=2):
    return {"m-v1": dep(v1), "m": dep(1, 1)}


def test_conflict_is_degraded_resource_conflict_naming_the_object():
    c = cr()
    msg = "Service ns/m already exists and is not controlled by ModelDeployment m: left untouched"
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments=ready_deps(), now=T0, conflicts=[msg])
    assert conds(s)["Degraded"] == ("True", "ResourceConflict")
    assert s["phase"] == "Degraded"
    assert "Service ns/m" in next(x for x in s["conditions"] if x["type"] == "Degraded")["message"]


def test_apply_and_prune_errors_are_conditions():
    c = cr()
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments=ready_deps(), now=T0,
                            errors=["apply Deployment ns/m-v1: 422 Invalid: field is immutable"])
    assert conds(s)["Degraded"] == ("True", "ApplyFailed")
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments=ready_deps(), now=T0,
                            errors=["prune Service ns/m-v0: 403 Forbidden: no"])
    assert conds(s)["Degraded"] == ("True", "PruneFailed")


def test_pod_problems_are_the_ready_reason():
    c = cr()
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments={"m-v1": dep(0), "m": dep(1, 1)}, now=T0,
                            problems={"v1": ("Unschedulable", "2/2 pods Unschedulable: 0/1 nodes are available")})
    ready = next(x for x in s["conditions"] if x["type"] == "Ready")
    assert ready["reason"] == "Unschedulable" and "0/1 nodes are available" in ready["message"]


def test_stable_version_at_zero_replicas_is_not_ready():
    c = cr(replicas=0)
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments={"m-v1": dep(0, want=0), "m": dep(1, 1)}, now=T0)
    assert conds(s)["Ready"] == ("False", "StableVersionNotServing")
    assert s["phase"] != "Ready"


def test_verified_only_when_a_digest_was_checked():
    c = cr()
    p = plan(c)
    s = st.reconcile_status(c, plan=p, error=None, deployments=ready_deps(), now=T0,
                            artifact_checks={"v1": ArtifactCheck(None, "s3:// artifacts are verified by the init container")})
    message = next(x for x in s["conditions"] if x["type"] == "Degraded")["message"]
    assert "all artifacts verified" not in message and "not verified by the operator" in message
    s = st.reconcile_status(c, plan=p, error=None, deployments=ready_deps(), now=T0,
                            artifact_checks={"v1": ArtifactCheck(True, "sha256 verified")})
    assert "all artifacts verified by the operator" in next(x for x in s["conditions"] if x["type"] == "Degraded")["message"]


def test_current_version_moves_only_after_the_router_rolled_out():
    c = cr()
    c["spec"]["versions"].append({"name": "v2", "replicas": 1, "artifact": {"uri": "file:///y", "sha256": SHA}})
    c["spec"]["stableVersion"] = "v2"
    c["status"] = {"currentVersion": "v1"}
    p = plan(c, Observed(artifact_checks={"v2": ArtifactCheck(True)}))
    deps = {"m-v1": dep(2), "m-v2": dep(1, want=1), "m": dep(1, 1, generation=4, observed=3)}  # router rolling
    s = st.reconcile_status(c, plan=p, error=None, deployments=deps, now=T0)
    assert s["currentVersion"] == "v1"
    deps["m"] = dep(1, 1, generation=4, observed=4)
    s = st.reconcile_status(c, plan=p, error=None, deployments=deps, now=T0)
    assert s["currentVersion"] == "v2"


def test_autoscaled_version_wants_what_the_hpa_set():
    c = cr()
    c["spec"]["versions"][0]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 5}
    d = dep(3, want=3)
    d["spec"] = {"replicas": 3}
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments={"m-v1": d, "m": dep(1, 1)}, now=T0)
    assert s["phase"] == "Ready" and s["versions"][0]["replicas"] == 3
