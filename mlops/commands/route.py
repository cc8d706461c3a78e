"""`mlops route`: the sticky weighted router between a model's versions (reads the routing table)."""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "route",
        help="run the sticky weighted router between model versions",
        description="Route /predict, /predict/batch and /feedback to model versions per a routing table "
        "(JSON or YAML; reloaded when the file changes). Assignment is sticky per user key (header "
        "X-User-ID or the body's user_id). Feedback goes to the version encoded in the signed prediction "
        "id; set MLOPS_PREDICTION_ID_KEY_FILE (or MLOPS_PREDICTION_ID_KEY) to the servers' key, and "
        "MLOPS_PREDICTION_ID_PREVIOUS_KEY_FILE during a key rotation.",
    )
    parser.add_argument("--table", required=True, help="routing table file (e.g. the mounted routing.json)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--read-timeout", type=float, default=30.0, help="upstream read timeout, seconds")
    parser.add_argument("--connect-timeout", type=float, default=2.0, help="upstream connect timeout, seconds")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="seconds between checks of the table file (default 1)")
    parser.add_argument("--check", action="store_true", help="validate the table, print it and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    for name in ("read_timeout", "connect_timeout", "poll_interval"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    from mlops.serving.routing_table import load_routing_table

    try:
        table = load_routing_table(args.table)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.check:
        print(table.to_json())
        return 0
    from mlops.serving.router import RouterSettings, run_router
    from mlops.serving.signing import SigningKeyError, signing_keys

    try:
        keys = signing_keys(required_by="the router (it verifies the prediction ids of /feedback)")
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    settings = RouterSettings(read_timeout=args.read_timeout, connect_timeout=args.connect_timeout,
                              poll_interval=args.poll_interval)
    run_router(args.table, args.host, args.port, key=keys.verify_keys, settings=settings)
    return 0
