"""Pure builder: a ModelDeployment (+ what was observed in the cluster) -> the objects it should own.

``plan(cr, observed)`` decides which versions are served and with which artifact, and returns the
manifests; ``desired_objects(cr, observed)`` is just its object list. No cluster I/O happens here, so
the whole mapping is tested against golden manifests.

Artifact safety: a version whose artifact failed the operator's own sha256 check keeps the artifact
it was last rolled out with (read from its Deployment's annotations), so the previous build keeps
serving; a version that never had a good artifact is not rolled out at all, and if it is the stable
version the router keeps sending traffic to the previously stable one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops.operator.resources import naming as n
from mlops.operator.resources.signing_key import signing_key_env, signing_key_mount, signing_key_volume
from mlops.operator.resources.spec import InvalidSpec, normalize_spec
from mlops.serving.routing_table import ExperimentRoute, RoutingTable, VersionRoute

MODEL_PORT = 8080
SIDECAR_PORT = 9090
ROUTER_PORT = 8080
SERVICE_PORT = 80
RUN_AS_USER = 10001
STARTUP_GRACE_SECONDS = 300
MODEL_DIR = "/models"
PROFILE_DIR = "/etc/mlops/profile"
ROUTING_DIR = "/etc/mlops/routing"

# The init container runs mlops.serving.artifact_fetch: download (file, http(s), s3, gs), verify the
# sha256, and only then move the file where the model container reads it.
FETCH_MODULE = "mlops.serving.artifact_fetch"


@dataclass(frozen=True)
class ArtifactCheck:
    """The operator's verdict on one version's artifact: ok True/False, or None when unverifiable."""

    ok: bool | None
    reason: str = ""


@dataclass
class Observed:
    """What the handlers read from the cluster before building (all optional)."""

    artifact_checks: dict[str, ArtifactCheck] = field(default_factory=dict)
    # version -> {"uri", "sha256", "format"} read from the existing Deployment's annotations
    deployed_artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    previous_stable: str | None = None
    experiment: dict[str, Any] | None = None
    # a version an ABExperiment promoted (autoPromote) while this generation of the spec holds
    promoted: str | None = None
    cluster_domain: str = "cluster.local"
    # retrained candidates to serve besides the spec's versions (normalized version dicts,
    # mlops.operator.candidates) and the promoted one that serves as stable until spec.stableVersion changes
    candidates: list[dict[str, Any]] = field(default_factory=list)
    candidate_stable: str | None = None
    candidate_status: list[dict[str, Any]] = field(default_factory=list)
    candidate_errors: list[str] = field(default_factory=list)


@dataclass
class Plan:
    objects: list[dict[str, Any]]
    spec: dict[str, Any]
    served_versions: list[str]
    # versions not rolled out or held at their previous artifact -> reason
    held_versions: dict[str, str]
    effective_stable: str | None
    url: str


def owner_reference(cr: Mapping[str, Any]) -> dict[str, Any]:
    meta = cr["metadata"]
    return {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(cr: Mapping[str, Any], name: str, labels: dict[str, str], annotations=None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cr["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(cr)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _startup_probe(path: str, port: str) -> dict[str, Any]:
    """Liveness starts only once this succeeded: a model loading slowly on a busy node is given
    STARTUP_GRACE_SECONDS instead of being killed by its liveness probe and restarted in a loop."""
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 2, "timeoutSeconds": 2,
            "failureThreshold": STARTUP_GRACE_SECONDS // 2}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


SIDECAR_RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# The model container's resources when the version sets none: a namespace with a ResourceQuota rejects
# pods without requests/limits, and an HPA needs a CPU request to compute utilisation.
MODEL_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
ANN_ROUTING_HASH = f"{n.GROUP}/routing-hash"
INIT_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
# models:/ and runs:/ artifacts are resolved by `mlops mlflow fetch` (the same resolver as
# `mlops serve`), which imports the MLflow client: it needs the image built with the [mlflow] extra.
REGISTRY_INIT_RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}


def _version_deployment(cr, spec, version: dict[str, Any], artifact: dict[str, str]) -> dict[str, Any]:
    name = cr["metadata"]["name"]
    vname = version["name"]
    obj_name = n.version_object_name(name, vname)
    labels = {**n.common_labels(name, n.COMPONENT_MODEL), **n.version_selector_labels(name, vname)}
    labels["app.kubernetes.io/version"] = n.label_value(vname)
    fmt = artifact.get("format", "skops")
    model_file = f"{MODEL_DIR}/model.{fmt}"
    annotations = {
        n.ANN_ARTIFACT_URI: artifact["uri"],
        n.ANN_ARTIFACT_SHA256: artifact["sha256"],
        n.ANN_ARTIFACT_FORMAT: fmt,
        n.ANN_VERSION: vname,
    }
    image = spec["image"]
    pull = spec["imagePullPolicy"]
    env = [
        {"name": "MLOPS_HOME", "value": "/var/lib/mlops"},
        {"name": "MLOPS_MODEL_NAME", "value": spec["modelName"]},
        {"name": "MLOPS_MODEL_VERSION", "value": vname},
        *signing_key_env(),
    ]
    if spec["featureSchema"]:
        env.append({"name": "MLOPS_FEATURE_SCHEMA", "value": json.dumps(spec["featureSchema"], sort_keys=True)})
    serve_args = [
        "serve",
        "--host", "0.0.0.0",
        "--port", str(MODEL_PORT),
        "--model-name", spec["modelName"],
        "--model-uri", f"file://{model_file}",
        "--sha256", artifact["sha256"],
        "--format", fmt,
        "--version", vname,
        "--sidecar-url", f"http://127.0.0.1:{SIDECAR_PORT}",
    ]
    if fmt == "joblib":
        serve_args.append("--allow-unsafe-formats")  # the spec chose a pickle format explicitly (pinned)
    sidecar_args = [
        "sidecar",
        "--host", "0.0.0.0",
        "--port", str(SIDECAR_PORT),
        "--model-name", spec["modelName"],
        "--feedback-ledger", "/var/lib/mlops/feedback-ledger.db",
        "--arms-state", "/var/lib/mlops/arms-state.json",  # the pod's state volume outlives a container restart
    ]
    if spec["monitoring"].get("baselineAccuracy") is not None:
        sidecar_args += ["--baseline-accuracy", str(spec["monitoring"]["baselineAccuracy"])]
    volumes: list[dict[str, Any]] = [
        {"name": "model", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "state", "emptyDir": {}},
        signing_key_volume(name),
    ]
    monitor_mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "state", "mountPath": "/var/lib/mlops"}]
    ref = spec.get("baselineProfileRef")
    if ref:
        volumes.append({"name": "profile", "configMap": {"name": ref["configMapName"]}})
        monitor_mounts.append({"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True})
        sidecar_args += ["--profile", f"{PROFILE_DIR}/{ref['key']}"]
    probe_common = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    containers = [
        {
            "name": "model",
            "image": image,
            "imagePullPolicy": pull,
            "args": serve_args,
            "env": env,
            "ports": [{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
            "startupProbe": _startup_probe("/health", "http"),
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, **probe_common},
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, **probe_common},
            "resources": version.get("resources") or MODEL_RESOURCES,
            "securityContext": _container_security(),
            "volumeMounts": [
                {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "state", "mountPath": "/var/lib/mlops"},
                signing_key_mount(),
            ],
        },
        {
            "name": "monitor",
            "image": image,
            "imagePullPolicy": pull,
            "args": sidecar_args,
            "env": [{"name": "MLOPS_HOME", "value": "/var/lib/mlops"}],
            "ports": [{"name": "metrics", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
            "startupProbe": _startup_probe("/healthz", "metrics"),
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, **probe_common},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, **probe_common},
            "resources": SIDECAR_RESOURCES,
            "securityContext": _container_security(),
            "volumeMounts": monitor_mounts,
        },
    ]
    init: dict[str, Any] = {
        "name": "fetch-artifact",
        "image": image,
        "imagePullPolicy": pull,
        "command": ["python", "-m", FETCH_MODULE, artifact["uri"], artifact["sha256"], model_file],
        "resources": INIT_RESOURCES,
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment_spec: dict[str, Any] = {}
    if not version.get("autoscaling"):  # with an HPA the field is left out: the autoscaler owns it
        deployment_spec["replicas"] = int(version["replicas"])
    store = spec.get("artifactStore") or {}
    store_env = [{"name": env_name, "value": store[key]} for key, env_name in (
        ("s3Endpoint", "MLOPS_ARTIFACT_S3_ENDPOINT"), ("region", "AWS_DEFAULT_REGION"),
        ("gcsEndpoint", "MLOPS_ARTIFACT_GCS_ENDPOINT")) if store.get(key)]
    if store_env:
        init["env"] = store_env
    if store.get("secretName"):
        init["envFrom"] = [{"secretRef": {"name": store["secretName"]}}]
    if artifact["uri"].startswith(("models:/", "runs:/")):
        init["command"] = ["python", "-m", "mlops", "mlflow", "fetch", artifact["uri"], "--sha256",
                           artifact["sha256"], "--dest", model_file]
        init["resources"] = REGISTRY_INIT_RESOURCES
        tracking = (version.get("artifact") or {}).get("trackingUri")
        init["env"] = [*init.get("env", []), {"name": "HOME", "value": "/tmp"}]
        if tracking:
            init["env"].append({"name": "MLFLOW_TRACKING_URI", "value": tracking})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(cr, obj_name, labels, annotations),
        "spec": {
            **deployment_spec,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": n.version_selector_labels(name, vname)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        **annotations,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SIDECAR_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": n.service_account_name(name),
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "initContainers": [init],
                    "containers": containers,
                    "volumes": volumes,
                },
            },
        },
    }


def _version_service(cr, vname: str) -> dict[str, Any]:
    name = cr["metadata"]["name"]
    labels = {**n.common_labels(name, n.COMPONENT_MODEL), **n.version_selector_labels(name, vname)}
    labels["app.kubernetes.io/version"] = n.label_value(vname)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cr, n.version_object_name(name, vname), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": n.version_selector_labels(name, vname),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": SIDECAR_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def _version_hpa(cr, version: dict[str, Any]) -> dict[str, Any]:
    name = cr["metadata"]["name"]
    vname = version["name"]
    auto = version["autoscaling"]
    labels = {**n.common_labels(name, n.COMPONENT_MODEL), **n.version_selector_labels(name, vname)}
    labels["app.kubernetes.io/version"] = n.label_value(vname)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(cr, n.version_object_name(name, vname), labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": n.version_object_name(name, vname)},
            "minReplicas": int(auto.get("minReplicas", 1)),
            "maxReplicas": int(auto["maxReplicas"]),
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {
                    "type": "Utilization",
                    "averageUtilization": int(auto.get("targetCPUUtilizationPercentage", 80))}},
            }],
        },
    }


def routing_table(cr, spec, served: list[str], stable: str, observed: Observed) -> RoutingTable:
    name = cr["metadata"]["name"]
    ns = cr["metadata"]["namespace"]
    versions = {
        v: VersionRoute(
            url=f"http://{n.version_object_name(name, v)}.{ns}.svc:{SERVICE_PORT}",
            weight=1.0 if v == stable else 0.0,
        )
        for v in served
    }
    experiment = None
    exp = observed.experiment
    if exp and exp.get("control") in versions and exp.get("treatment") in versions:
        experiment = ExperimentRoute.model_validate(exp)
    return RoutingTable(
        model=spec["modelName"],
        stable_version=stable,
        versions=versions,
        experiment=experiment,
        user_key_header=spec["routing"]["userKeyHeader"],
    )


def routing_hash(table: RoutingTable) -> str:
    return hashlib.sha256(table.to_json().encode()).hexdigest()[:16]


def _router_objects(cr, spec, table: RoutingTable) -> list[dict[str, Any]]:
    name = cr["metadata"]["name"]
    labels = n.common_labels(name, n.COMPONENT_ROUTER)
    cm_name = n.routing_configmap_name(name)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(cr, cm_name, labels),
        "data": {"routing.json": table.to_json()},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(cr, n.router_name(name), labels),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": n.router_selector_labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                # A new routing table rolls the router: status.currentVersion moves only once the
                # rollout is observed complete, i.e. every router pod serves the new table.
                "metadata": {"labels": labels, "annotations": {ANN_ROUTING_HASH: routing_hash(table)}},
                "spec": {
                    "serviceAccountName": n.service_account_name(name),
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [
                        {
                            "name": "router",
                            "image": spec["image"],
                            "imagePullPolicy": spec["imagePullPolicy"],
                            "args": [
                                "route",
                                "--host", "0.0.0.0",
                                "--port", str(ROUTER_PORT),
                                "--table", f"{ROUTING_DIR}/routing.json",
                            ],
                            "env": [{"name": "MLOPS_HOME", "value": "/var/lib/mlops"}, *signing_key_env()],
                            "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 10,
                                "timeoutSeconds": 2,
                            },
                            "startupProbe": _startup_probe("/healthz", "http"),
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 10,
                                "timeoutSeconds": 2,
                            },
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "securityContext": _container_security(),
                            "volumeMounts": [
                                {"name": "routing", "mountPath": ROUTING_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "state", "mountPath": "/var/lib/mlops"},
                                signing_key_mount(),
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "routing", "configMap": {"name": cm_name}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "state", "emptyDir": {}},
                        signing_key_volume(name),
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cr, n.router_name(name), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": n.router_selector_labels(name),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [configmap, deployment, service]


def _service_account(cr) -> dict[str, Any]:
    name = cr["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(cr, n.service_account_name(name), n.common_labels(name, n.COMPONENT_MODEL)),
        "automountServiceAccountToken": False,
    }


def plan(cr: Mapping[str, Any], observed: Observed | None = None) -> Plan:
    """Decide what to serve and build every manifest. Raises InvalidSpec for unusable specs."""
    observed = observed or Observed()
    spec = normalize_spec(cr.get("spec") or {})
    listed = {v["name"] for v in spec["versions"]}
    spec["versions"] = [*spec["versions"], *(c for c in observed.candidates if c["name"] not in listed)]
    name = cr["metadata"]["name"]
    ns = cr["metadata"]["namespace"]
    slugs: dict[str, str] = {}
    for v in spec["versions"]:
        slug = n.version_object_name(name, v["name"])
        if slug in slugs.values() or slug in (n.router_name(name), n.routing_configmap_name(name),
                                              n.signing_key_secret_name(name)):
            raise InvalidSpec(f"version {v['name']!r} maps to object name {slug!r}, which is already taken")
        slugs[v["name"]] = slug

    served: list[str] = []
    held: dict[str, str] = {}
    version_objects: list[dict[str, Any]] = []
    for v in spec["versions"]:
        vname = v["name"]
        wanted = {k: str(v["artifact"][k]) for k in ("uri", "sha256", "format")}
        check = observed.artifact_checks.get(vname, ArtifactCheck(None))
        artifact = wanted
        if check.ok is False:
            previous = observed.deployed_artifacts.get(vname)
            if not previous:
                held[vname] = f"{check.reason}; not rolled out"
                continue
            artifact = {"format": "skops", **previous}
            held[vname] = f"{check.reason}; keeping the artifact already rolled out ({previous['sha256'][:12]})"
        served.append(vname)
        version_objects.append(_version_deployment(cr, spec, v, artifact))
        version_objects.append(_version_service(cr, vname))
        if v.get("autoscaling"):
            version_objects.append(_version_hpa(cr, v))

    stable = spec["stableVersion"]
    if observed.promoted is not None and observed.promoted in served:
        stable = observed.promoted
    elif observed.candidate_stable is not None and observed.candidate_stable in served:
        stable = observed.candidate_stable
    if stable not in served:
        stable = observed.previous_stable if observed.previous_stable in served else (served[0] if served else None)
    objects: list[dict[str, Any]] = [_service_account(cr)]
    if stable is not None:
        objects += _router_objects(cr, spec, routing_table(cr, spec, served, stable, observed))
    objects += version_objects
    return Plan(
        objects=objects,
        spec=spec,
        served_versions=served,
        held_versions=held,
        effective_stable=stable,
        url=f"http://{n.router_name(name)}.{ns}.svc.{observed.cluster_domain}",
    )


def desired_objects(cr: Mapping[str, Any], observed: Observed | None = None) -> list[dict[str, Any]]:
    """Every object the ModelDeployment should own, in apply order (dependencies first)."""
    return plan(cr, observed).objects
