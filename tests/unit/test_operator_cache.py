"""The watch-fed cache of owned objects: what reconciliation reads instead of the API server, so a
stale or wrong answer here becomes a wrong apply or prune there."""

from __future__ import annotations

from mlops.operator.cache import ObjectCache
from mlops.operator.resources import naming as n

OWNER = "uid-owner"


def obj(name: str, rv: int, *, managed: bool = True, controller: bool = True, instance: str | None = "m",
        owner: str = OWNER) -> dict:
    labels = {"app.kubernetes.io/managed-by": n.MANAGED_BY} if managed else {}
    if instance:
        labels[n.LABEL_DEPLOYMENT] = instance
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "labels": labels,
                         "ownerReferences": [{"uid": owner, "controller": controller, "kind": "ModelDeployment"}],
                         "managedFields": [{"manager": "mlops-operator", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"replicas": rv}}


def test_an_older_resource_version_never_replaces_a_newer_one():
    cache = ObjectCache()
    cache.put("Deployment", obj("a", 5))
    cache.put("Deployment", obj("a", 4))  # a late watch event after our own apply's response
    assert cache.get("Deployment", "ns", "a")["spec"]["replicas"] == 5
    cache.put("Deployment", obj("a", 6))
    assert cache.get("Deployment", "ns", "a")["spec"]["replicas"] == 6


def test_a_deleted_object_is_not_resurrected_by_a_late_event():
    cache = ObjectCache()
    cache.put("Service", obj("a", 5))
    cache.remove("Service", obj("a", 7))
    cache.put("Service", obj("a", 6))  # older than the deletion
    assert cache.get("Service", "ns", "a") is None
    assert cache.owned_by(OWNER, ["Service"]) == []
    cache.put("Service", obj("a", 8))  # re-created later
    assert cache.get("Service", "ns", "a")["metadata"]["resourceVersion"] == "8"


def test_an_object_that_loses_the_managed_by_label_leaves_the_cache_and_its_indexes():
    cache = ObjectCache()
    cache.put("ConfigMap", obj("a", 1))
    cache.put("ConfigMap", obj("a", 2, managed=False))
    assert cache.get("ConfigMap", "ns", "a") is None
    assert cache.owned_by(OWNER, ["ConfigMap"]) == [] and cache.labelled("ConfigMap", "ns", "m") == []
    assert len(cache) == 0


def test_owned_by_lists_only_objects_this_owner_controls_of_the_kinds_asked():
    cache = ObjectCache()
    cache.put("Deployment", obj("mine", 1))
    cache.put("ConfigMap", obj("referenced-only", 1, controller=False))  # owned for GC, never pruned
    cache.put("Deployment", obj("other", 1, owner="uid-other"))
    cache.put("Service", obj("svc", 1))
    names = sorted(o["metadata"]["name"] for o in cache.owned_by(OWNER, ["Deployment", "ConfigMap"]))
    assert names == ["mine"]


def test_labelled_finds_pods_by_model_deployment_label_and_forgets_relabelled_ones():
    cache = ObjectCache()
    cache.put("Pod", obj("p1", 1, instance="m"))
    cache.put("Pod", obj("p2", 1, instance="other"))
    assert [p["metadata"]["name"] for p in cache.labelled("Pod", "ns", "m")] == ["p1"]
    cache.put("Pod", obj("p1", 2, instance="other"))
    assert cache.labelled("Pod", "ns", "m") == []
    assert sorted(p["metadata"]["name"] for p in cache.labelled("Pod", "ns", "other")) == ["p1", "p2"]


def test_managed_fields_are_not_kept_and_the_callers_object_is_not_modified():
    cache = ObjectCache()
    original = obj("a", 1)
    cache.put("Deployment", original)
    cached = cache.get("Deployment", "ns", "a")
    assert "managedFields" not in cached["metadata"] and cached["kind"] == "Deployment"
    assert cached["metadata"]["labels"] == original["metadata"]["labels"]
    assert "managedFields" in original["metadata"] and "kind" not in original
