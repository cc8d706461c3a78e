"""Pure rules of the closed loop (mlops.core.candidates) and the builder's handling of candidates."""

from __future__ import annotations

import json
import re

import pytest

from mlops.core import candidates as cc
from mlops.operator.api import ModelVersion
from mlops.operator.resources.model_deployment import Observed, plan

SHA = "a" * 64
URI = "s3://models/alz/rt/model.skops"


def entry(run_id: str = "run-1", **over):
    e = cc.new_entry(run_id=run_id, policy="alz-retrain", uri=URI, sha256=SHA, format="skops",
                     metrics={"accuracy": 0.9}, experiment=cc.experiment_name("alz-retrain", run_id),
                     now="2026-01-01T00:00:00Z")
    e.update(over)
    return e


def experiment(phase: str, winner: str = "none", uid: str = "u1") -> dict:
    return {"metadata": {"name": "x", "uid": uid}, "status": {"phase": phase, "winner": winner,
                                                              "recommendation": "because"}}


# ---- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["a", "run-20260101-0001", "X" * 253, "ns/policy/12:34 ü", "0"])
def test_version_name_is_deterministic_short_and_a_valid_version_name(run_id):
    name = cc.version_name(run_id)
    assert name == cc.version_name(run_id)
    assert re.fullmatch(r"rt-[0-9a-f]{8}", name)
    ModelVersion.model_validate({"name": name, "artifact": {"uri": URI, "sha256": SHA}})  # VersionName rules


def test_different_runs_get_different_names():
    names = {cc.version_name(f"run-{i}") for i in range(2000)}
    assert len(names) == 2000


@pytest.mark.parametrize("policy", ["alz-retrain", "A_Policy.With.Dots", "p" * 100, "---"])
def test_experiment_name_is_a_dns_label_ending_with_the_version(policy):
    name = cc.experiment_name(policy, "run-1")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert name.endswith(cc.version_name("run-1"))


def test_version_name_refuses_an_empty_run_id():
    with pytest.raises(ValueError):
        cc.version_name("")


# ---- input validation -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"sha256": "abc"}, "sha256"),
    ({"sha256": "A" * 64}, "sha256"),
    ({"uri": "ftp://host/m.skops"}, "uri"),
    ({"uri": ""}, "uri"),
    ({"format": "pickle"}, "format"),
    ({"traffic_split": 0.0}, "traffic_split"),
    ({"traffic_split": 1.5}, "traffic_split"),
    ({"run_id": ""}, "run_id"),
    ({"policy": ""}, "policy"),
])
def test_validate_names_the_bad_input(kwargs, needle):
    good = {"run_id": "r", "policy": "p", "uri": URI, "sha256": SHA, "format": "skops", "traffic_split": 0.1}
    cc.validate(**good)
    with pytest.raises(ValueError, match=needle):
        cc.validate(**{**good, **kwargs})


def test_same_proposal_accepts_a_repeat_and_refuses_a_different_artifact():
    e = entry()
    cc.same_proposal(e, run_id="run-1", uri=URI, sha256=SHA, format="skops")
    with pytest.raises(ValueError, match="already proposed"):
        cc.same_proposal(e, run_id="run-1", uri=URI, sha256="b" * 64, format="skops")
    with pytest.raises(ValueError, match="collision"):
        cc.same_proposal(e, run_id="run-2", uri=URI, sha256=SHA, format="skops")


def test_decode_round_trips_and_skips_what_is_not_an_entry():
    e = entry()
    data = {e["name"]: cc.encode(e), "junk": "{not json", "other": json.dumps({"name": "zzz", "state": "candidate"})}
    assert cc.decode(data) == {e["name"]: e}
    assert cc.decode(None) == {}


# ---- verdicts --------------------------------------------------------------------------------
@pytest.mark.parametrize("phase, winner, state", [
    ("Concluded", "treatment", "promoted"),
    ("Concluded", "control", "rejected"),
    ("Completed", "none", "rejected"),
    ("Terminated", "none", "rejected"),
])
def test_final_experiment_phases_map_to_a_state(phase, winner, state):
    new = cc.settle(entry(experimentUid="u1"), experiment(phase, winner), now="T", generation=3, stable_version="v1")
    assert new["state"] == state and new["settledAt"] == "T"
    if state == "promoted":
        assert new["promotedAtGeneration"] == 3 and new["stableVersionAtPromotion"] == "v1"


@pytest.mark.parametrize("phase", ["Pending", "Running", "Paused", None])
def test_no_verdict_while_the_experiment_runs(phase):
    e = entry(experimentUid="u1")
    assert cc.settle(e, experiment(phase), now="T", generation=1, stable_version="v1") is None


def test_first_sight_of_the_experiment_records_its_uid():
    new = cc.settle(entry(), experiment("Running", uid="u9"), now="T", generation=1, stable_version="v1")
    assert new["experimentUid"] == "u9" and new["state"] == "candidate"


def test_missing_experiment_rejects_only_once_it_was_seen():
    # never created yet (a proposal interrupted by a SIGKILL): wait, the reconcile completes it
    assert cc.settle(entry(), None, now="T", generation=1, stable_version="v1") is None
    gone = cc.settle(entry(experimentUid="u1"), None, now="T", generation=1, stable_version="v1")
    assert gone["state"] == "rejected" and "deleted" in gone["reason"]
    replaced = cc.settle(entry(experimentUid="u1"), experiment("Running", uid="u2"), now="T", generation=1,
                         stable_version="v1")
    assert replaced["state"] == "rejected" and "replaced" in replaced["reason"]


