"""Fetch, verify and load model artifacts; the feature schema that travels with every model.

Why it exists: the original server unpickled files from its working directory without any check.
Here an artifact comes from a ``file://`` or ``http(s)://`` URI (or a plain path), its sha256 is
verified *before* any byte is deserialised, skops is the default format (it refuses unknown types
unless they are allow-listed) and joblib/pickle is accepted only when the caller pinned it explicitly
*and* gave a sha256. A failed load raises ``ModelLoadError`` and touches nothing else, so the server
keeps serving its current version.

An artifact folder written by ``mlops train`` holds ``model.skops``, ``model.sha256``,
``metadata.json`` (model name, version, format, sha256, label classes, metrics and the feature
schema: names in the model's column order, types, required or optional) and ``profile.json`` (the
baseline profile). The metadata is looked up beside the model URI; without it the schema is derived
from the estimator's ``feature_names_in_`` (all required, numeric).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ModelFormat = Literal["skops", "joblib"]
# Types skops does not trust by itself that a scikit-learn model legitimately contains. Matched by
# exact name: a prefix ("builtins.") would let ``builtins.exec`` in through a FunctionTransformer.
# Anything else is refused unless the operator of the server trusts it by name (``extra_trusted``,
# ``mlops serve --trust-type``).
TRUSTED_TYPES = frozenset({
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "numpy.random._pickle.__randomstate_ctor",
    "collections.OrderedDict",
    "collections.defaultdict",
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})
EMBEDDED_KEY = "mlops_metadata"
UNSAFE_FORMATS_FLAG = "--allow-unsafe-formats"
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
MAX_REDIRECTS = 3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_EXACT_INT = 2**63


class ModelLoadError(Exception):
    """The artifact could not be fetched, verified or loaded; the message says which and why."""


class IntegrityError(ModelLoadError):
    """The artifact's sha256 does not match the pinned one (tampered or wrong file)."""


class UnsafeFormatError(ModelLoadError):
    """A pickle-based artifact, and the server was not started with ``--allow-unsafe-formats``."""


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["number", "category"] = "number"
    required: bool = True
    categories: list[str] | None = None


class FeatureSchema(BaseModel):
    """Feature names in the order the model's columns expect them, with types and requiredness."""

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureSpec]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.features if f.required]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_name: str = "model"
    version: str = ""
    format: ModelFormat = "skops"
    sha256: str | None = None
    label: str | None = None
    classes: list[Any] = Field(default_factory=list)
    feature_schema: FeatureSchema
    metrics: dict[str, float] = Field(default_factory=dict)
    trained_at: float | None = None


