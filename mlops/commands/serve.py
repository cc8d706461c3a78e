"""`mlops serve`: run the production model server (the `model` container of every serving pod).

Examples:
  mlops serve --demo --port 5000                      # the quick start (make run)
  mlops serve --model-uri file:///models/v3/model.skops --sha256 <hex> --version v3 \\
              --sidecar-url http://127.0.0.1:8081 --port 8080
  mlops serve --model-uri models:/alzheimer/1 --sha256 <hex> --mlflow-tracking-uri http://mlflow:5000
"""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP (predict, feedback, monitoring, A/B)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", action="append", default=[], metavar="URI",
                   help="artifact URI (file://, http(s)://, a path, or an MLflow models:/name/version, "
                        "models:/name@alias, runs:/id/path); repeat for several versions")
    p.add_argument("--sha256", action="append", default=[], help="pinned sha256 per --model-uri, in order")
    p.add_argument("--version", dest="model_version", action="append", default=[],
                   help="version name per --model-uri (default: from metadata.json)")
    p.add_argument("--format", choices=["skops", "joblib"], default=None,
                   help="artifact format (default skops; joblib only with --allow-unsafe-formats and --sha256)")
    p.add_argument("--allow-unsafe-formats", action="store_true",
                   help="accept pickle-based artifacts (joblib), which run arbitrary code when loaded; "
                        "they must still be pinned with --sha256")
    p.add_argument("--trust-type", action="append", default=[], metavar="NAME",
                   help="also trust this exact type name in skops artifacts (repeatable)")
    p.add_argument("--model-root", default=None,
                   help="folder under which the admin API may load model files (default: $MLOPS_MODEL_ROOT; "
                        "unset: the admin API loads http(s) artifacts only)")
    p.add_argument("--mlflow-tracking-uri", default=None,
                   help="MLflow tracking server for models:/ and runs:/ URIs and for tracking "
                        "(default: $MLFLOW_TRACKING_URI; needs the [mlflow] extra)")
    p.add_argument("--current", help="version to make current (default: the first loaded)")
    p.add_argument("--model-name", default=None, help="model name (default: from the artifact's metadata)")
    p.add_argument("--baseline-csv", help="baseline features CSV for in-process monitoring")
    p.add_argument("--sidecar-url", help="send monitoring events to this sidecar instead of in-process")
    p.add_argument("--no-monitoring", action="store_true", help="do not record predictions")
    p.add_argument("--no-ab-testing", action="store_true", help="disable experiment routing")
    p.add_argument("--flush-interval", type=float, default=1.0, help="seconds between monitoring flushes")
    p.add_argument("--demo", action="store_true",
                   help="serve the quick-start demo: v1.0.0 and v2.0.0 with experiment alzheimer_model_v2_test")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=None,
                   help="most single-row /predict requests answered by one model call (0: no micro-batching; "
                        "default 64, or $MLOPS_SERVE_MAX_BATCH)")
    p.add_argument("--batch-mode", choices=["inline", "thread"], default=None,
                   help="run micro-batches on the event loop or in one dedicated thread "
                        "(default inline, or $MLOPS_SERVE_BATCH_MODE)")
    p.add_argument("--header-timeout", type=float, default=None,
                   help="seconds a client has to send a request's headers before the connection is closed "
                        "(default 10, or $MLOPS_SERVE_HEADER_TIMEOUT)")
    p.add_argument("--body-timeout", type=float, default=None,
                   help="seconds a client has to send a request's body before it is answered 408 "
                        "(default 30, or $MLOPS_SERVE_BODY_TIMEOUT)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    import os

    if not args.demo and not args.model_uri:
        raise UsageError("give --model-uri (one per version) or --demo")
    if args.sha256 and len(args.sha256) != len(args.model_uri):
        raise UsageError("give one --sha256 per --model-uri")
    if args.model_version and len(args.model_version) != len(args.model_uri):
        raise UsageError("give one --version per --model-uri")
    if args.format == "joblib" and not args.allow_unsafe_formats:
        raise UsageError("--format joblib runs arbitrary code when loaded: add --allow-unsafe-formats to accept it")
    if args.format == "joblib" and not args.sha256:
        raise UsageError("--format joblib needs --sha256 (pickle files are only loaded when pinned)")
    if args.workers < 1 or not 0 < args.port < 65536 or args.flush_interval <= 0:
        raise UsageError("--workers >= 1, --port in 1..65535 and --flush-interval > 0 are required")
    options: dict = {}
    if args.demo:
        from mlops.serving.app import prepare_demo
        from mlops.store.sqlite import mlops_home

        options = prepare_demo(mlops_home() / "demo-models")
    versions = list(options.get("versions", []))
    for i, uri in enumerate(args.model_uri):
        versions.append({"uri": uri, "sha256": args.sha256[i] if args.sha256 else None,
                         "version": args.model_version[i] if args.model_version else None, "format": args.format})
    options["versions"] = versions
    if args.model_name:
        options["model_name"] = args.model_name
    elif "model_name" not in options:
        options["model_name"] = _name_from_metadata(versions[0]["uri"])
    if args.current:
        options["current"] = args.current
    if args.baseline_csv:
        options["baseline_csv"] = args.baseline_csv
    tracking = args.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking:
        options["mlflow_tracking_uri"] = tracking
    options.update(sidecar_url=args.sidecar_url, enable_monitoring=not args.no_monitoring,
                   enable_ab_testing=not args.no_ab_testing, flush_interval=args.flush_interval,
                   allow_unsafe_formats=args.allow_unsafe_formats, model_root=args.model_root,
                   trusted_types=args.trust_type)
    return options


def _name_from_metadata(uri: str) -> str:
    from mlops.serving.model_store import ModelLoadError, ModelMetadata, fetch_bytes, sibling_uri

    if uri.startswith("models:/"):  # the registered model's name
        from mlops.integrations.mlflow_registry import RegistryError, parse_registry_uri

        try:
            return parse_registry_uri(uri).name or "model"
        except RegistryError as exc:
            raise UsageError(str(exc)) from exc
    if uri.startswith("runs:/"):
        return "model"

    try:
        return ModelMetadata.model_validate_json(fetch_bytes(sibling_uri(uri, "metadata.json"))).model_name
    except (ModelLoadError, ValueError):
        return "model"


def _check_home_writable() -> None:
    """Durable state (monitoring, experiments, the feedback ledger) lives in $MLOPS_HOME: refuse to
    start, with one line, when it cannot be written (a read-only mount, a full disk, no permission)."""
    import os
    import tempfile

    from mlops.store.sqlite import mlops_home

    home = mlops_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise UsageError(f"MLOPS_HOME {home} is not writable: {exc.strerror or exc}; point MLOPS_HOME at a "
                         "writable folder") from None


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sqlite3

    import orjson
    import uvicorn

    from mlops.serving.app import build_server_from_options
    from mlops.serving.model_store import ModelLoadError
    from mlops.serving.signing import KEY_ENV, KEY_FILE_ENV, SigningKeyError, configured_keys, new_key_text

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = _options(args)
    try:
        keys = configured_keys()
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    if keys is None and args.workers > 1:
        # One key for every worker process (they inherit the environment), so an id signed by one
        # worker verifies in all of them. Other processes (a router) still need the key configured.
        os.environ[KEY_ENV] = new_key_text()
        os.environ.pop(KEY_FILE_ENV, None)
        logging.getLogger(__name__).warning(
            "%s/%s not set: the %d workers share a random key generated now; set one to verify ids "
            "across restarts and in the router", KEY_FILE_ENV, KEY_ENV, args.workers)
    if args.max_batch is not None:
        if args.max_batch < 0:
            raise UsageError("--max-batch must be >= 0")
        os.environ["MLOPS_SERVE_MAX_BATCH"] = str(args.max_batch)  # worker processes inherit it
    if args.batch_mode is not None:
        os.environ["MLOPS_SERVE_BATCH_MODE"] = args.batch_mode
    for flag, value, env_name in (("--header-timeout", args.header_timeout, "MLOPS_SERVE_HEADER_TIMEOUT"),
                                  ("--body-timeout", args.body_timeout, "MLOPS_SERVE_BODY_TIMEOUT")):
        if value is not None:
            if value <= 0:
                raise UsageError(f"{flag} must be positive")
            os.environ[env_name] = str(value)  # read by the protocol and the app, inherited by workers
    if args.workers > 1:
        _check_home_writable()
        os.environ["MLOPS_SERVE_OPTIONS"] = orjson.dumps(options).decode()
        from mlops.serving.http_timeouts import HeaderTimeoutProtocol

        uvicorn.run("mlops.serving.app:app_from_env", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level=args.log_level, access_log=False,
                    http=HeaderTimeoutProtocol)
        return 0
    _check_home_writable()
    try:
        server = build_server_from_options(options, prediction_key=keys)
    except (ModelLoadError, FileNotFoundError, ValueError, OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot start the model server: {exc}") from exc
    server.run(host=args.host, port=args.port, log_level=args.log_level)
    return 0
