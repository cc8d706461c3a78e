"""`mlops config validate FILE`: check a central configuration file (the guide's
``production_config.yaml``) before deploying it: exit 0 when valid, 2 with every bad key path."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="validate the central YAML configuration")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate",
        help="check a configuration file: unknown keys, wrong types and bad values are named by key path",
    )
    validate.add_argument("file", help="YAML file, e.g. config/production_config.yaml")
    validate.add_argument("--print", dest="print_effective", action="store_true",
                          help="print the effective configuration (defaults filled in) as JSON")
    validate.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from mlops.commands._common import UsageError
    from mlops.monitoring.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.print_effective:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        print(f"{args.file}: valid")
    return 0