class FeatureError(ValueError):
    """A row does not fit the model's feature schema; ``field`` names the offending feature."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _path_from_uri(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


def fetch_bytes(uri: str, timeout: float = 30.0, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
    """Read ``uri`` (``file://``, ``http://``, ``https://`` or a plain path) into memory."""
    path = _path_from_uri(uri)
    if path is not None:
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ModelLoadError(f"artifact {uri} is {size} bytes, over the {max_bytes} limit")
            return path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {uri}: {exc.strerror or exc}") from exc
    scheme = urlparse(uri).scheme
    if scheme not in ("http", "https"):
        raise ModelLoadError(f"unsupported artifact URI scheme {scheme!r} in {uri} (file, http, https)")
    import httpx

    origin = urlparse(uri)
    url = uri
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url) as resp:
                    if resp.is_redirect:
                        target = urlparse(str(resp.next_request.url)) if resp.next_request else None
                        # Redirects stay on the same scheme, host and port: never another host (SSRF).
                        if target is None or (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                            raise ModelLoadError(f"GET {uri} redirects to another host; refused")
                        url = target.geturl()
                        continue
                    if resp.status_code != 200:
                        raise ModelLoadError(f"GET {uri} answered HTTP {resp.status_code}")
                    buffer = bytearray()
                    for chunk in resp.iter_bytes():
                        buffer.extend(chunk)
                        if len(buffer) > max_bytes:
                            raise ModelLoadError(f"artifact {uri} is over the {max_bytes} byte limit")
                    return bytes(buffer)
            raise ModelLoadError(f"GET {uri}: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"cannot fetch {uri}: {exc}") from exc


def sibling_uri(uri: str, name: str) -> str:
    """The URI of file ``name`` in the same folder as ``uri``."""
    path = _path_from_uri(uri)
    if path is not None:
        return str(path.parent / name)
    base, _, _ = uri.rpartition("/")
    return f"{base}/{name}"


def verify_sha256(data: bytes, expected: str | None, uri: str = "artifact") -> str:
    actual = sha256_hex(data)
    if expected is not None:
        wanted = expected.strip().lower()
        if not _SHA256.match(wanted):
            raise IntegrityError(f"pinned sha256 for {uri} is not 64 hex digits")
        if actual != wanted:
            # The actual digest is not echoed: an API answer must not become a way to hash files.
            raise IntegrityError(f"sha256 mismatch for {uri}: it is not the pinned {wanted}; refusing to load")
    return actual


def deserialize(data: bytes, fmt: ModelFormat, sha256_pinned: bool, extra_trusted: list[str] | None = None,
                *, allow_unsafe: bool = False) -> Any:
    """Turn verified bytes into an object. skops: only types trusted by exact name; joblib (pickle,
    which runs arbitrary code): only when ``allow_unsafe`` (the server's ``--allow-unsafe-formats``)
    *and* the sha256 was pinned."""
    if fmt == "skops":
        import skops.io as sio

        try:
            untrusted = sio.get_untrusted_types(data=data)
            allowed = TRUSTED_TYPES | set(extra_trusted or [])
            refused = [t for t in untrusted if t not in allowed]
            if refused:
                raise ModelLoadError(f"skops artifact contains types that are not trusted: {', '.join(refused)}")
            return sio.loads(data, trusted=list(untrusted))
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is an unloadable artifact
            raise ModelLoadError(f"cannot load skops artifact: {type(exc).__name__}: {exc}") from exc
    if fmt == "joblib":
        if not allow_unsafe:
            raise UnsafeFormatError(f"joblib/pickle artifacts can run arbitrary code when loaded; start the server "
                                    f"with {UNSAFE_FORMATS_FLAG} to accept them (and pin their sha256)")
        if not sha256_pinned:
            raise ModelLoadError("joblib/pickle artifacts are loaded only with a pinned sha256")
        import joblib

        try:
            return joblib.load(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - unpickling failures of any kind mean unloadable
            raise ModelLoadError(f"cannot load joblib artifact: {type(exc).__name__}: {exc}") from exc
    raise ModelLoadError(f"unknown model format {fmt!r} (skops or joblib)")


def embed_metadata(estimator: Any, metadata: ModelMetadata) -> dict[str, Any]:
    """What ``mlops train`` serialises: the estimator with its schema, so the sha256 of the one file
    users pin covers the feature order, types and classes too (editing metadata.json cannot change
    what the model is fed)."""
    return {"estimator": estimator, EMBEDDED_KEY: _schema_fields(metadata)}


def _schema_fields(metadata: ModelMetadata) -> dict[str, Any]:
    return {"feature_schema": metadata.feature_schema.model_dump(), "classes": list(metadata.classes),
            "label": metadata.label}


def schema_from_estimator(estimator: Any) -> FeatureSchema:
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        n = getattr(estimator, "n_features_in_", None)
        if n is None:
            raise ModelLoadError("no metadata.json beside the model and the estimator has no feature names")
        names = [f"x{i}" for i in range(int(n))]
    return FeatureSchema(features=[FeatureSpec(name=str(n)) for n in names])


class LoadedModel:
    """An estimator with its schema; turns request dicts into rows in the model's column order."""

    def __init__(self, estimator: Any, metadata: ModelMetadata) -> None:
        self.estimator = estimator
        self.metadata = metadata
        self.version = metadata.version
        self.schema = metadata.feature_schema
        self.names = self.schema.names
        self.index = {name: i for i, name in enumerate(self.names)}
        self.required = frozenset(self.schema.required)
        self.categorical = {f.name for f in self.schema.features if f.type == "category"}
        self.dtype = object if self.categorical else np.float64
        self.has_proba = hasattr(estimator, "predict_proba")
        classes = getattr(estimator, "classes_", None)
        self.classes = [c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else []
        from mlops.serving.sidecar_metrics import label_str

        # The spellings of the known labels (1, 1.0, "1" and True meet), to check feedback against.
        self.label_index = frozenset(label_str(c) for c in self.classes)
        # sklearn warns when a DataFrame-fitted estimator receives a bare array; feature order is
        # guaranteed by the schema, so hand it arrays with the same column names off the hot path.
        self._fitted_on_frame = getattr(estimator, "feature_names_in_", None) is not None

    def row(self, features: dict[str, Any]) -> list[Any]:
        """One row in schema order; raises FeatureError naming a missing/unknown/ill-typed feature."""
        row: list[Any] = [math.nan] * len(self.names)
        index = self.index
        for name, value in features.items():
            i = index.get(name)
            if i is None:
                raise FeatureError(name, f"unknown feature {name!r}; expected some of {self.names}")
            if value is None:
                continue
            if name in self.categorical:
                if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
                    raise FeatureError(name, f"feature {name!r} is an integer too large to be a category")
                row[i] = str(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise FeatureError(name, f"feature {name!r} must be a number, got {type(value).__name__}")
                try:
                    number = float(value)  # an integer beyond ~1.8e308 overflows here
                except OverflowError:
                    raise FeatureError(name, f"feature {name!r} is out of range (a finite number within "
                                             "+-1.8e308)") from None
                if not math.isfinite(number):
                    raise FeatureError(name, f"feature {name!r} must be a finite number within +-1.8e308")
                row[i] = number
        missing = [n for n in self.names if n in self.required and features.get(n) is None]
        if missing:
            raise FeatureError(missing[0], f"missing required feature(s): {', '.join(missing)}")
        return row

    def matrix(self, rows: list[list[Any]]) -> Any:
        array = np.asarray(rows, dtype=self.dtype)
        if self._fitted_on_frame:
            import pandas as pd

            return pd.DataFrame(array, columns=self.names)
        return array

    def predict(self, rows: list[list[Any]]) -> tuple[list[Any], list[float | None]]:
        """Predicted labels (Python scalars) and confidences (max class probability) for rows."""
        x = self.matrix(rows)
        if self.has_proba:
            proba = self.estimator.predict_proba(x)
            best = proba.argmax(axis=1)
            classes = self.estimator.classes_
            labels = [c.item() if hasattr(c, "item") else c for c in classes[best]]
            confidence = proba[np.arange(len(best)), best].tolist()
            return labels, confidence
        predicted = self.estimator.predict(x)
        return [p.item() if hasattr(p, "item") else p for p in predicted], [None] * len(rows)


def _trainer_sha(uri: str) -> str | None:
    """The digest ``mlops train`` wrote in ``model.sha256`` beside the model, if any."""
    try:
        text = fetch_bytes(sibling_uri(uri, "model.sha256"), max_bytes=4096).decode("ascii", "replace")
    except ModelLoadError:
        return None
    first = text.split()[0].lower() if text.split() else ""
    return first if _SHA256.match(first) else None


def load_model(
    uri: str,
    sha256: str | None = None,
    fmt: ModelFormat | None = None,
    version: str | None = None,
    metadata_uri: str | None = None,
    extra_trusted: list[str] | None = None,
    *,
    allow_unsafe: bool = False,
    tracking_uri: str | None = None,
) -> LoadedModel:
    """Fetch ``uri``, verify it, then load it.

    Pinned (``sha256``): the file must have that digest; the schema comes from inside the file (what
    ``mlops train`` embeds), and a metadata.json beside it must agree with it. Unpinned: the model
    is loaded only if it is what the trainer wrote -- ``model.sha256`` and metadata.json both present
    and both naming the file's digest -- anything else is refused.

    MLflow registry URIs (``models:/``, ``runs:/``; ``tracking_uri`` or ``$MLFLOW_TRACKING_URI``
    names the server) are downloaded by mlops.integrations.mlflow_registry and then verified and
    loaded here like a local file.

    Raises ModelLoadError (IntegrityError on a digest mismatch) and has no other side effect.
    """
    if uri.startswith(("models:/", "runs:/")):
        return _load_registry_model(uri, sha256, fmt, version, extra_trusted, tracking_uri, allow_unsafe)
    metadata: ModelMetadata | None = None
    meta_source = metadata_uri or sibling_uri(uri, "metadata.json")
    try:
        meta_bytes = fetch_bytes(meta_source, max_bytes=16 * 1024 * 1024)
    except ModelLoadError:
        if metadata_uri:
            raise
        meta_bytes = None
    if meta_bytes is not None:
        try:
            metadata = ModelMetadata.model_validate_json(meta_bytes)
        except ValueError as exc:
            raise ModelLoadError(f"invalid metadata at {meta_source}: {exc}") from exc
    if sha256 is not None:
        expected = sha256
    else:
        recorded = _trainer_sha(uri)
        claimed = metadata.sha256.lower() if metadata and metadata.sha256 else None
        if recorded is None or claimed is None:
            raise ModelLoadError(f"{uri}: no sha256 pinned and no trainer record (model.sha256 and metadata.json "
                                 "with its sha256) beside it; pin the artifact's sha256")
        if recorded != claimed:
            raise IntegrityError(f"{uri}: model.sha256 and metadata.json disagree about the model's digest; "
                                 "refusing to load (replaced or edited artifact)")
        expected = recorded
    chosen_format: ModelFormat = fmt or (metadata.format if metadata else None) or (
        "joblib" if uri.endswith((".joblib", ".pkl")) else "skops"
    )
    data = fetch_bytes(uri)
    actual = verify_sha256(data, expected, uri)
    loaded = deserialize(data, chosen_format, sha256_pinned=sha256 is not None, extra_trusted=extra_trusted,
                         allow_unsafe=allow_unsafe)
    embedded = None
    estimator = loaded
    if isinstance(loaded, dict) and "estimator" in loaded:
        estimator, embedded = loaded["estimator"], loaded.get(EMBEDDED_KEY)
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"artifact {uri} holds a {type(estimator).__name__}, not a model with predict()")
    if embedded is not None:
        try:
            schema = FeatureSchema.model_validate(embedded["feature_schema"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"artifact {uri} embeds an invalid feature schema: {exc}") from exc
        if metadata is not None and _schema_fields(metadata) != _schema_fields(
                metadata.model_copy(update={"feature_schema": schema, "classes": embedded.get("classes", []),
                                            "label": embedded.get("label")})):
            raise IntegrityError(f"metadata.json beside {uri} does not match the schema inside the verified model "
                                 "(features, order, types or classes edited); refusing to load")
        base = metadata or ModelMetadata(feature_schema=schema)
        metadata = base.model_copy(update={"feature_schema": schema, "classes": embedded.get("classes", []),
                                           "label": embedded.get("label")})
    elif metadata is not None:
        names = getattr(estimator, "feature_names_in_", None)
        if names is None or [str(n) for n in names] != metadata.feature_schema.names:
            # A bare estimator (trained elsewhere, or by an older `mlops train`): nothing the digest
            # covers says which column is which, so metadata.json cannot be trusted for the order.
            raise IntegrityError(f"metadata.json beside {uri} lists a feature schema the verified model does not "
                                 "carry (retrain with `mlops train`, which embeds it, or remove metadata.json to "
                                 "use the estimator's own feature names)")
    if metadata is None:
        metadata = ModelMetadata(feature_schema=schema_from_estimator(estimator), format=chosen_format)
    metadata = metadata.model_copy(update={"sha256": actual, "format": chosen_format})
    if version:
        metadata = metadata.model_copy(update={"version": version})
    if not metadata.version:
        metadata = metadata.model_copy(update={"version": actual[:12]})
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and int(n_in) != len(metadata.feature_schema.features):
        raise ModelLoadError(
            f"metadata lists {len(metadata.feature_schema.features)} features but the model expects {n_in}"
        )
    return LoadedModel(estimator, metadata)


def _registry_record_digest(uri: str, art: Any, fmt: ModelFormat | None) -> str | None:
    """The digest an unpinned load of a *fixed* registry version is held to.

    A fixed version (``models:/name/3``, ``runs:/...``) does not move, and whoever could replace a
    ``model.sha256`` beside it can as well rewrite its registry tag: the trainer record and the
    registry record are the same trust root. So: the trainer record when the version carries one
    (``mlops train --register``); otherwise the ``mlops.sha256`` tag, checked against the download;
    otherwise the digest of what was downloaded, reported in the model's metadata. Only for skops
    (loading it runs no code): pickle formats need an explicit pin."""
    if art.metadata_path is not None and (art.model_path.parent / "model.sha256").exists():
        return None  # the trainer record beside the model is checked by load_model
    actual = art.sha256()
    if art.registry_sha256 and art.registry_sha256.lower() != actual:
        raise IntegrityError(f"{uri} (resolved to {art.fixed_uri}): the registry records sha256 "
                             f"{art.registry_sha256} but the artifact has {actual}; refusing to load")
    if (fmt or art.format) != "skops":
        raise ModelLoadError(f"{uri}: a {fmt or art.format} (pickle) model needs an explicit sha256 pin "
                             f"(it resolves to {art.fixed_uri} now, sha256 {actual})")
    return actual


def _load_registry_model(uri: str, sha256: str | None, fmt: ModelFormat | None, version: str | None,
                         extra_trusted: list[str] | None, tracking_uri: str | None,
                         allow_unsafe: bool = False) -> LoadedModel:
    from mlops.integrations.mlflow_registry import RegistryError, download

    try:
        with download(uri, tracking_uri) as art:
            if art.moving and sha256 is None:
                raise ModelLoadError(f"{uri} can move to another model version: pin it with its sha256 "
                                     f"(it resolves to {art.fixed_uri} now, sha256 {art.sha256()})")
            expected = sha256 or _registry_record_digest(uri, art, fmt)
            loaded = load_model(str(art.model_path), sha256=expected, fmt=fmt or art.format,
                                version=version or (None if art.metadata_path else art.version),
                                extra_trusted=extra_trusted, allow_unsafe=allow_unsafe)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from exc
    except IntegrityError as exc:
        raise IntegrityError(f"{uri} (resolved to {art.fixed_uri}): {exc}") from exc
    loaded.metadata = loaded.metadata.model_copy(update={"source_uri": uri, "resolved_uri": art.fixed_uri})
    return loaded


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
