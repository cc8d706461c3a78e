"""The whole system on real pods: the operator installed in-cluster from crds/ and manifests/ as a pod
of the project image under its ServiceAccount, in a namespace enforcing the restricted profile; a
two-version ModelDeployment whose init containers download the artifacts from an HTTP server this
test runs on the node's bridge address and verify their sha256; real requests and feedback through
the router's Service from another pod; status metrics equal to the traffic sent; a tampered artifact
turns the resource Degraded while the previous version keeps answering; and the closed loop: drift in
real traffic, a retraining Job running `mlops train` in the image on a mounted data set and uploading
to an S3-compatible store, the candidate verified from there by its init container, an experiment over
real users and labels, and the promotion.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlops.testing.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[2]
MANIFEST_IMAGE = "ghcr.io/duetmind/mlops-operator:0.1.0"  # what manifests/ and the CRD default name
OPERATOR_NS = "mlops-system"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifact_server(real_cluster, tmp_path_factory):
    """The demo's two versions served over HTTP on the node's bridge address (reachable from pods)."""
    from mlops.serving.demo import build_demo

    root = tmp_path_factory.mktemp("artifacts")
    build_demo(root)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((real_cluster.real_node.network.gateway, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def operator_logs(cluster) -> str:
    proc = cluster.kubectl("logs", "-n", OPERATOR_NS, "deployment/mlops-operator", "--tail=60", check=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def operator_in_cluster(real_cluster, image):
    cluster = real_cluster
    cluster.real_node.tag_image(image, MANIFEST_IMAGE)
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    cluster.create_namespace(OPERATOR_NS, labels=RESTRICTED)
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "operator.yaml").read_text()) if d]
    from mlops.testing.image import podman

    flags = podman("run", "--rm", "--network", "none", image, "operator", "--help").stdout
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == MANIFEST_IMAGE
            if "--artifact-allowed-schemes" in flags:
                # The test's artifact server speaks plain HTTP on the node's bridge address.
                container["args"] += ["--artifact-allowed-schemes", "http,https,s3,gs"]
            doc["spec"]["replicas"] = 1
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    proc = cluster.kubectl("rollout", "status", "-n", OPERATOR_NS, "deployment/mlops-operator", "--timeout=240s",
                           timeout=250, check=False)
    assert proc.returncode == 0, f"operator did not become available: {proc.stderr}\n{operator_logs(cluster)}"
    yield cluster
    print(operator_logs(cluster))


CLIENT = textwrap.dedent("""\
    import json, urllib.request
    url = "http://%(svc)s"
    rows = json.loads(%(rows)r)
    out = {"versions": {}, "ok": 0, "feedback_ok": 0, "errors": []}
    for row, label, user in rows:
        req = urllib.request.Request(url + "/predict", data=json.dumps({"features": row}).encode(),
                                     headers={"Content-Type": "application/json", "X-User-ID": user})
        try:
            body = json.load(urllib.request.urlopen(req, timeout=30))
        except Exception as exc:
            out["errors"].append(repr(exc)); continue
        out["ok"] += 1
        out["versions"][body["model_version"]] = out["versions"].get(body["model_version"], 0) + 1
        fb = urllib.request.Request(url + "/feedback", data=json.dumps(
            {"prediction_id": body["prediction_id"], "true_label": label}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(fb, timeout=30).read()
            out["feedback_ok"] += 1
        except Exception as exc:
            out["errors"].append("feedback " + repr(exc))
    print(json.dumps(out))
""")


def run_client(cluster, ns: str, name: str, svc: str, rows: list, image: str) -> dict:
    code = CLIENT % {"svc": svc, "rows": json.dumps(rows)}
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "client", "image": image, "imagePullPolicy": "Never",
                            "command": ["python", "-c", code],
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}}]}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    done = cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", f"job/{name}", "--timeout=300s",
                           timeout=310, check=False)
    logs = cluster.kubectl("logs", "-n", ns, f"job/{name}", check=False)
    assert done.returncode == 0, f"client job failed: {done.stderr}\n{logs.stdout}{logs.stderr}"
    return json.loads(logs.stdout.strip().splitlines()[-1])


def get_mdep(cluster, ns: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "modeldeployment", name, "-n", ns, "-o", "json").stdout)


def condition(cr: dict, ctype: str) -> dict:
    return next((c for c in (cr.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def test_model_deployment_serves_on_real_pods_and_survives_a_tampered_artifact(
    operator_in_cluster, artifact_server, image
):
    cluster = operator_in_cluster
    base, root = artifact_server
    ns = "e2e-serving"
    cluster.create_namespace(ns, labels=RESTRICTED)
    profile = (root / "v1.0.0" / "profile.json").read_text()
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-profile"},
        "data": {"profile.json": profile}}))
    versions = [
        {"name": v, "artifact": {"uri": f"{base}/{v}.0.0/model.skops", "sha256": sha256_of(root / f"{v}.0.0" / "model.skops")},
         "replicas": 1}
        for v in ("v1", "v2")
    ]
    mdep = {
        "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "alz"},
        "spec": {"modelName": "alzheimer", "stableVersion": "v1", "versions": versions,
                 "baselineProfileRef": {"configMapName": "alz-profile"},
                 "monitoring": {"collectIntervalSeconds": 5}},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(mdep))

    def ready():
        cr = get_mdep(cluster, ns, "alz")
        st = cr.get("status") or {}
        return st.get("phase") == "Ready" and st.get("observedGeneration") == cr["metadata"]["generation"] and cr

    def diag() -> str:
        pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
        return pods + "\n" + operator_logs(cluster)

    wait_until(ready, 420, "ModelDeployment alz Ready on real pods", diag)
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    assert len(pods) == 3  # router + one pod per version
    node = cluster.real_node.name
    for pod in pods:
        assert pod["spec"]["nodeName"] == node  # real pods, not KWOK
        assert all(s.get("ready") for s in pod["status"]["containerStatuses"]), pod["status"]
    model_pods = [p for p in pods if p["spec"].get("initContainers")]
    assert len(model_pods) == 2
    for pod in model_pods:
        init = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c",
                               pod["spec"]["initContainers"][0]["name"]).stdout
        assert "verified" in init and base in init, init

    # Real requests and feedback through the router's Service, from another pod, by DNS name.
    from mlops.serving.demo import FEATURES, LABEL, generate_oasis_like

    frame = generate_oasis_like(n=40, seed=11)
    rows = [({f: float(frame[f].iloc[i]) for f in FEATURES if not frame[f].isna().iloc[i]},
             int(frame[LABEL].iloc[i]), f"user-{i % 7}") for i in range(len(frame))]
    sent = run_client(cluster, ns, "client-1", f"alz.{ns}.svc.cluster.local", rows, image)
    assert sent["ok"] == len(rows) and sent["feedback_ok"] == len(rows), sent
    assert sent["versions"] == {"v1": len(rows)}, sent  # no experiment: every user on the stable version

    def metrics_caught_up():
        m = (get_mdep(cluster, ns, "alz").get("status") or {}).get("metrics") or {}
        return m.get("predictions") == len(rows) and m.get("accuracy") is not None and m

    metrics = wait_until(metrics_caught_up, 120, f"status.metrics.predictions == {len(rows)}", diag)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    # A tampered artifact: v2 now points at a file whose bytes no longer match the pinned sha256.
    tampered = root / "v2.0.0" / "tampered.skops"
    shutil.copy(root / "v2.0.0" / "model.skops", tampered)
    with tampered.open("ab") as f:
        f.write(b"tampered")
    gen_before = json.loads(cluster.kubectl("get", "deployment", "alz-v2", "-n", ns, "-o", "json").stdout)
    mdep["spec"]["versions"][1]["artifact"]["uri"] = f"{base}/v2.0.0/tampered.skops"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(mdep))

    def degraded():
        cr = get_mdep(cluster, ns, "alz")
        return (cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
                and condition(cr, "Degraded").get("status") == "True" and cr)

    cr = wait_until(degraded, 120, "Degraded after the tampered artifact", diag)
    assert "sha256" in condition(cr, "Degraded")["message"]
    gen_after = json.loads(cluster.kubectl("get", "deployment", "alz-v2", "-n", ns, "-o", "json").stdout)
    assert gen_after["metadata"]["generation"] == gen_before["metadata"]["generation"]  # not rolled out
    again = run_client(cluster, ns, "client-2", f"alz.{ns}.svc.cluster.local", rows[:5], image)
    assert again["ok"] == 5, again  # the previous artifacts still answer


def test_quickstart_example_from_the_image_becomes_ready_and_serves(operator_in_cluster, image):
    """examples/00-quickstart: the manifest the image build wrote, for the models the image carries."""
    from mlops.testing.image import podman

    cluster = operator_in_cluster
    manifest = json.loads(podman("run", "--rm", "--network", "none", "--entrypoint", "cat", image,
                                 "/opt/mlops/demo-models/quickstart.yaml").stdout)
    assert all(v["artifact"]["uri"].startswith("file:///opt/mlops/demo-models/") for v in manifest["spec"]["versions"])
    ns = "e2e-quickstart"
    cluster.create_namespace(ns, labels=RESTRICTED)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))

    def ready():
        cr = get_mdep(cluster, ns, "quickstart")
        st = cr.get("status") or {}
        return st.get("phase") == "Ready" and st.get("observedGeneration") == cr["metadata"]["generation"] and cr

    wait_until(ready, 420, "quickstart Ready",
               lambda: cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
               + operator_logs(cluster))
    from mlops.serving.demo import FEATURES, LABEL, generate_oasis_like

    frame = generate_oasis_like(n=3, seed=5)
    rows = [({f: float(frame[f].iloc[i]) for f in FEATURES if not frame[f].isna().iloc[i]},
             int(frame[LABEL].iloc[i]), f"user-{i}") for i in range(3)]
    sent = run_client(cluster, ns, "quickstart-client", f"quickstart.{ns}.svc.cluster.local", rows, image)
    assert sent["ok"] == 3 and sent["versions"] == {"v1": 3}, sent


# ---- the closed loop on real pods ------------------------------------------------------------------
# v1 learned the old concept (label = score < 24); traffic drifts (age + 1 sd) and its labels now follow
# a new concept (label = age > 80). The retraining data set holds the new concept, so the retrained
# candidate is truly better on the traffic and the experiment has a real effect to find.
LOOP_TUNING = {"minSamplesPerVariant": 100, "minimumDetectableEffect": 0.15}


def _concept_frame(n: int, seed: int, age_mean: float, concept: str):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.normal(age_mean, 8, n).round(1), "score": rng.normal(25, 3, n).round(2)})
    frame["label"] = ((frame.score < 24) if concept == "old" else (frame.age > 80)).astype(int)
    return frame


def _loop_rows(n: int, seed: int, users: str) -> list:
    frame = _concept_frame(n, seed, 78.0, "new")
    return [({"age": float(r.age), "score": float(r.score)}, int(r.label), f"{users}-{i}")
            for i, r in enumerate(frame.itertuples())]


@pytest.fixture(scope="module")
def s3_store(real_cluster):
    """An S3-compatible store (moto, IAM authentication on) on the node's bridge address: pods reach it."""
    from mlops.testing.s3 import s3_server

    with s3_server(real_cluster.real_node.network.gateway) as store:
        yield store


def test_closed_loop_on_real_pods_drift_retrain_job_candidate_experiment_promotion(
        operator_in_cluster, s3_store, image, tmp_path):
    """drift in real traffic -> the RetrainPolicy's Job runs `mlops train` in the image on a mounted data
    set and uploads to S3 -> the candidate's init container downloads and verifies it -> the experiment
    splits real users through the router -> the candidate wins on real labels -> promoted, serving."""
    from mlops.core import candidates as cc
    from mlops.operator import candidates as cand
    from mlops.serving.training import train

    cluster = operator_in_cluster
    ns = "e2e-loop"
    started, timeline = time.monotonic(), {}

    def mark(step: str) -> None:
        timeline[step] = round(time.monotonic() - started, 1)
    cluster.create_namespace(ns, labels=RESTRICTED)
    s3 = s3_store.client()
    train(_concept_frame(600, 1, 70.0, "old"), "label", tmp_path / "v1", model_name="alz", version="v1", seed=0)
    for name in ("model.skops", "profile.json"):
        s3.upload_file(str(tmp_path / "v1" / name), s3_store.bucket, f"alz/v1/{name}")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alz-s3"}, "stringData": s3_store.secret_data()}
    data = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-training-data"},
            "data": {"train.csv": _concept_frame(800, 2, 78.0, "new").to_csv(index=False)}}
    profile = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-profile"},
               "data": {"profile.json": (tmp_path / "v1" / "profile.json").read_text()}}
    mdep = {
        "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "alz", "annotations": {cand.ANN_EXPERIMENT_DEFAULTS: json.dumps(LOOP_TUNING)}},
        "spec": {"modelName": "alz", "stableVersion": "v1",
                 "versions": [{"name": "v1", "artifact": {"uri": f"s3://{s3_store.bucket}/alz/v1/model.skops",
                                                          "sha256": sha256_of(tmp_path / "v1" / "model.skops")}}],
                 "artifactStore": {"secretName": "alz-s3", "s3Endpoint": s3_store.endpoint},
                 "baselineProfileRef": {"configMapName": "alz-profile"},
                 "monitoring": {"collectIntervalSeconds": 5}},
    }
    for doc in (secret, data, profile, mdep):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))

    def diag() -> str:
        out = [cluster.kubectl("get", "pods,jobs,abexperiments", "-n", ns, "-o", "wide", check=False).stdout]
        cr = cluster.kubectl("get", "modeldeployment", "alz", "-n", ns, "-o", "json", check=False).stdout
        policy = cluster.kubectl("get", "retrainpolicy", "-n", ns, "-o", "json", check=False).stdout
        return "\n".join([*out, cr[-3000:], policy[-3000:], operator_logs(cluster)])

    def status() -> dict:
        return get_mdep(cluster, ns, "alz").get("status") or {}

    wait_until(lambda: status().get("phase") == "Ready" and status().get("currentVersion") == "v1", 420,
               "alz Ready on v1 (artifact from S3)", diag)
    mark("v1 Ready")
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    policy = {
        "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy", "metadata": {"name": "alz-retrain"},
        "spec": {
            "modelDeployment": "alz",
            "triggers": {"drift": {"threshold": 0.1}},
            "constraints": {"minHoursBetweenRetrains": 6, "maxRetrainsPerDay": 4},
            "jobTemplate": {"spec": {"activeDeadlineSeconds": 600, "template": {"spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "train", "image": MANIFEST_IMAGE, "imagePullPolicy": "Never",
                    "args": ["train", "--data", "/data/train.csv", "--label", "label", "--model-name", "alz",
                             "--version", "$(MLOPS_RUN_ID)", "--out", "/tmp/out",
                             "--upload-to", f"s3://{s3_store.bucket}/alz/retrained",
                             "--termination-message-path", "/dev/termination-log"],
                    "envFrom": [{"secretRef": {"name": "alz-s3"}}],
                    "env": [{"name": "MLOPS_ARTIFACT_S3_ENDPOINT", "value": s3_store.endpoint},
                            {"name": "HOME", "value": "/tmp"}, {"name": "MLOPS_HOME", "value": "/tmp/mlops"}],
                    "securityContext": restricted,
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True},
                                     {"name": "tmp", "mountPath": "/tmp"}]}],
                "volumes": [{"name": "data", "configMap": {"name": "alz-training-data"}},
                            {"name": "tmp", "emptyDir": {}}]}}}},
            "onSuccess": {"openExperiment": True, "trafficSplit": 0.5}},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(policy))
    # the collector's first scrape only sets the counters' baseline: drifted traffic goes after it
    wait_until(lambda: (status().get("metrics") or {}).get("collectedAt"), 120, "first collection", diag)
    svc = f"alz.{ns}.svc.cluster.local"
    drifted = run_client(cluster, ns, "drifted-traffic", svc, _loop_rows(400, 3, "drift"), image)
    assert drifted["ok"] == 400 and drifted["versions"] == {"v1": 400}, drifted

    run = "alz-retrain-r1"
    wait_until(lambda: any(c["type"] == "Drifting" and c["status"] == "True" for c in status().get("conditions") or []),
               180, "Drifting from the real sidecars' counts", diag)
    mark("Drifting")
    done = cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", f"job/{run}", "--timeout=400s",
                           timeout=410, check=False)
    train_logs = cluster.kubectl("logs", "-n", ns, f"job/{run}", check=False)
    assert done.returncode == 0, f"training Job: {done.stderr}\n{train_logs.stdout}{train_logs.stderr}\n{diag()}"
    assert f"uploaded s3://{s3_store.bucket}/alz/retrained/{run}/model.skops" in train_logs.stdout, train_logs.stdout
    mark("training Job complete")
    published = s3.get_object(Bucket=s3_store.bucket, Key=f"alz/retrained/{run}/model.skops")["Body"].read()

    version, experiment = cc.version_name(run), cc.experiment_name("alz-retrain", run)
    exp = wait_until(lambda: (cluster.kubectl("get", "abexperiment", experiment, "-n", ns, "-o", "json",
                                              check=False).stdout or "").strip() and
                     json.loads(cluster.kubectl("get", "abexperiment", experiment, "-n", ns, "-o", "json").stdout),
                     120, "the candidate's experiment", diag)
    assert exp["spec"]["treatmentVersion"] == version and exp["spec"]["controlVersion"] == "v1"
    assert exp["spec"]["trafficSplit"] == 0.5
    entry = wait_until(lambda: next((c for c in status().get("candidates") or [] if c.get("name") == version), None),
                       60, "the candidate in status", diag)
    assert entry["sha256"] == hashlib.sha256(published).hexdigest()  # the bytes the Job uploaded

    def candidate_serving():
        dep = json.loads(cluster.kubectl("get", "deployment", f"alz-{version}", "-n", ns, "-o", "json",
                                         check=False).stdout or "{}")
        return (dep.get("status") or {}).get("readyReplicas") == 1 and dep

    wait_until(candidate_serving, 420, f"candidate alz-{version} Ready (init container fetched it from S3)", diag)
    mark("candidate Ready")
    pod = next(p for p in json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
               if p["metadata"]["name"].startswith(f"alz-{version}-"))
    init = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c",
                           pod["spec"]["initContainers"][0]["name"]).stdout
    assert f"s3://{s3_store.bucket}/alz/retrained/{run}/model.skops verified" in init, init

    def experiment_status() -> dict:
        return json.loads(cluster.kubectl("get", "abexperiment", experiment, "-n", ns, "-o", "json").stdout
                          ).get("status") or {}

    wait_until(lambda: experiment_status().get("phase") == "Running", 120, "experiment running", diag)
    seen: dict[str, int] = {}
    for round_ in range(6):
        sent = run_client(cluster, ns, f"users-{round_}", svc, _loop_rows(300, 10 + round_, f"u{round_}"), image)
        assert sent["ok"] == 300 and sent["feedback_ok"] == 300, sent
        for v, count in sent["versions"].items():
            seen[v] = seen.get(v, 0) + count
        try:
            final = wait_until(lambda: experiment_status().get("phase") in ("Concluded", "Completed", "Terminated")
                               and experiment_status(), 45, "a verdict")
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"no verdict after 1,800 users: {experiment_status()}\n{diag()}")
    mark(f"verdict after {round_ + 1} rounds of 300 users")
    assert set(seen) == {"v1", version}, seen  # real users on both arms, through the router's Service
    assert final["phase"] == "Concluded" and final.get("winner") == "treatment", final
    wait_until(lambda: status().get("currentVersion") == version, 120, "the candidate promoted to stable", diag)
    mark("promoted")
    after = run_client(cluster, ns, "after-promotion", svc, _loop_rows(20, 99, "after"), image)
    assert after["versions"] == {version: 20}, after
    training = json.loads(cluster.kubectl("get", "jobs", "-n", ns, "-l", "mlops.duetmind.io/retrainpolicy=alz-retrain",
                                          "-o", "json").stdout)["items"]
    assert [j["metadata"]["name"] for j in training] == [run]  # one decision, one Job
    verdict = {k: final.get(k) for k in ("users", "samples", "metrics", "pValue", "effectSize", "winner")}
    print(f"closed loop on real pods: {json.dumps(timeline)}; verdict {json.dumps(verdict)[:1500]}")
