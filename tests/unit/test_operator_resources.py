"""Golden-manifest tests of the pure ModelDeployment builder (no cluster).

Regenerate the golden files after an intended change with ``MLOPS_UPDATE_GOLDEN=1 pytest ...`` and
review the diff.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from mlops.operator.resources import naming as n
from mlops.operator.resources.model_deployment import ArtifactCheck, Observed, desired_objects, plan
from mlops.operator.resources.spec import InvalidSpec
from mlops.serving.routing_table import RoutingTable

GOLDEN = Path(__file__).parent / "golden"
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_OLD = "0123456789abcdef" * 4


def mdep(**spec_overrides):
    spec = {
        "modelName": "alzheimer",
        "stableVersion": "v1",
        "versions": [
            {"name": "v1", "artifact": {"uri": "https://models.example/alz/v1.skops", "sha256": SHA_A}},
        ],
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "mlops.duetmind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "alz", "namespace": "models", "uid": "1234-uid", "generation": 3},
        "spec": spec,
    }


def two_versions():
    return mdep(
        versions=[
            {"name": "v1", "artifact": {"uri": "https://models.example/alz/v1.skops", "sha256": SHA_A}, "replicas": 2,
             "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}},
            {"name": "v2", "artifact": {"uri": "file:///mnt/models/v2.joblib", "sha256": SHA_B, "format": "joblib"}},
        ],
        featureSchema=[{"name": "Age", "type": "number"}, {"name": "M/F", "type": "string", "required": False}],
        baselineProfileRef={"configMapName": "alz-profile"},
        monitoring={"baselineAccuracy": 0.87},
        routing={"userKeyHeader": "X-Patient"},
    )


def check_golden(name: str, objects) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(objects, indent=2, sort_keys=True) + "\n"
    if os.environ.get("MLOPS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with MLOPS_UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(text), f"{name} differs from {path}"


def by_kind_name(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_single_version_matches_golden():
    check_golden("mdep_single_version", desired_objects(mdep()))


def test_two_versions_with_profile_matches_golden():
    check_golden("mdep_two_versions", desired_objects(two_versions()))


def test_object_set_and_names():
    objs = by_kind_name(desired_objects(two_versions()))
    assert set(objs) == {
        ("ServiceAccount", "alz-model"),
        ("ConfigMap", "alz-routing"),
        ("Deployment", "alz"),
        ("Service", "alz"),
        ("Deployment", "alz-v1"),
        ("Service", "alz-v1"),
        ("Deployment", "alz-v2"),
        ("Service", "alz-v2"),
    }


def test_everything_is_owned_labelled_and_namespaced():
    for obj in desired_objects(two_versions()):
        meta = obj["metadata"]
        assert meta["namespace"] == "models"
        assert meta["ownerReferences"] == [{
            "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "name": "alz",
            "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True,
        }]
        labels = meta["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                    "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
            assert labels[key], key
        assert labels["app.kubernetes.io/managed-by"] == "mlops-operator"
        assert labels[n.LABEL_DEPLOYMENT] == "alz"


def pod_specs(objects):
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]


def test_every_pod_meets_the_restricted_pod_security_profile():
    specs = pod_specs(desired_objects(two_versions()))
    assert len(specs) == 3
    for pod in specs:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert "hostPort" not in json.dumps(c)
        for vol in pod["volumes"]:
            assert set(vol) - {"name"} <= {"emptyDir", "configMap", "secret"}, vol


def test_version_pod_runs_model_and_monitor_with_a_verifying_init_container():
    objs = by_kind_name(desired_objects(two_versions()))
    pod = objs[("Deployment", "alz-v2")]["spec"]["template"]["spec"]
    model, monitor = pod["containers"]
    assert (model["name"], monitor["name"]) == ("model", "monitor")
    args = model["args"]
    assert args[0] == "serve"
    assert args[args.index("--model-uri") + 1] == "file:///models/model.joblib"
    assert args[args.index("--sha256") + 1] == SHA_B
    assert args[args.index("--version") + 1] == "v2"
    assert args[args.index("--sidecar-url") + 1] == "http://127.0.0.1:9090"
    assert monitor["args"][0] == "sidecar"
    assert monitor["args"][monitor["args"].index("--profile") + 1] == "/etc/mlops/profile/profile.json"
    assert monitor["args"][monitor["args"].index("--baseline-accuracy") + 1] == "0.87"
    init = pod["initContainers"][0]
    assert init["command"][-3:] == ["file:///mnt/models/v2.joblib", SHA_B, "/models/model.joblib"]
    assert model["readinessProbe"]["httpGet"]["path"] == "/health"
    assert monitor["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # A slow start on a busy node is not a liveness failure: liveness waits for the startup probe.
    for container in (model, monitor):
        startup = container["startupProbe"]
        assert startup["httpGet"] == container["livenessProbe"]["httpGet"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert "initialDelaySeconds" not in container["livenessProbe"]
    v1 = objs[("Deployment", "alz-v1")]
    assert v1["spec"]["replicas"] == 2
    assert v1["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"memory": "512Mi"}


def test_fetch_script_verifies_the_sha256(tmp_path):
    import subprocess
    import sys

    from mlops.operator.resources.model_deployment import FETCH_MODULE

    src = tmp_path / "model.skops"
    src.write_bytes(b"model bytes")
    import hashlib

    good = hashlib.sha256(b"model bytes").hexdigest()
    dest = tmp_path / "out.skops"
    ok = subprocess.run([sys.executable, "-m", FETCH_MODULE, src.as_uri(), good, str(dest)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert dest.read_bytes() == b"model bytes"
    dest.unlink()
    bad = subprocess.run([sys.executable, "-m", FETCH_MODULE, src.as_uri(), "f" * 64, str(dest)], capture_output=True, text=True)
    assert bad.returncode != 0 and "sha256 mismatch" in bad.stderr
    assert not dest.exists() and not (tmp_path / "out.skops.part").exists()


def test_routing_configmap_sends_all_traffic_to_stable():
    objs = by_kind_name(desired_objects(two_versions()))
    table = RoutingTable.model_validate_json(objs[("ConfigMap", "alz-routing")]["data"]["routing.json"])
    assert table.stable_version == "v1"
    assert table.user_key_header == "X-Patient"
    assert {v: r.weight for v, r in table.versions.items()} == {"v1": 1.0, "v2": 0.0}
    assert table.versions["v2"].url == "http://alz-v2.models.svc:80"
    assert table.experiment is None


def test_routing_includes_an_experiment_supplied_by_observation():
    exp = {"name": "alz-ab", "salt": "s", "control": "v1", "treatment": "v2", "treatment_share": 0.3}
    objs = by_kind_name(desired_objects(two_versions(), Observed(experiment=exp)))
    table = RoutingTable.model_validate_json(objs[("ConfigMap", "alz-routing")]["data"]["routing.json"])
    assert table.experiment is not None and table.experiment.treatment_share == 0.3


def test_builder_is_deterministic_and_does_not_mutate_input():
    cr = two_versions()
    before = copy.deepcopy(cr)
    assert desired_objects(cr) == desired_objects(cr)
    assert cr == before


def test_removing_a_version_removes_exactly_its_objects():
    full = by_kind_name(desired_objects(two_versions()))
    cr = two_versions()
    cr["spec"]["versions"] = cr["spec"]["versions"][:1]
    fewer = by_kind_name(desired_objects(cr))
    assert set(full) - set(fewer) == {("Deployment", "alz-v2"), ("Service", "alz-v2")}


def test_changing_replicas_changes_only_that_deployment():
    a = by_kind_name(desired_objects(two_versions()))
    cr = two_versions()
    cr["spec"]["versions"][1]["replicas"] = 4
    b = by_kind_name(desired_objects(cr))
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {("Deployment", "alz-v2")}


def test_failed_artifact_keeps_the_previously_rolled_out_artifact():
    cr = two_versions()
    observed = Observed(
        artifact_checks={"v1": ArtifactCheck(False, "sha256 mismatch"), "v2": ArtifactCheck(True)},
        deployed_artifacts={"v1": {"uri": "https://models.example/alz/v0.skops", "sha256": SHA_OLD}},
        previous_stable="v1",
    )
    p = plan(cr, observed)
    dep = by_kind_name(p.objects)[("Deployment", "alz-v1")]
    assert dep["metadata"]["annotations"][n.ANN_ARTIFACT_SHA256] == SHA_OLD
    assert SHA_OLD in dep["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert "sha256 mismatch" in p.held_versions["v1"]
    assert p.effective_stable == "v1"
    assert p.served_versions == ["v1", "v2"]


def test_new_stable_version_with_bad_artifact_is_not_rolled_out_and_routing_stays():
    cr = two_versions()
    cr["spec"]["stableVersion"] = "v2"
    observed = Observed(
        artifact_checks={"v2": ArtifactCheck(False, "sha256 mismatch for file:///mnt/models/v2.joblib")},
        previous_stable="v1",
    )
    p = plan(cr, observed)
    objs = by_kind_name(p.objects)
    assert ("Deployment", "alz-v2") not in objs and ("Service", "alz-v2") not in objs
    assert p.effective_stable == "v1"
    table = RoutingTable.model_validate_json(objs[("ConfigMap", "alz-routing")]["data"]["routing.json"])
    assert list(table.versions) == ["v1"] and table.stable_version == "v1"


def test_nothing_servable_yields_no_router():
    observed = Observed(artifact_checks={"v1": ArtifactCheck(False, "unreachable")})
    p = plan(mdep(), observed)
    assert p.served_versions == [] and p.effective_stable is None
    assert [o["kind"] for o in p.objects] == ["ServiceAccount"]


def test_a_version_named_like_the_routing_configmap_is_an_invalid_spec():
    cr = mdep(versions=[
        {"name": "v1", "artifact": {"uri": "file:///a", "sha256": SHA_A}},
        {"name": "routing", "artifact": {"uri": "file:///b", "sha256": SHA_B}},
    ], stableVersion="v1")
    with pytest.raises(InvalidSpec, match="already taken"):
        desired_objects(cr)


def test_unknown_stable_version_is_an_invalid_spec():
    with pytest.raises(InvalidSpec, match="(?i)stable_?version"):
        desired_objects(mdep(stableVersion="v9"))


def test_long_names_are_shortened_to_valid_dns_labels():
    assert len(n.version_object_name("m" * 60, "v1.2.3-rc.1")) <= 63
    assert n.dns_label("A.b_C") == "a-b-c"
    assert n.version_object_name("m" * 60, "a") != n.version_object_name("m" * 60, "b")


def test_autoscaled_version_gets_an_hpa_and_no_replicas():
    cr = mdep(versions=[{"name": "v1", "artifact": {"uri": "https://models.example/alz/v1.skops", "sha256": SHA_A},
                         "replicas": 3, "autoscaling": {"maxReplicas": 6, "targetCPUUtilizationPercentage": 60}}])
    objs = {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(cr)}
    assert "replicas" not in objs[("Deployment", "alz-v1")]["spec"]
    hpa = objs[("HorizontalPodAutoscaler", "alz-v1")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "alz-v1"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert objs[("Deployment", "alz-v1")]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    # without autoscaling the replica count is enforced as before
    plain = {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(mdep())}
    assert plain[("Deployment", "alz-v1")]["spec"]["replicas"] == 1
    assert not any(k[0] == "HorizontalPodAutoscaler" for k in plain)


def test_router_and_model_containers_mount_the_signing_key_read_only():
    from mlops.operator.resources.signing_key import SIGNING_KEY_DIR

    objects = desired_objects(two_versions())
    secret_name = n.signing_key_secret_name("alz")
    assert secret_name == "alz-signing-key"
    assert not [o for o in objects if o["kind"] == "Secret"]  # created once by the handler, never re-applied
    mounted = []
    for pod in pod_specs(objects):
        volume = next(v for v in pod["volumes"] if v.get("secret"))
        assert volume["secret"]["secretName"] == secret_name
        for c in pod["containers"]:
            if c["name"] == "monitor":
                assert not any(m["name"] == volume["name"] for m in c["volumeMounts"])
                continue
            mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
            assert mount == {"name": volume["name"], "mountPath": SIGNING_KEY_DIR, "readOnly": True}
            env = {e["name"]: e["value"] for e in c["env"]}
            assert env["MLOPS_PREDICTION_ID_KEY_FILE"] == f"{SIGNING_KEY_DIR}/key"
            assert env["MLOPS_PREDICTION_ID_PREVIOUS_KEY_FILE"] == f"{SIGNING_KEY_DIR}/previous-key"
            mounted.append(c["name"])
    assert sorted(mounted) == ["model", "model", "router"]


def test_signing_key_secret_is_owned_and_refuses_short_keys():
    import base64

    from mlops.operator.resources.signing_key import signing_key_secret

    secret = signing_key_secret(mdep(), "k" * 64)
    assert secret["metadata"]["name"] == "alz-signing-key"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert base64.b64decode(secret["data"]["key"]) == b"k" * 64
    with pytest.raises(ValueError):
        signing_key_secret(mdep(), "short")


def test_a_version_named_like_the_signing_key_secret_is_an_invalid_spec():
    bad = mdep(versions=[{"name": "signing-key", "artifact": {"uri": "https://x/m.skops", "sha256": SHA_A}}],
               stableVersion="signing-key")
    with pytest.raises(InvalidSpec):
        plan(bad)