@pytest.mark.parametrize("state", ["promoted", "rejected"])
def test_final_states_never_change(state):
    e = entry(experimentUid="u1", state=state)
    for exp in (None, experiment("Concluded", "treatment"), experiment("Terminated")):
        assert cc.settle(e, exp, now="T", generation=1, stable_version="v1") is None


def test_no_experiment_no_verdict():
    e = entry(experiment=None)
    assert cc.settle(e, None, now="T", generation=1, stable_version="v1") is None


# ---- serving ---------------------------------------------------------------------------------
def entries(*items):
    return {e["name"]: e for e in items}


def test_candidates_are_served_rejected_are_not():
    a, b = entry("a"), entry("b", state="rejected")
    extra, stable = cc.served(entries(a, b), ["v1"], "v1")
    assert extra == [a["name"]] and stable is None


def test_the_newest_promotion_is_stable_until_stable_version_changes():
    old = entry("old", state="promoted", settledAt="2026-01-01T00:00:00Z", stableVersionAtPromotion="v1")
    new = entry("new", state="promoted", settledAt="2026-01-02T00:00:00Z", stableVersionAtPromotion="v1")
    extra, stable = cc.served(entries(old, new), ["v1"], "v1")
    assert stable == new["name"] and extra == [new["name"]]  # the older promotion's pods go
    extra, stable = cc.served(entries(old, new), ["v1", "v2"], "v2")  # the user moved stableVersion
    assert stable is None and extra == []


def test_an_adopted_candidate_is_the_specs_and_not_deployed_twice():
    p = entry("p", state="promoted", settledAt="2026-01-01T00:00:00Z", stableVersionAtPromotion="v1")
    extra, stable = cc.served(entries(p), ["v1", p["name"]], "v1")
    assert extra == [] and stable == p["name"]


def test_version_spec_follows_the_stable_template():
    template = {"name": "v1", "replicas": 3, "resources": {"requests": {"cpu": "1"}},
                "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
    trial = cc.version_spec(entry(), template, stable=False)
    assert trial["replicas"] == 1 and "autoscaling" not in trial and trial["resources"] == template["resources"]
    promoted = cc.version_spec(entry(), template, stable=True)
    assert promoted["replicas"] == 3 and promoted["autoscaling"]["maxReplicas"] == 5
    assert promoted["artifact"] == {"uri": URI, "sha256": SHA, "format": "skops"}


def test_status_tells_gitops_users_what_to_write():
    p = entry("p", state="promoted", settledAt="2026-01-01T00:00:00Z", stableVersionAtPromotion="v1")
    st = cc.status_entries(entries(p), ["v1"], "v1")
    assert st[0]["state"] == "promoted" and SHA in st[0]["message"] and URI in st[0]["message"]
    assert "spec.versions" in st[0]["message"] and "spec.stableVersion" in st[0]["message"]
    st = cc.status_entries(entries(p), ["v1", "v2"], "v2")
    assert "superseded" in st[0]["message"]


def test_status_is_bounded_and_newest_first():
    items = [entry(f"r{i}", createdAt=f"2026-01-{i + 1:02d}T00:00:00Z") for i in range(15)]
    st = cc.status_entries(entries(*items), ["v1"], "v1")
    assert len(st) == 10 and st[0]["runId"] == "r14"


def test_old_rejected_entries_expire_live_ones_never():
    rejected = [entry(f"x{i}", state="rejected", settledAt=f"2026-02-{i + 1:02d}T00:00:00Z") for i in range(25)]
    live = entry("live")
    gone = cc.expired(entries(*rejected, live))
    assert len(gone) == 5 and live["name"] not in gone
    assert set(gone) == {e["name"] for e in rejected[:5]}


# ---- the builder -----------------------------------------------------------------------------
CR = {"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "alz", "namespace": "ns", "uid": "uid-1", "generation": 1},
      "spec": {"modelName": "alz", "stableVersion": "v1",
               "versions": [{"name": "v1", "artifact": {"uri": "s3://m/v1.skops", "sha256": "b" * 64},
                             "replicas": 2}]}}


def test_plan_deploys_candidates_like_versions_and_verifies_their_sha256():
    c = cc.version_spec(entry(), CR["spec"]["versions"][0], stable=False)
    the_plan = plan(CR, Observed(candidates=[c]))
    assert the_plan.served_versions == ["v1", c["name"]] and the_plan.effective_stable == "v1"
    dep = next(o for o in the_plan.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == f"alz-{c['name']}")
    assert SHA in dep["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert dep["spec"]["replicas"] == 1
    table = json.loads(next(o for o in the_plan.objects if o["kind"] == "ConfigMap")["data"]["routing.json"])
    assert table["versions"][c["name"]]["weight"] == 0.0 and table["stable_version"] == "v1"
    assert [v["name"] for v in the_plan.spec["versions"]] == ["v1", c["name"]]  # status reports it


def test_plan_makes_the_active_promotion_stable_and_an_experiment_promotion_wins():
    c = cc.version_spec(entry(), CR["spec"]["versions"][0], stable=True)
    the_plan = plan(CR, Observed(candidates=[c], candidate_stable=c["name"]))
    assert the_plan.effective_stable == c["name"]
    assert plan(CR, Observed(candidates=[c], candidate_stable=c["name"], promoted="v1")).effective_stable == "v1"


def test_plan_without_candidates_is_unchanged():
    assert plan(CR, Observed()).objects == plan(CR).objects
