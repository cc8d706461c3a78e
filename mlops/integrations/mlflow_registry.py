"""MLflow model-registry URIs: ``models:/<name>/<version>``, ``models:/<name>@<alias>`` and
``runs:/<run_id>/<path>`` resolved through a tracking server and downloaded to a local folder.

Why it exists: most teams that would adopt us already keep their models in an MLflow registry, and
the system the user's guide documents loaded models from it. This module only *resolves and
downloads*; it never deserialises anything. The local folder it yields is handed to the model store
(``mlops.serving.model_store.load_model``), which verifies the pinned sha256 and loads the model
exactly as it does for a ``file://`` artifact, so there is one verify/load path and one meaning of
a pin. An alias (or a stage, or ``latest``) can move to another version; a pinned spec then sees a
different digest and is refused until the pin changes, and a moving URI without a pin is refused
outright by the model store.

What is served from a downloaded folder:

* an MLflow ``sklearn`` flavour model (``MLmodel`` + ``model.skops``, the flavour's default format
  since MLflow 3; ``model.pkl`` when logged with ``serialization_format="pickle"/"cloudpickle"``,
  which the model store loads only with an explicit sha256 pin, like any pickle);
* an artifact folder written by ``mlops train`` and logged as run artifacts or registered with
  ``mlops train --register`` (``model.skops`` + ``metadata.json``).

MLflow is an optional extra (``pip install 'mlops-operator[mlflow]'``) imported on first use only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REGISTRY_PREFIXES = ("models:/", "runs:/")
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SHA256_TAG = "mlops.sha256"
FORMAT_TAG = "mlops.format"
MODEL_FILES = (("model.skops", "skops"), ("model.joblib", "joblib"), ("model.pkl", "joblib"))
EXTRA_HINT = "install the optional extra: pip install 'mlops-operator[mlflow]'"

_RUN_ID = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")
_VERSION = re.compile(r"^[0-9]+$")

RefKind = Literal["version", "alias", "stage", "latest", "logged_model", "run"]


class RegistryError(Exception):
    """A registry URI could not be parsed, resolved or downloaded; the message says which and why."""


class PinMismatch(RegistryError):
    """What the URI resolves to now does not have the pinned sha256 (e.g. an alias moved)."""


@dataclass(frozen=True)
class RegistryRef:
    """A parsed registry URI. ``moving`` refs (alias, stage, latest) may resolve to another version
    tomorrow; version numbers, logged-model ids and run artifacts do not."""

    uri: str
    kind: RefKind
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    stage: str | None = None
    run_id: str | None = None
    path: str = ""

    @property
    def moving(self) -> bool:
        return self.kind in ("alias", "stage", "latest")


@dataclass(frozen=True)
class ResolvedArtifact:
    """What a registry URI pointed to when it was downloaded, and where the files are now."""

    uri: str
    fixed_uri: str
    moving: bool
    local_dir: Path
    model_path: Path
    format: Literal["skops", "joblib"]
    metadata_path: Path | None
    model_name: str | None = None
    version: str | None = None
    run_id: str | None = None
    registry_sha256: str | None = None

    def sha256(self) -> str:
        """The sha256 of the downloaded model file (what a pin is compared with)."""
        digest = hashlib.sha256()
        with self.model_path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def is_registry_uri(uri: str | None) -> bool:
    return isinstance(uri, str) and uri.startswith(REGISTRY_PREFIXES)


def parse_registry_uri(uri: str) -> RegistryRef:
    """Parse ``models:/name/version``, ``models:/name@alias``, ``models:/name/<stage|latest>``,
    ``models:/<logged model id>`` or ``runs:/<run_id>/<path>``; RegistryError on anything else."""
    if uri.startswith("runs:/"):
        rest = uri[len("runs:/"):].lstrip("/")
        run_id, _, path = rest.partition("/")
        if not _RUN_ID.match(run_id):
            raise RegistryError(f"{uri}: expected runs:/<run_id>/<artifact path>")
        if ".." in Path(path).parts:
            raise RegistryError(f"{uri}: the artifact path may not contain '..'")
        return RegistryRef(uri, "run", run_id=run_id, path=path.strip("/"))
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri}: not a registry URI (models:/ or runs:/)")
    rest = uri[len("models:/"):].strip("/")
    if not rest:
        raise RegistryError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if not name or not alias or "/" in alias:
            raise RegistryError(f"{uri}: expected models:/<name>@<alias>")
        return RegistryRef(uri, "alias", name=name, alias=alias)
    if "/" not in rest:
        return RegistryRef(uri, "logged_model", name=rest)
    name, _, suffix = rest.rpartition("/")
    if _VERSION.match(suffix):
        return RegistryRef(uri, "version", name=name, version=str(int(suffix)))
    if suffix.lower() == "latest":
        return RegistryRef(uri, "latest", name=name)
    return RegistryRef(uri, "stage", name=name, stage=suffix)


def tracking_uri_or_env(tracking_uri: str | None) -> str:
    """The tracking server to use: the one given, else ``$MLFLOW_TRACKING_URI``. MLflow's own default
    (a ``mlflow.db`` in the working directory) is never used silently."""
    uri = tracking_uri or os.environ.get(TRACKING_URI_ENV)
    if not uri:
        raise RegistryError(
            f"registry URIs need a tracking server: give mlflow_tracking_uri (--mlflow-tracking-uri) "
            f"or set {TRACKING_URI_ENV}")
    return uri


def import_mlflow() -> Any:
    """``mlflow`` (imported now, on first use); RegistryError naming the extra when it is missing."""
    try:
        import mlflow
    except ImportError as exc:
        raise RegistryError(f"MLflow is not installed ({exc}); {EXTRA_HINT}") from exc
    return mlflow


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` bound to one server (never the process-global tracking URI)."""
    import_mlflow()
    from mlflow import MlflowClient

    uri = tracking_uri_or_env(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _mlflow_error(uri: str, exc: Exception) -> RegistryError:
    message = getattr(exc, "message", None) or str(exc)
    return RegistryError(f"{uri}: {message.strip().splitlines()[0] if message.strip() else type(exc).__name__}")


def _model_version(mc: Any, ref: RegistryRef) -> Any:
    if ref.kind == "version":
        return mc.get_model_version(ref.name, ref.version)
    if ref.kind == "alias":
        return mc.get_model_version_by_alias(ref.name, ref.alias)
    if ref.kind == "latest":
        versions = mc.search_model_versions(f"name='{ref.name}'")
        if not versions:
            raise RegistryError(f"{ref.uri}: registered model {ref.name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    latest = mc.get_latest_versions(ref.name, stages=[ref.stage])
    if not latest:
        raise RegistryError(f"{ref.uri}: no version of {ref.name!r} is in stage {ref.stage!r}")
    return latest[0]


def _run_location(mc: Any, ref: RegistryRef, server: str) -> str:
    """Where ``runs:/<id>/<path>`` lives: in the run's own artifacts, or (MLflow 3) in the logged model
    of that run named ``<path>``, which is stored outside the run's artifacts. Listed through the
    run's artifact URI directly: MLflow's runs:/ repository also looks up logged models through the
    process-global registry URI."""
    from mlflow.artifacts import list_artifacts

    base = mc.get_run(ref.run_id).info.artifact_uri.rstrip("/")
    target = f"{base}/{ref.path}" if ref.path else base
    if not ref.path or list_artifacts(artifact_uri=target, tracking_uri=server):
        return target
    parent, _, _ = ref.path.rpartition("/")
    siblings = list_artifacts(artifact_uri=f"{base}/{parent}" if parent else base, tracking_uri=server) or []
    if any(entry.path.rstrip("/").endswith(ref.path) for entry in siblings):
        return target  # a single file
    head, _, rest = ref.path.partition("/")
    experiment_id = mc.get_run(ref.run_id).info.experiment_id
    models = mc.search_logged_models(experiment_ids=[experiment_id], filter_string=f"name = '{head}'")
    match = next((m for m in models if m.source_run_id == ref.run_id), None)
    if match is None or str(match.artifact_location).startswith("models:/"):
        raise RegistryError(f"{ref.uri}: run {ref.run_id} has no artifact or logged model at {ref.path!r}")
    return str(match.artifact_location).rstrip("/") + (f"/{rest}" if rest else "")


def locate_model(root: Path, uri: str = "") -> tuple[Path, Literal["skops", "joblib"], Path | None]:
    """The model file, its format and the ``metadata.json`` beside it (if any) in a downloaded folder."""
    if root.is_file():
        fmt: Literal["skops", "joblib"] = "joblib" if root.suffix in (".pkl", ".joblib", ".pickle") else "skops"
        meta = root.parent / "metadata.json"
        return root, fmt, meta if meta.is_file() else None
    meta = root / "metadata.json"
    metadata = meta if meta.is_file() else None
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        try:
            spec = yaml.safe_load(mlmodel.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{uri}: unreadable MLmodel file: {exc}") from exc
        flavors = spec.get("flavors") or {}
        sk = flavors.get("sklearn")
        if not isinstance(sk, dict) or not sk.get("pickled_model"):
            raise RegistryError(
                f"{uri}: the MLflow model has no sklearn flavour (flavours: {', '.join(sorted(flavors)) or 'none'}); "
                "only sklearn models and mlops skops artifacts can be served")
        path = (root / str(sk["pickled_model"])).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            raise RegistryError(f"{uri}: MLmodel names a model file {sk['pickled_model']!r} that is not in the model")
        fmt = "skops" if sk.get("serialization_format") == "skops" else "joblib"
        return path, fmt, metadata
    for name, fmt in MODEL_FILES:
        if (root / name).is_file():
            return root / name, fmt, metadata  # type: ignore[return-value]
    found = sorted(p.name for p in root.iterdir())[:20]
    raise RegistryError(f"{uri}: no MLmodel, model.skops, model.joblib or model.pkl in the artifact (found: {found})")


@contextlib.contextmanager
def download(uri: str, tracking_uri: str | None = None, dest: str | os.PathLike[str] | None = None
             ) -> Iterator[ResolvedArtifact]:
    """Resolve ``uri`` once (an alias to the version it points to now), download that version and
    yield where it is. The download lives in a temporary folder (under ``dest`` when given) that is
    removed when the block ends: the caller verifies and loads inside the block."""
    ref = parse_registry_uri(uri)
    server = tracking_uri_or_env(tracking_uri)
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    mc = client(server)
    name = version = run_id = registry_sha = None
    try:
        # models:/ URIs are turned into their artifact location with our own client: MLflow's
        # models:/ artifact repository consults the process-global registry URI instead of the one
        # passed to download_artifacts (MLflow 3.x), which would read a local default store.
        if ref.kind == "run":
            fixed, run_id, location = uri, ref.run_id, _run_location(mc, ref, server)
        elif ref.kind == "logged_model":
            fixed, location = uri, mc.get_logged_model(ref.name).artifact_location
        else:
            mv = _model_version(mc, ref)
            name, version, run_id = mv.name, str(mv.version), mv.run_id
            registry_sha = (mv.tags or {}).get(SHA256_TAG)
            fixed = f"models:/{name}/{version}"
            location = mc.get_model_version_download_uri(name, version)
        if dest is not None:
            Path(dest).mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="mlflow-", dir=dest)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                              tracking_uri=server, registry_uri=server))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except MlflowException as exc:
        raise _mlflow_error(uri, exc) from exc
    except OSError as exc:
        raise RegistryError(f"{uri}: download failed: {exc}") from exc
    try:
        model_path, fmt, metadata = locate_model(local, uri)
        yield ResolvedArtifact(uri=uri, fixed_uri=fixed, moving=ref.moving, local_dir=local, model_path=model_path,
                               format=fmt, metadata_path=metadata, model_name=name or ref.name, version=version,
                               run_id=run_id, registry_sha256=registry_sha)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """What ``uri`` resolves to now, with the sha256 to pin (``mlops mlflow resolve``)."""
    with download(uri, tracking_uri) as art:
        return {"uri": uri, "resolved_uri": art.fixed_uri, "moving": art.moving, "model_name": art.model_name,
                "version": art.version, "run_id": art.run_id, "format": art.format,
                "model_file": art.model_path.name, "sha256": art.sha256(), "registry_sha256": art.registry_sha256}


