"""Pure status computation: phases, conditions with stable transition times, alerts from thresholds."""

from __future__ import annotations

from mlops.operator import status as st
from mlops.operator.collector import to_status_metrics
from mlops.operator.resources.model_deployment import ArtifactCheck, Observed, plan
from mlops.operator.resources.spec import DEFAULT_ALERTS

SHA = "c" * 64
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def cr(status=None, replicas=2):
    return {
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 5},
        "spec": {"modelName": "m", "stableVersion": "v1",
                 "versions": [{"name": "v1", "replicas": replicas, "artifact": {"uri": "file:///x", "sha256": SHA}}]},
        "status": status or {},
    }


def dep(ready, want=2, generation=1, observed=1):
    return {"metadata": {"generation": generation, "annotations": {}},
            "status": {"observedGeneration": observed, "replicas": want, "updatedReplicas": want, "readyReplicas": ready}}


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_pending_then_progressing_then_ready():
    c = cr()
    p = plan(c)
    s0 = st.reconcile_status(c, plan=p, error=None, deployments={}, now=T0)
    assert s0["phase"] == "Pending" and s0["observedGeneration"] == 5
    s1 = st.reconcile_status(c, plan=p, error=None, deployments={"m-v1": dep(1), "m": dep(0, 1)}, now=T0)
    assert s1["phase"] == "Progressing"
    assert conds(s1)["Ready"] == ("False", "ReplicasNotReady")
    assert conds(s1)["Progressing"] == ("True", "RollingOut")
    s2 = st.reconcile_status(cr(s1), plan=p, error=None, deployments={"m-v1": dep(2), "m": dep(1, 1)}, now=T1)
    assert s2["phase"] == "Ready"
    assert conds(s2)["Ready"] == ("True", "AllReplicasReady")
    assert s2["versions"] == [{"name": "v1", "replicas": 2, "readyReplicas": 2, "sha256": SHA}]
    assert s2["url"] == "http://m.ns.svc.cluster.local" and s2["currentVersion"] == "v1"
    ready = next(x for x in s2["conditions"] if x["type"] == "Ready")
    assert ready["lastTransitionTime"] == T1 and ready["observedGeneration"] == 5


def test_stale_deployment_generation_is_not_ready():
    c = cr()
    s = st.reconcile_status(c, plan=plan(c), error=None, deployments={"m-v1": dep(2, generation=2, observed=1), "m": dep(1, 1)}, now=T0)
    assert s["phase"] == "Progressing"


def test_transition_time_only_moves_on_flips():
    out = st.set_condition([], "Ready", True, "A", "x", now=T0, generation=1)
    out = st.set_condition(out, "Ready", True, "B", "y", now=T1, generation=2)
    assert out[0]["lastTransitionTime"] == T0 and out[0]["reason"] == "B"
    out = st.set_condition(out, "Ready", False, "C", "z", now=T1, generation=2)
    assert out[0]["lastTransitionTime"] == T1


def test_invalid_spec_and_held_artifacts_are_reported():
    c = cr()
    s = st.reconcile_status(c, plan=None, error="spec.versions[0]: bad", deployments={}, now=T0)
    assert s["phase"] == "Failed" and conds(s)["Degraded"] == ("True", "InvalidSpec")
    p = plan(c, Observed(artifact_checks={"v1": ArtifactCheck(False, "sha256 mismatch")},
                         deployed_artifacts={"v1": {"uri": "file:///old", "sha256": "d" * 64}}))
    s = st.reconcile_status(c, plan=p, error=None, deployments={"m-v1": dep(2), "m": dep(1, 1)}, now=T0)
    assert s["phase"] == "Degraded"
    assert conds(s)["Degraded"] == ("True", "ArtifactVerificationFailed")
    assert "sha256 mismatch" in next(x for x in s["conditions"] if x["type"] == "Degraded")["message"]
    p = plan(c, Observed(artifact_checks={"v1": ArtifactCheck(False, "unreachable")}))
    s = st.reconcile_status(c, plan=p, error=None, deployments={}, now=T0)
    assert s["phase"] == "Failed" and conds(s)["Ready"] == ("False", "NothingToServe")


def test_alerts_follow_the_spec_thresholds():
    th = dict(DEFAULT_ALERTS)
    # accuracy alerts read the last accuracy window test (windows.py): significant and past the threshold
    window = {"windowAccuracy": 0.80, "windowLabelled": 2000, "accuracyDropPValue": 1e-9}
    alerts = st.evaluate_alerts({"accuracy": 0.80, "errorRate": 0.015, "latencyP95Ms": 600.0,
                                 "driftScore": 0.3, "driftedFeatures": ["Age"], "dataQuality": 0.9, **window}, th, 0.87)
    got = {(a["severity"], a["type"]) for a in alerts}
    assert got == {("CRITICAL", "AccuracyDrop"), ("WARNING", "ErrorRate"), ("CRITICAL", "Latency"),
                   ("WARNING", "Drift"), ("WARNING", "DataQuality")}
    assert st.evaluate_alerts({"accuracy": 0.86, "errorRate": 0.0, "latencyP95Ms": 10.0, "dataQuality": 1.0}, th, 0.87) == []
    warn = {"windowAccuracy": 0.84, "windowLabelled": 5000, "accuracyDropPValue": 1e-7}
    assert {a["severity"] for a in st.evaluate_alerts(warn, th, 0.87)} == {"WARNING"}
    # a raw drop without a significant window test (too few labels, or noise) raises nothing
    assert st.evaluate_alerts({"accuracy": 0.5}, th, 0.87) == []
    assert st.evaluate_alerts({**window, "accuracyDropPValue": 0.01}, th, 0.87) == []


def test_metrics_status_sets_drifting_with_feature_names():
    s = st.metrics_status(cr(), metrics={"predictions": 10, "driftScore": 0.4, "driftedFeatures": ["MMSE", "Age"]},
                          thresholds=DEFAULT_ALERTS, baseline_accuracy=None, now=T0)
    drifting = next(x for x in s["conditions"] if x["type"] == "Drifting")
    assert drifting["status"] == "True" and "MMSE" in drifting["message"] and "Age" in drifting["message"]
    s = st.metrics_status(cr(), metrics={"predictions": 10, "driftScore": 0.01, "driftedFeatures": []},
                          thresholds=DEFAULT_ALERTS, baseline_accuracy=None, now=T0)
    assert conds(s)["Drifting"] == ("False", "NoDrift")


def test_summary_maps_to_camel_case_status_metrics():
    summary = {"predictions": 7, "accuracy": 0.5, "precision": None, "latency_p50_ms": 1.23456789,
               "latency_p95_ms": 2.0, "error_rate": 0.0, "drift_score": None, "drifted_features": [],
               "data_quality": 1.0, "versions": {}}
    assert to_status_metrics(summary, T0) == {
        "predictions": 7, "accuracy": 0.5, "latencyP50Ms": 1.234568, "latencyP95Ms": 2.0, "errorRate": 0.0,
        "driftedFeatures": [], "dataQuality": 1.0, "collectedAt": T0,
    }
