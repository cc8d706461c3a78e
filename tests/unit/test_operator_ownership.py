"""Pure ownership and no-op rules shared by every controller (mlops.operator.ownership)."""

from __future__ import annotations

import copy

from mlops.operator import ownership as own
from mlops.operator.resources.model_deployment import desired_objects
from tests.unit.test_operator_resources import mdep, two_versions


def owner(name="web", uid="uid-1"):
    return {"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": uid}}


def service(refs=None, **meta):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns", "ownerReferences": refs or [], **meta},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}


def test_absent_or_controlled_by_this_uid_is_ours():
    assert own.ownership_conflict(None, owner(), "Service") is None
    ref = {"kind": "ModelDeployment", "name": "web", "uid": "uid-1", "controller": True}
    assert own.ownership_conflict(service([ref]), owner(), "Service") is None


def test_users_object_and_collisions_are_conflicts_naming_the_object():
    msg = own.ownership_conflict(service(), owner(), "Service")
    assert "Service ns/web" in msg and "not controlled by ModelDeployment web" in msg
    # same name, earlier incarnation (different uid): not adopted either
    old = {"kind": "ModelDeployment", "name": "web", "uid": "uid-0", "controller": True}
    assert "earlier ModelDeployment web" in own.ownership_conflict(service([old]), owner(), "Service")
    # a/b-c vs a-b/c: the Deployment a-b-c belongs to ModelDeployment a
    other = {"kind": "ModelDeployment", "name": "a", "uid": "uid-a", "controller": True}
    msg = own.ownership_conflict(service([other]), owner("a-b", "uid-ab"), "Deployment")
    assert "controlled by ModelDeployment a" in msg and "collision" in msg
    # a non-controller reference to us is not control
    weak = {"kind": "ModelDeployment", "name": "web", "uid": "uid-1"}
    assert own.ownership_conflict(service([weak]), owner(), "Service") is not None


def _as_live(obj):
    """What the API server returns: our fields plus defaults and bookkeeping."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="x", resourceVersion="7", creationTimestamp="2026-01-01T00:00:00Z",
                            managedFields=[{"manager": "mlops-operator"}])
    live["status"] = {"replicas": 1}
    if live["kind"] == "Deployment":
        live["spec"]["progressDeadlineSeconds"] = 600
        pod = live["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        for c in pod["containers"] + pod.get("initContainers", []):
            c["terminationMessagePath"] = "/dev/termination-log"
    if live["kind"] == "Service":
        live["spec"]["clusterIP"] = "10.0.0.7"
        live["spec"]["sessionAffinity"] = "None"
    return live


def test_up_to_date_tolerates_server_defaults_and_catches_drift():
    for cr in (mdep(), two_versions()):
        for obj in desired_objects(cr):
            stamped = own.stamp(obj)
            live = _as_live(stamped)
            assert own.up_to_date(stamped, live), obj["kind"]
    dep = own.stamp(next(o for o in desired_objects(mdep()) if o["metadata"]["name"] == "alz-v1"))
    scaled = _as_live(dep)
    scaled["spec"]["replicas"] = 5  # kubectl scale
    assert not own.up_to_date(dep, scaled)
    cm = own.stamp(next(o for o in desired_objects(mdep()) if o["kind"] == "ConfigMap"))
    edited = _as_live(cm)
    edited["data"]["routing.json"] = "{}"
    assert not own.up_to_date(cm, edited)
    # same fields but an older hash (a field was dropped from the desired state): apply again
    stale = _as_live(cm)
    stale["metadata"]["annotations"][own.ANN_APPLIED_HASH] = "0" * 32
    assert not own.up_to_date(cm, stale)
    assert not own.up_to_date(cm, None)


def test_hash_ignores_its_own_annotation_and_changes_with_content():
    obj = desired_objects(mdep())[0]
    assert own.desired_hash(obj) == own.desired_hash(own.stamp(obj))
    changed = copy.deepcopy(obj)
    changed["metadata"]["labels"]["x"] = "y"
    assert own.desired_hash(changed) != own.desired_hash(obj)
