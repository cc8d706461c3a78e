"""`mlops train`: fit a model on a CSV and write a servable artifact folder.

Writes DIR/model.skops, DIR/model.sha256, DIR/metadata.json (feature schema, classes, holdout
metrics) and DIR/profile.json (baseline profile). The retraining Job's default command.
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
    if args.json:
        print(json.dumps(meta.model_dump(), indent=2, default=str))
    else:
        print(f"wrote {args.out}/model.skops (sha256 {meta.sha256}), metadata.json, profile.json; "
              f"holdout accuracy {meta.metrics['accuracy']:.3f}")
    return 0