def fetch_to(uri: str, sha256: str, dest_file: str | os.PathLike[str], tracking_uri: str | None = None) -> dict[str, Any]:
    """Download ``uri``, check its model file against the pin and move it to ``dest_file`` (with the
    ``metadata.json`` beside it, if the artifact has one): the init container's registry path.
    Nothing is left at ``dest_file`` when the digest does not match."""
    dest = Path(dest_file)
    want = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise RegistryError("the pinned sha256 must be 64 hex digits")
    with download(uri, tracking_uri, dest=dest.parent / ".download") as art:
        got = art.sha256()
        if got != want:
            raise PinMismatch(f"sha256 mismatch for {uri} (resolved to {art.fixed_uri}): got {got}, "
                                f"the spec pins {want}; refusing it until the pin changes")
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(art.model_path, part)
        os.replace(part, dest)
        if art.metadata_path is not None:
            shutil.copyfile(art.metadata_path, dest.parent / "metadata.json")
        info = {"uri": uri, "resolved_uri": art.fixed_uri, "sha256": got, "dest": str(dest), "format": art.format}
    shutil.rmtree(dest.parent / ".download", ignore_errors=True)
    return info


@dataclass(frozen=True)
class RegisteredVersion:
    uri: str
    name: str
    version: str
    run_id: str
    sha256: str
    source: str


