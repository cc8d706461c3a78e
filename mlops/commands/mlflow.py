"""`mlops mlflow`: what an MLflow registry URI points to now, and the pinned download used by pods.

  mlops mlflow resolve models:/alzheimer@champion          # version, run, format and the sha256 to pin
  mlops mlflow fetch models:/alzheimer/3 --sha256 <hex> --dest /models/model.skops

`fetch` is the init container's path for models:/ and runs:/ artifacts: it downloads the version the
URI resolves to, refuses it (exit 1, nothing written) when the model file's sha256 is not the pinned
one, e.g. after an alias moved, and otherwise puts the model file (and its metadata.json) at --dest.
The tracking server comes from --mlflow-tracking-uri or $MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mlflow", help="resolve or fetch MLflow registry URIs (models:/, runs:/)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mlflow_command", metavar="ACTION", required=True)
    resolve = sub.add_parser("resolve", help="print what a registry URI resolves to, with the sha256 to pin")
    resolve.add_argument("uri")
    resolve.add_argument("--mlflow-tracking-uri", default=None)
    resolve.set_defaults(func=run_resolve)
    fetch = sub.add_parser("fetch", help="download a registry URI, verify its pin, write the model file")
    fetch.add_argument("uri")
    fetch.add_argument("--sha256", required=True, help="the pinned sha256 of the model file")
    fetch.add_argument("--dest", required=True, help="where the verified model file goes")
    fetch.add_argument("--mlflow-tracking-uri", default=None)
    fetch.set_defaults(func=run_fetch)


def run_resolve(args: argparse.Namespace) -> int:
    import json

    from mlops.integrations.mlflow_registry import RegistryError, describe

    try:
        info = describe(args.uri, args.mlflow_tracking_uri)
    except RegistryError as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(info, indent=2))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    import json
    import sys

    from mlops.integrations.mlflow_registry import PinMismatch, RegistryError, fetch_to

    try:
        info = fetch_to(args.uri, args.sha256, args.dest, args.mlflow_tracking_uri)
    except PinMismatch as exc:
        print(f"mlops mlflow fetch: refused: {exc}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(info))
    return 0
