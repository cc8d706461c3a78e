"""`mlops train`: fit a model on a CSV and write a servable artifact folder.

Writes DIR/model.skops, DIR/model.sha256, DIR/metadata.json (feature schema, classes, holdout
metrics) and DIR/profile.json (baseline profile). The retraining Job's default command.

With --register NAME (and an MLflow tracking server: --mlflow-tracking-uri or $MLFLOW_TRACKING_URI,
the [mlflow] extra installed) the folder is also logged as a run's artifacts and registered as a new
version of NAME; the command prints its models:/NAME/<version> URI and the sha256 to pin.

With --upload-to PREFIX (s3://bucket/prefix, gs://bucket/prefix or file:///shared/volume) the folder
is also copied to PREFIX/<run>/ (run: $MLOPS_RUN_ID, which a RetrainPolicy's Job sets, else
--version), with the credentials and endpoint variables the model pods' init container reads; that
URI is the one reported. Existing objects are never overwritten.
"""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model from a CSV into a servable artifact folder",
                              description=__doc__)
    p.add_argument("--data", required=True, help="training CSV")
    p.add_argument("--label", required=True, help="label column")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--features", help="comma-separated feature columns (default: every other column)")
    p.add_argument("--required", help="comma-separated required features (default: those never missing)")
    p.add_argument("--optional", help="comma-separated optional features (imputed when omitted)")
    p.add_argument("--model-name", default="model")
    p.add_argument("--version", default="v1")
    p.add_argument("--algorithm", choices=["logistic", "forest"], default="logistic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.add_argument("--register", metavar="NAME", help="register the artifact as a new MLflow model version")
    p.add_argument("--mlflow-tracking-uri", default=None, help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--upload-to", metavar="PREFIX", default=None,
                   help="also copy the artifact folder to PREFIX/<run>/ (s3://, gs://, file://) and report that "
                        "URI; run = $MLOPS_RUN_ID or --version")
    p.add_argument("--termination-message-path", metavar="PATH", default=None,
                   help="also write the artifact record (JSON: uri, sha256, format, metrics, runId from "
                        "$MLOPS_RUN_ID) to PATH, e.g. /dev/termination-log in a RetrainPolicy's Job, where the "
                        "operator reads it from the pod's status (default: off)")
    p.set_defaults(func=run)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from mlops.serving.training import TrainingError, train

    path = Path(args.data)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path} is not a readable CSV: {exc}") from exc
    try:
        meta = train(frame, args.label, args.out, model_name=args.model_name, version=args.version,
                     features=_names(args.features), required=_names(args.required),
                     optional=_names(args.optional), algorithm=args.algorithm, seed=args.seed)
    except TrainingError as exc:
        raise UsageError(str(exc)) from exc
    registered = _register(args, meta) if args.register else None
    uploaded = _upload(args, meta) if args.upload_to else None
    if args.termination_message_path:
        _write_record(args.termination_message_path, artifact_record(args.out, meta, registered, uploaded))
    if args.json:
        payload = meta.model_dump()
        if registered is not None:
            payload["registered"] = registered
        if uploaded is not None:
            payload["uploaded"] = uploaded
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(f"wrote {args.out}/model.skops (sha256 {meta.sha256}), metadata.json, profile.json; "
              f"holdout accuracy {meta.metrics['accuracy']:.3f}")
        if registered is not None:
            print(f"registered {registered['uri']} (sha256 {registered['sha256']}, run {registered['run_id']})")
        if uploaded is not None:
            print(f"uploaded {uploaded}")
    return 0


TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message


def artifact_record(out: str, meta, registered: dict | None = None, uploaded: str | None = None) -> dict:
    """What a retraining Job reports to the operator: where the artifact is and how to pin it.
    The registry URI when it was registered, else the uploaded copy's URI, else the file:// URI of the
    written model."""
    import os
    from pathlib import Path

    uri = registered["uri"] if registered else uploaded or (Path(out).resolve() / "model.skops").as_uri()
    metrics = {k: float(v) for k, v in (meta.metrics or {}).items() if isinstance(v, int | float)}
    record = {"uri": uri, "sha256": meta.sha256, "format": meta.format, "metrics": metrics}
    if os.environ.get("MLOPS_RUN_ID"):
        record["runId"] = os.environ["MLOPS_RUN_ID"]
    return record


def _write_record(path: str, record: dict) -> None:
    import json

    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:  # keep the pins, drop what does not fit
        record = {**record, "metrics": {k: record["metrics"][k] for k in list(record["metrics"])[:8]}}
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"--termination-message-path {path}: {exc}") from exc


def _upload(args: argparse.Namespace, meta) -> str:
    import os

    from mlops.serving.artifact_upload import UploadError, upload_folder

    try:
        return upload_folder(args.out, args.upload_to, os.environ.get("MLOPS_RUN_ID") or meta.version)
    except UploadError as exc:
        raise UsageError(f"--upload-to {args.upload_to}: {exc}") from exc


def _register(args: argparse.Namespace, meta) -> dict:
    from dataclasses import asdict

    from mlops.integrations.mlflow_registry import RegistryError, register_folder

    try:
        version = register_folder(
            args.out, args.register, meta.sha256, tracking_uri=args.mlflow_tracking_uri,
            run_name=f"mlops train {meta.model_name} {meta.version}", metrics=meta.metrics,
            params={"model_name": meta.model_name, "version": meta.version, "algorithm": args.algorithm,
                    "label": args.label, "seed": args.seed, "data": args.data,
                    "features": ",".join(meta.feature_schema.names)})
    except RegistryError as exc:
        raise UsageError(f"--register {args.register}: {exc}") from exc
    return asdict(version)