def register_folder(folder: str | os.PathLike[str], name: str, sha256: str, *, tracking_uri: str | None = None,
                    experiment: str | None = None, run_name: str | None = None,
                    metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                    fmt: str = "skops", wait_seconds: float = 300.0) -> RegisteredVersion:
    """Log an artifact folder (``mlops train`` output) as a run's ``model`` artifacts and register it
    as a new version of ``name``, tagged with its sha256 and format."""
    import time

    import_mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from mlops.integrations.mlflow_tracking import end_run

    mc = client(tracking_uri)
    experiment = experiment or f"{name}-training"
    try:
        found = mc.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else mc.create_experiment(experiment)
        run = mc.create_run(exp_id, run_name=run_name, tags={"mlops.command": "mlops train --register"})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            mc.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                         params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()])
            mc.log_artifacts(run_id, str(folder), artifact_path="model")
        except BaseException:
            end_run(mc, run_id, "FAILED")
            raise
        end_run(mc, run_id, "FINISHED")
        try:
            mc.create_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{run.info.artifact_uri}/model"
        mv = mc.create_model_version(name, source=source, run_id=run_id,
                                     tags={SHA256_TAG: sha256, FORMAT_TAG: fmt})
        deadline = time.monotonic() + wait_seconds
        while getattr(mv, "status", "READY") == "PENDING_REGISTRATION" and time.monotonic() < deadline:
            time.sleep(0.5)
            mv = mc.get_model_version(name, mv.version)
        if getattr(mv, "status", "READY") != "READY":
            raise RegistryError(f"model version {name}/{mv.version} is {mv.status}: {mv.status_message}")
    except MlflowException as exc:
        raise _mlflow_error(f"models:/{name}", exc) from exc
    return RegisteredVersion(uri=f"models:/{name}/{mv.version}", name=name, version=str(mv.version),
                             run_id=run_id, sha256=sha256, source=source)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _version_dict(mv: Any) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    return {
        "name": mv.name, "version": str(mv.version), "uri": f"models:/{mv.name}/{mv.version}",
        "stage": mv.current_stage, "aliases": list(getattr(mv, "aliases", None) or []),
        "description": mv.description, "status": mv.status, "run_id": mv.run_id, "artifact_source": mv.source,
        "created_at": (mv.creation_timestamp or 0) / 1000.0, "last_updated": (mv.last_updated_timestamp or 0) / 1000.0,
        "sha256": tags.get(SHA256_TAG), "format": tags.get(FORMAT_TAG), "tags": tags,
        "source": "mlflow_registry",
    }


def version_info(name: str, version: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """A registered version (a number, or ``@alias``) as a plain dict; None when it does not exist."""
    from mlflow.exceptions import MlflowException

    mc = client(tracking_uri)
    try:
        if version.startswith("@"):
            mv = mc.get_model_version_by_alias(name, version[1:])
        else:
            mv = mc.get_model_version(name, version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise _mlflow_error(f"models:/{name}/{version}", exc) from exc
    return _version_dict(mv)


def list_versions(name: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered version of ``name`` (newest first); [] when the model is not registered."""
    from mlflow.exceptions import MlflowException

    mc = client(tracking_uri)
    try:
        versions = mc.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise _mlflow_error(f"models:/{name}", exc) from exc
    return sorted((_version_dict(v) for v in versions), key=lambda v: int(v["version"]), reverse=True)
