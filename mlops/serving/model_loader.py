"""``ModelLoader``: the original system's model-version API, over an MLflow registry first and a local
model folder second, with every load going through the model store's verify-then-load path.

Why it exists: code written against the original system (``from mlops.serving.model_loader import
ModelLoader``) lists, loads and validates model versions with it. The original looked in the
registry, then in experiment runs, then unpickled ``models/*.pkl`` from the working directory
without any check. Here:

* the registry is used only when ``mlflow_tracking_uri`` is given and MLflow is installed
  (``models:/<name>/<version>``; a version ``@alias`` or a 32-hex run id, ``runs:/<id>/model``,
  work too);
* the local folder (``models_dir``, default ``models``) holds artifact folders written by
  ``mlops train``: ``<models_dir>/<name>/<version>/model.skops`` or ``<models_dir>/<version>/model.skops``
  (with ``metadata.json``), or single files ``<models_dir>/<name>_<version>.skops``;
* pickle/joblib files (``.pkl``, ``.joblib``, and MLflow models logged with a pickle format) run
  arbitrary code when loaded: they are loaded only with the explicit opt-in
  (``ModelLoader(allow_unsafe_formats=True)``, the server's ``--allow-unsafe-formats``) *and* a
  sha256 pin (``load_model_version(..., sha256=...)``); otherwise a ModelLoadError says so;
* "not found anywhere" returns None (as the original did); a refused artifact (wrong digest,
  untrusted types, pickle without the opt-in and a pin) raises ModelLoadError instead of being hidden.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mlops.integrations.mlflow_tracking import mlflow_installed
from mlops.serving.model_store import LoadedModel, ModelLoadError, ModelMetadata, load_model, sha256_hex

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".skops", ".joblib", ".pkl")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ModelNotFound(ModelLoadError):
    """The version is neither in the registry nor in the local model folder."""


class ModelLoader:
    """Loads and caches model versions (see the module docstring)."""

    def __init__(self, mlflow_tracking_uri: str | None = None, models_dir: str | Path = "models", *,
                 cache_size: int = 8, allow_unsafe_formats: bool = False) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.mlflow_tracking_uri = mlflow_tracking_uri or None
        self.allow_unsafe_formats = allow_unsafe_formats
        self.models_dir = Path(models_dir)
        self.cache_size = cache_size
        self.model_cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self.use_registry = bool(self.mlflow_tracking_uri) and mlflow_installed()
        if self.mlflow_tracking_uri and not self.use_registry:
            logger.warning("mlflow_tracking_uri=%s given but MLflow is not installed "
                           "(pip install 'mlops-operator[mlflow]'): only %s is searched",
                           self.mlflow_tracking_uri, self.models_dir)

    # ------------------------------------------------------------------ registry helpers
    def _registry_uri(self, model_name: str, version: str) -> str | None:
        if version.startswith("@"):
            return f"models:/{model_name}{version}"
        if version.isdigit():
            return f"models:/{model_name}/{version}"
        if _RUN_ID.match(version):
            return f"runs:/{version}/model"
        return None

    def _registry_versions(self, model_name: str) -> list[dict[str, Any]]:
        if not self.use_registry:
            return []
        from mlops.integrations import mlflow_registry as reg

        try:
            return reg.list_versions(model_name, self.mlflow_tracking_uri)
        except reg.RegistryError as exc:
            logger.warning("MLflow registry at %s unavailable (%s); using %s only",
                           self.mlflow_tracking_uri, exc, self.models_dir)
            return []

    # ------------------------------------------------------------------ local helpers
    def _local_candidates(self, model_name: str, version: str) -> list[Path]:
        d = self.models_dir
        paths = [d / model_name / version, d / version, *[d / f"{model_name}_{version}{s}" for s in LOCAL_SUFFIXES],
                 *[d / f"{version}{s}" for s in LOCAL_SUFFIXES]]
        return [p for p in paths if p.exists() and _inside(p, d)]

    @staticmethod
    def _model_file(path: Path) -> Path | None:
        if path.is_file():
            return path if path.suffix in LOCAL_SUFFIXES else None
        for name in ("model.skops", "model.joblib", "model.pkl"):
            if (path / name).is_file():
                return path / name
        return None

    def _local_versions(self, model_name: str) -> list[dict[str, Any]]:
        d = self.models_dir
        if not d.is_dir():
            return []
        found: dict[str, dict[str, Any]] = {}
        folders = [p for p in (d / model_name).iterdir() if p.is_dir()] if (d / model_name).is_dir() else []
        folders += [p for p in d.iterdir() if p.is_dir() and p.name != model_name]
        for folder in folders:
            model_file = self._model_file(folder)
            if model_file is None:
                continue
            meta = _read_metadata(folder / "metadata.json")
            if folder.parent == d and (meta is None or meta.model_name != model_name):
                continue  # a folder directly under models_dir belongs to the model its metadata names
            found.setdefault(folder.name, _local_entry(folder.name, model_file, meta))
        for file in d.iterdir():
            if file.is_file() and file.suffix in LOCAL_SUFFIXES and file.stem.startswith(f"{model_name}_"):
                version = file.stem[len(model_name) + 1:]
                found.setdefault(version, _local_entry(version, file, None))
        return list(found.values())

    # ------------------------------------------------------------------ the original API
    def get_latest_model_version(self, model_name: str) -> str | None:
        """The newest registered version number; else the newest local version; else None."""
        registered = self._registry_versions(model_name)
        if registered:
            return registered[0]["version"]
        local = sorted(self._local_versions(model_name), key=lambda v: v["created_at"], reverse=True)
        if local:
            return local[0]["version"]
        logger.warning("no versions of %s in the registry or in %s", model_name, self.models_dir)
        return None

    def list_model_versions(self, model_name: str) -> list[dict[str, Any]]:
        """Registered and local versions, newest first; each with ``version``, ``stage``, ``source``
        (``mlflow_registry`` or ``local_storage``), ``created_at`` (epoch seconds) and ``sha256``."""
        versions = self._registry_versions(model_name) + self._local_versions(model_name)
        return sorted(versions, key=lambda v: v.get("created_at") or 0, reverse=True)

    def load(self, model_name: str, version: str, sha256: str | None = None) -> LoadedModel:
        """Like :meth:`load_model_version` but returns the model with its schema and raises
        ModelLoadError when the version is found nowhere."""
        key = f"{model_name}:{version}"
        cached = self.model_cache.get(key)
        if cached is not None and (sha256 is None or cached.metadata.sha256 == sha256.lower()):
            self.model_cache.move_to_end(key)
            return cached
        loaded: LoadedModel | None = None
        uri = self._registry_uri(model_name, version) if self.use_registry else None
        if uri is not None and self._registered(model_name, version):
            loaded = load_model(uri, sha256=sha256, version=version, tracking_uri=self.mlflow_tracking_uri,
                                allow_unsafe=self.allow_unsafe_formats)
        if loaded is None:
            for candidate in self._local_candidates(model_name, version):
                model_file = self._model_file(candidate)
                if model_file is not None:
                    loaded = load_model(str(model_file), sha256=sha256, version=version,
                                        allow_unsafe=self.allow_unsafe_formats)
                    break
        if loaded is None:
            where = f"the registry at {self.mlflow_tracking_uri} or " if self.use_registry else ""
            raise ModelNotFound(f"model {model_name!r} version {version!r} not found in {where}{self.models_dir}")
        self.model_cache[key] = loaded
        while len(self.model_cache) > self.cache_size:
            self.model_cache.popitem(last=False)
        return loaded

    def _registered(self, model_name: str, version: str) -> bool:
        from mlops.integrations import mlflow_registry as reg

        if _RUN_ID.match(version):
            return True
        try:
            return reg.version_info(model_name, version, self.mlflow_tracking_uri) is not None
        except reg.RegistryError as exc:
            logger.warning("MLflow registry at %s unavailable (%s); trying %s", self.mlflow_tracking_uri, exc,
                           self.models_dir)
            return False

    def load_model_version(self, model_name: str, version: str, sha256: str | None = None) -> Any:
        """The estimator of ``model_name`` ``version`` (registry first, then ``models_dir``), or None
        when it is found nowhere. A refused artifact raises ModelLoadError."""
        try:
            return self.load(model_name, version, sha256=sha256).estimator
        except ModelNotFound as exc:
            logger.error("%s", exc)
            return None

    def get_model_metadata(self, model_name: str, version: str) -> dict[str, Any]:
        """What the registry or the local folder knows about a version (never loads the model)."""
        if self.use_registry and (version.isdigit() or version.startswith("@")):
            from mlops.integrations import mlflow_registry as reg

            try:
                info = reg.version_info(model_name, version, self.mlflow_tracking_uri)
            except reg.RegistryError as exc:
                logger.warning("MLflow registry unavailable (%s)", exc)
                info = None
            if info is not None:
                return info
        for candidate in self._local_candidates(model_name, version):
            model_file = self._model_file(candidate)
            if model_file is not None:
                meta = _read_metadata(model_file.parent / "metadata.json")
                return {**_local_entry(version, model_file, meta), "name": model_name,
                        **({"metadata": meta.model_dump()} if meta else {})}
        return {"name": model_name, "version": version, "error": "Model not found", "source": "unknown"}

    def validate_model(self, model: Any, sample: Any = None) -> dict[str, Any]:
        """Check that ``model`` (an estimator or a loaded model) predicts: on ``sample`` rows when
        given, else on one all-zero row of the model's width. Never raises."""
        estimator = model.estimator if isinstance(model, LoadedModel) else model
        result: dict[str, Any] = {"is_valid": False, "has_predict": hasattr(estimator, "predict"),
                                  "has_predict_proba": hasattr(estimator, "predict_proba"),
                                  "model_type": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
                                  "errors": []}
        if not result["has_predict"]:
            result["errors"].append("model has no predict method")
            return result
        try:
            x = sample if sample is not None else _zero_row(model, estimator)
        except ValueError as exc:
            result["errors"].append(str(exc))
            return result
        for method, key in (("predict", "sample_prediction"), ("predict_proba", "sample_probabilities")):
            if not hasattr(estimator, method):
                continue
            try:
                out = getattr(estimator, method)(x)
                result[key] = np.asarray(out).tolist()
            except Exception as exc:  # noqa: BLE001 - the point is to report any failure of the model
                result["errors"].append(f"{method} failed: {type(exc).__name__}: {exc}")
        result["is_valid"] = not result["errors"]
        return result

    def clear_cache(self) -> None:
        self.model_cache.clear()

    def get_cache_info(self) -> dict[str, Any]:
        return {"cached_models": list(self.model_cache), "cache_size": len(self.model_cache),
                "max_cache_size": self.cache_size}


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _read_metadata(path: Path) -> ModelMetadata | None:
    if not path.is_file():
        return None
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except ValueError:
        logger.warning("ignoring invalid %s", path)
        return None


def _local_entry(version: str, model_file: Path, meta: ModelMetadata | None) -> dict[str, Any]:
    stat = model_file.stat()
    return {"version": version, "stage": "local_file", "source": "local_storage", "file_path": str(model_file),
            "created_at": meta.trained_at if meta and meta.trained_at else stat.st_mtime,
            "file_size": stat.st_size, "sha256": sha256_hex(model_file.read_bytes()),
            "format": "skops" if model_file.suffix == ".skops" else "joblib"}


def _zero_row(model: Any, estimator: Any) -> Any:
    if isinstance(model, LoadedModel):
        row = [0.0 if f.type == "number" else (f.categories or [""])[0] for f in model.schema.features]
        return model.matrix([row])
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        import pandas as pd

        return pd.DataFrame([[0.0] * len(names)], columns=list(names))
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise ValueError("cannot build a sample row: the model has no n_features_in_; pass sample=")
    return np.zeros((1, int(n)))
