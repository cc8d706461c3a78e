"""Build a configured model server from plain options: what ``mlops serve`` and each uvicorn worker
(``--workers N`` re-imports the app in every worker process) share.

Why it exists: with several workers uvicorn needs an importable app factory (``app_from_env``), so
the command's options travel as JSON in ``MLOPS_SERVE_OPTIONS`` and every worker builds an identical
server here. Only this module imports production_server (never the reverse).
Also sets up the quick-start demo (two versions and the guide's experiment) for ``--demo``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI

from mlops.serving.production_server import (
    ProductionModelServer,
    create_production_server,
    freeze_startup_heap,
)

logger = logging.getLogger(__name__)


def prepare_demo(folder: str | Path) -> dict[str, Any]:
    """Train the demo versions (or use the image's prebuilt ones) and return the options that serve them."""
    from mlops.serving import demo

    artifacts = demo.prebuilt_or_build(folder)
    return {
        "model_name": demo.MODEL_NAME,
        "versions": [{"version": v, "uri": artifacts.model_uris[v]} for v in demo.VERSIONS],
        "current": demo.VERSIONS[0],
        "baseline_csv": str(artifacts.baseline_csv),
        "experiment": {"experiment_name": demo.EXPERIMENT, "model_a_version": demo.VERSIONS[0],
                       "model_b_version": demo.VERSIONS[1], "traffic_split": 0.3, "duration_days": 14,
                       "min_samples_per_variant": 1000, "significance_level": 0.05,
                       "primary_metric": "accuracy"},
    }


def ensure_experiment(server: ProductionModelServer, config: dict[str, Any]) -> None:
    """Create and start the experiment unless the A/B store already has it (restarts keep its data)."""
    manager = server.ab_manager
    if manager is None:
        logger.warning("A/B testing unavailable: experiment %s not started", config["experiment_name"])
        return
    from mlops.monitoring.ab_testing import ABTestConfig

    name = config["experiment_name"]
    try:
        status = manager.get_experiment_status(name)
    except (KeyError, ValueError):
        status = None
    if not status:
        try:
            manager.create_experiment(ABTestConfig(**config))
        except ValueError:
            logger.info("experiment %s already exists", name)
        status = manager.get_experiment_status(name)
    state = status.get("status") if isinstance(status, dict) else None
    state = getattr(state, "value", state)
    if state in (None, "draft", "paused"):
        manager.start_experiment(name)


def build_server_from_options(options: dict[str, Any], **extra: Any) -> ProductionModelServer:
    """``extra``: constructor options that do not travel as JSON (e.g. ``prediction_key``)."""
    server = create_production_server(
        options.get("model_name") or "model",
        enable_monitoring=options.get("enable_monitoring", True),
        enable_ab_testing=options.get("enable_ab_testing", True),
        sidecar_url=options.get("sidecar_url"),
        flush_interval=options.get("flush_interval", 1.0),
        allow_unsafe_formats=options.get("allow_unsafe_formats", False),
        model_root=options.get("model_root"),
        trusted_types=options.get("trusted_types"),
        **extra,
        mlflow_tracking_uri=options.get("mlflow_tracking_uri"),
    )
    for spec in options.get("versions", []):
        server.load_model_version(spec.get("version") or "", uri=spec["uri"], sha256=spec.get("sha256"),
                                  format=spec.get("format"))
    if options.get("current"):
        server.rollback_model(options["current"]) if options["current"] != server.current_model_version else None
    if options.get("baseline_csv") and server.monitor is not None:
        server.setup_baseline_monitoring(options["baseline_csv"])
    if options.get("experiment"):
        ensure_experiment(server, options["experiment"])
    return server


def app_from_env() -> FastAPI:
    """uvicorn factory for ``mlops serve --workers N``: rebuilds the server in each worker from the
    JSON options the command put in ``MLOPS_SERVE_OPTIONS``. Several worker processes: ids signed by
    one must verify in the others, so a shared key is required."""
    from mlops.serving.signing import signing_keys

    options = orjson.loads(os.environ["MLOPS_SERVE_OPTIONS"])
    keys = signing_keys(required_by="a multi-worker model server")
    app = build_server_from_options(options, prediction_key=keys).app
    freeze_startup_heap()
    return app
