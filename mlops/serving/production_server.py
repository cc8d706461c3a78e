"""The production model server: the guide's ``create_production_server`` and its HTTP API.

Why it exists: this is the process users hit on every prediction (``mlops serve``; in a cluster the
``model`` container of every pod the operator creates), so it is built for speed and for safety:

* ``async def`` handlers, bodies parsed by pydantic-core straight from bytes, rows built as plain
  lists in the model's feature order (no DataFrame per request), orjson responses. Models whose
  measured single-row cost is high run in a worker thread so they never block the event loop.
* Monitoring is recorded after the answer, through the bounded ``Recorder`` (group commit by a
  background thread, drops counted, drained on shutdown; see mlops.serving.sinks): standalone into
  an in-process ProductionMonitor, in a pod to the sidecar (``sidecar_url``).
* Several versions loaded at once; a challenger never becomes current by being loaded; a tampered or
  unloadable artifact is refused and the current version keeps serving; ``rollback_model``.
* Every error goes through mlops.serving.errors (4xx JSON naming the problem, never raw 500 text).
* Each prediction gets a signed prediction id (version + predicted label inside) that ``/feedback``
  and the router verify.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mlops.serving.dataplane import DataPlane
from mlops.serving.errors import error_response
from mlops.serving.http_timeouts import HeaderTimeoutProtocol
from mlops.serving.model_store import ModelLoadError
from mlops.serving.rest import RestApi

logger = logging.getLogger(__name__)


class ProductionModelServer(DataPlane):
    """The data plane with its HTTP layer: ``.app`` is the FastAPI app (mlops.serving.rest)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = RestApi(self).build_app()

    def run(self, host: str = "0.0.0.0", port: int = 5000, log_level: str = "info") -> None:
        """Serve with uvicorn until SIGINT/SIGTERM, then drain the monitoring queue."""
        import uvicorn

        freeze_startup_heap()
        try:
            uvicorn.run(self.app, host=host, port=port, log_level=log_level, access_log=False,
                        http=HeaderTimeoutProtocol)
        finally:
            self.close()


class ProductionServer(ProductionModelServer):
    """The original system's server class name and argument order: ``ProductionServer(model_name,
    mlflow_tracking_uri, enable_monitoring, enable_ab_testing)``. Versions given by name only are
    found by a :class:`mlops.serving.model_loader.ModelLoader` (registry first, then ``models_dir``);
    ``run()`` loads the latest version when none is loaded yet."""

    def __init__(self, model_name: str = "alzheimer_classifier", mlflow_tracking_uri: str | None = None,
                 enable_monitoring: bool = True, enable_ab_testing: bool = True, *,
                 models_dir: str | os.PathLike[str] = "models", **options: Any) -> None:
        from mlops.serving.model_loader import ModelLoader

        super().__init__(model_name, enable_monitoring, enable_ab_testing, mlflow_tracking_uri=mlflow_tracking_uri,
                         **options)
        self.model_loader = ModelLoader(mlflow_tracking_uri, models_dir)

    def load_model_version(self, version: str, uri: str | None = None, sha256: str | None = None,
                           make_current: bool = False, **kwargs: Any) -> dict[str, Any]:
        if uri is None and kwargs.get("model") is None:
            found = self.model_loader.load(self.model_name, version, sha256=sha256)
            return super().load_model_version(version, make_current=make_current, model=found.estimator,
                                              metadata=found.metadata)
        return super().load_model_version(version, uri, sha256, make_current, **kwargs)

    def load_latest_model(self) -> bool:
        """Load (and make current) the newest version the model loader finds; False when there is none."""
        version = self.model_loader.get_latest_model_version(self.model_name)
        if version is None:
            return False
        self.load_model_version(version, make_current=True)
        return True

    def start_monitoring(self, interval_seconds: float = 300) -> None:
        if self.monitor is not None:
            self.monitor.start_monitoring(interval_seconds)

    def run(self, host: str = "0.0.0.0", port: int = 5000, log_level: str = "info", debug: bool = False) -> None:
        if not self.models:
            self.load_latest_model()
        self.start_monitoring()
        super().run(host=host, port=port, log_level="debug" if debug else log_level)

    def close(self) -> None:
        super().close()
        if self.monitor is not None:
            self.monitor.stop_monitoring()
            self.monitor.tracker.close()


def create_production_server(
    model_name: str,
    enable_monitoring: bool = True,
    enable_ab_testing: bool = True,
    **options: Any,
) -> ProductionModelServer:
    """The guide's factory. Options: ``monitor``, ``ab_manager``, ``sidecar_url``, ``admin_token``,
    ``prediction_key``, ``registry``, ``clock``, ``flush_interval``, ``queue_capacity``,
    ``model_uri``/``sha256``/``model_version``/``model_format`` (load one version right away)."""
    model_uri = options.pop("model_uri", None)
    sha256 = options.pop("sha256", None)
    version = options.pop("model_version", None)
    fmt = options.pop("model_format", None)
    server = ProductionModelServer(model_name, enable_monitoring, enable_ab_testing, **options)
    if model_uri:
        server.load_model_version(version or "", uri=model_uri, sha256=sha256, format=fmt, make_current=True)
    return server


def freeze_startup_heap() -> None:
    """Move everything allocated at start-up (libraries, models) out of the garbage collector's
    reach: otherwise every full collection walks those ~10^6 objects, a pause that shows up as
    the p99 latency. Called by the server processes we start (``run``, ``app.app_from_env``) only."""
    import gc

    gc.collect()
    gc.freeze()


__all__ = ["ProductionModelServer", "ProductionServer", "create_production_server", "ModelLoadError", "error_response"]
