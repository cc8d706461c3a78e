"""`mlops retrain`: inspect and steer a model's retraining engine from a shell.

Operates on the state under $MLOPS_HOME/<model>/retrain.db written by the model's trigger
(``mlops.monitoring.data_trigger``): status, history, approving or rejecting pending triggers,
forcing a run, and verifying the hash-chained audit log (exit 1 naming the first bad entry).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrain", help="retraining engine: status, history, approve, reject, force, verify-audit",
        description="Inspect and steer a model's retraining engine (state under $MLOPS_HOME).",
    )
    sub = parser.add_subparsers(dest="retrain_action", metavar="ACTION")
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("model", help="model name")
        return p

    p = add("status", "limits, last retrain, runs in the last 24 h, running and pending triggers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)

    p = add("history", "trigger events, newest first (blocked ones included)")
    p.add_argument("--days", type=float, default=7.0, help="look back this many days (default 7)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_history)

    p = add("approve", "approve a pending trigger; run it now when a command is configured")
    p.add_argument("event_id", type=int, help="id of the pending event (see `status`)")
    p.add_argument("--command", dest="override_command",
                   help="retrain command (argv, no shell) overriding the stored one")
    p.add_argument("--no-run", action="store_true",
                   help="only record the approval; the model's running trigger starts it")
    p.set_defaults(func=_approve)

    p = add("reject", "reject a pending trigger, with a reason")
    p.add_argument("event_id", type=int, help="id of the pending event")
    p.add_argument("--reason", default="Rejected from the command line", help="why")
    p.set_defaults(func=_reject)

    p = add("force", "run a manual retrain now (the limits still apply); exit 1 unless it succeeds")
    p.add_argument("--reason", default="Manual trigger", help="reason recorded with the run")
    p.add_argument("--command", dest="override_command",
                   help="retrain command (argv, no shell) overriding the stored one")
    p.set_defaults(func=_force)

    p = sub.add_parser(
        "scan-data", help="count rows in new data files (a RetrainPolicy's scan Job runs this)",
        description="List files under --path matching --pattern whose (size, mtime) are not in the known "
                    "ledger ($MLOPS_SCAN_KNOWN, JSON {path: [size, mtime_ns]}), count their rows once they stop "
                    "changing, and print (or write to --termination-message-path) "
                    "{\"files\": {path: [size, mtime_ns, rows]}, \"more\": bool}, cut to 4 KiB.")
    p.add_argument("--path", action="append", required=True, help="folder to scan (repeatable)")
    p.add_argument("--pattern", action="append", default=None,
                   help="file suffix or glob (repeatable; default .csv and .parquet)")
    p.add_argument("--known-env", default="MLOPS_SCAN_KNOWN", help="environment variable holding the known ledger")
    p.add_argument("--settle-seconds", type=float, default=1.0,
                   help="a file is counted when two looks this far apart see the same size and mtime")
    p.add_argument("--termination-message-path", metavar="PATH", default=None)
    p.set_defaults(func=_scan_data)

    p = sub.add_parser(
        "verify-audit", help="check the hash chain of the audit log; exit 1 naming the first bad entry",
        description="Check the hash chain of a model's audit log (under $MLOPS_HOME), or of a RetrainPolicy's "
                    "audit log in a cluster (--namespace NS --policy NAME: the ConfigMap <policy>-retrain-audit). "
                    "Exit 0 when intact, 1 naming the first bad entry.")
    p.add_argument("model", nargs="?", help="model name (local state); omit with --policy")
    p.add_argument("--policy", help="RetrainPolicy name (reads its audit ConfigMap from the cluster)")
    p.add_argument("--namespace", "-n", default="default", help="the policy's namespace (default: default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")
    p.set_defaults(func=_verify)


def _state_exists(model: str) -> bool:
    from mlops.store.sqlite import model_dir

    folder = model_dir(model)
    if (folder / "retrain.db").exists():
        return True
    # model_dir() created the folder; a model without state leaves no trace.
    if not any(folder.iterdir()):
        folder.rmdir()
    return False


def _trigger(args: argparse.Namespace):
    from dataclasses import replace

    from mlops.monitoring.data_trigger import (
        DataDrivenRetrainingTrigger,
        RetrainingTriggerConfig,
        load_stored_config,
    )

    if not _state_exists(args.model):
        raise UsageError(f"no retraining state for model {args.model!r} under $MLOPS_HOME")
    config = load_stored_config(args.model) or RetrainingTriggerConfig()
    command = getattr(args, "override_command", None)
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--command: {exc}") from exc
        if not argv:
            raise UsageError("--command is empty")
        config = replace(config, retrain_command=argv)
    # The CLI watches no folders and leaves the stored config as the model's trigger wrote it.
    trigger = DataDrivenRetrainingTrigger(args.model, replace(config, data_directories=None),
                                          remember_config=False)
    return trigger, config


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _status(args: argparse.Namespace) -> int:
    trigger, config = _trigger(args)
    status = trigger.status()
    status["is_active"] = None  # this process does not run the loop; unknown from here
    status["retrain_command"] = config.retrain_command
    status["require_manual_approval"] = config.require_manual_approval
    if args.json:
        _print_json(status)
        return 0
    print(f"model: {status['model_name']}")
    print(f"last successful retrain: {status['last_retrain_time'] or 'never'}")
    print(f"retrains in the last 24 h: {status['retrains_last_24h']} (max {status['max_retrains_per_day']}), "
          f"min {status['min_hours_between_retrains']} h between retrains")
    print(f"new samples not yet trained on: {status['pending_new_samples']}")
    print(f"manual approval required: {config.require_manual_approval}")
    print(f"retrain command: {shlex.join(config.retrain_command) if config.retrain_command else '(none)'}")
    for run in status["running"]:
        print(f"running: event {run['id']} {run['trigger_type']} since {run['started_at']}")
    if status["pending_approvals"]:
        print("pending:")
        for p in status["pending_approvals"]:
            print(f"  {p['id']}  {p['status']:<16} {p['trigger_type']:<24} {p['trigger_reason']}")
    else:
        print("pending: none")
    return 0


def _history(args: argparse.Namespace) -> int:
    trigger, _ = _trigger(args)
    rows = trigger.get_trigger_history(days=args.days)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no retraining events in the last {args.days:g} days")
        return 0
    for r in rows:
        detail = r["block_reason"] or r["error_message"] or ""
        print(f"{r['id']:>5}  {r['timestamp']}  {r['status']:<16} {r['trigger_type']:<24} "
              f"{r['trigger_reason']}" + (f"  [{detail}]" if detail else ""))
    return 0


def _approve(args: argparse.Namespace) -> int:
    trigger, config = _trigger(args)
    try:
        trigger.mark_approved(args.event_id)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip("'\"")) from exc
    if args.no_run or not config.retrain_command:
        print(f"approved event {args.event_id}; the model's running trigger will start it")
        return 0
    ok = trigger.run_approved(args.event_id)
    event = trigger.store.get_event(args.event_id)
    print(f"approved event {args.event_id}: {event['status']}"
          + (f" ({event['block_reason'] or event['error_message']})" if not ok else ""))
    return 0 if ok else 1


def _reject(args: argparse.Namespace) -> int:
    trigger, _ = _trigger(args)
    try:
        trigger.reject(args.event_id, args.reason)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip("'\"")) from exc
    print(f"rejected event {args.event_id}: {args.reason}")
    return 0


def _force(args: argparse.Namespace) -> int:
    trigger, _ = _trigger(args)
    ok = trigger.force_retrain(args.reason)
    latest = trigger.get_trigger_history(days=1)
    event = latest[0] if latest else None
    if event is None:
        print("no event recorded", file=sys.stderr)
        return 1
    detail = event["block_reason"] or event["error_message"]
    print(f"event {event['id']}: {event['status']}" + (f" ({detail})" if detail and not ok else ""))
    return 0 if ok else 1


SCAN_REPORT_LIMIT = 4000


def scan_report(paths: list[str], patterns: list[str], known: dict, *, settle_seconds: float = 1.0,
                sleep=None) -> dict:
    """{"files": {path: [size, mtime_ns, rows]}, "more": bool} for files not in ``known`` (or changed),
    stable over ``settle_seconds``, in a report that fits a termination message."""
    import os
    import time
    from pathlib import Path

    from mlops.monitoring.data_trigger import count_rows, matches

    def look() -> dict[str, tuple[int, int]]:
        out = {}
        for root in paths:
            if not Path(root).is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in sorted(filenames):
                    if name.startswith(".") or not matches(name, patterns):
                        continue
                    full = str(Path(dirpath, name).resolve())
                    try:
                        st = os.stat(full)
                    except OSError:
                        continue
                    if list(known.get(full) or []) != [st.st_size, st.st_mtime_ns]:
                        out[full] = (st.st_size, st.st_mtime_ns)
        return out

    first = look()
    if first and settle_seconds > 0:
        (sleep or time.sleep)(settle_seconds)
    second = look() if first else {}
    files: dict[str, list[int]] = {}
    more = False
    for path in sorted(second):
        if first.get(path) != second[path]:
            more = True  # still being written: the next scan counts it
            continue
        try:
            rows = count_rows(Path(path))
        except Exception:  # noqa: BLE001 - an unreadable file (half-written Parquet) is retried next scan
            more = True
            continue
        candidate = {**files, path: [second[path][0], second[path][1], rows]}
        if len(json.dumps({"files": candidate, "more": True})) > SCAN_REPORT_LIMIT:
            more = True
            break
        files = candidate
    return {"files": files, "more": more}


def _scan_data(args: argparse.Namespace) -> int:
    import os

    try:
        known = json.loads(os.environ.get(args.known_env) or "{}")
    except ValueError as exc:
        raise UsageError(f"${args.known_env} is not JSON: {exc}") from exc
    report = scan_report(args.path, args.pattern or [".csv", ".parquet"], known, settle_seconds=args.settle_seconds)
    text = json.dumps(report, separators=(",", ":"))
    if args.termination_message_path:
        try:
            with open(args.termination_message_path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError(f"--termination-message-path: {exc}") from exc
    print(text)
    return 0


def _verify_policy(args: argparse.Namespace) -> int:
    from mlops.core import audit_chain
    from mlops.operator.k8s import Kube, KubeError
    from mlops.operator.retrain import AUDIT_KEY, audit_configmap_name

    if args.model:
        raise UsageError("give either a model name or --policy, not both")
    try:
        kube = Kube.from_environment(args.kubeconfig, args.context)
        cm = kube.get("ConfigMap", args.namespace, audit_configmap_name(args.policy))
    except KubeError as exc:
        print(f"cannot read the audit ConfigMap: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # kubeconfig missing or unreadable
        raise UsageError(f"cannot reach the cluster: {exc}") from exc
    if cm is None:
        raise UsageError(f"no audit log for RetrainPolicy {args.namespace}/{args.policy} "
                         f"(ConfigMap {audit_configmap_name(args.policy)} not found)")
    entries = audit_chain.loads(((cm.get("data") or {}).get(AUDIT_KEY)) or "")
    result = audit_chain.verify(entries)
    if result.ok:
        print(f"audit chain intact: {result.entries} entries ({args.namespace}/{args.policy})")
        return 0
    print(f"audit chain broken at entry {result.first_bad_id}: {result.problem} ({args.namespace}/{args.policy})")
    return 1


def _verify(args: argparse.Namespace) -> int:
    from mlops.store.retrain_store import RetrainStore

    if args.policy:
        return _verify_policy(args)
    if not args.model:
        raise UsageError("give a model name (local state) or --policy NAME --namespace NS (a cluster's RetrainPolicy)")
    if not _state_exists(args.model):
        raise UsageError(f"no retraining state for model {args.model!r} under $MLOPS_HOME")
    result = RetrainStore(args.model).verify_audit()
    if result.ok:
        print(f"audit chain intact: {result.entries} entries")
        return 0
    print(f"audit chain broken at entry {result.first_bad_id}: {result.problem}")
    return 1
