"""The `mlops` command: discovers the subcommand modules in ``mlops.commands`` and dispatches.

Exit statuses follow one convention across subcommands: 0 success, 1 a negative finding
(drift detected, audit chain broken, ...), 2 bad input (with a one-line reason, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

import mlops
import mlops.commands
from mlops.commands._common import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops",
        description="Kubernetes-native MLOps: monitoring, drift, A/B testing, retraining, serving.",
    )
    parser.add_argument("--version", action="version", version=f"mlops {mlops.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(mlops.commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mlops.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"mlops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mlops ... | head` closed the pipe: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
