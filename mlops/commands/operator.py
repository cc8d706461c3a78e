"""`mlops operator`: run the kopf operator that reconciles ModelDeployments."""

from __future__ import annotations

import argparse
import os

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator (reconciles ModelDeployments into serving Deployments)",
        description="Watch ModelDeployments and keep their serving Deployments, Services, router and "
        "routing ConfigMap in place (server-side apply), write status, and collect the sidecars' metrics.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="namespace to watch (repeatable); default: $MLOPS_OPERATOR_NAMESPACE or 'default'")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--prometheus-url", help="collect through this Prometheus query API instead of scraping pods")
    parser.add_argument("--metrics-interval", type=float,
                        help="seconds between metric collections (default: each spec's collectIntervalSeconds)")
    parser.add_argument("--resync-interval", type=float, default=60.0,
                        help="seconds between full re-reconciliations of each resource (default 60)")
    parser.add_argument("--metrics-endpoints", metavar="FILE",
                        help='JSON {"<ns>/<name>": [sidecar /metrics URLs]} overriding pod discovery (tests, '
                        "out-of-cluster sidecars); re-read at every collection")
    parser.add_argument("--no-verify-artifacts", action="store_true",
                        help="do not fetch and verify artifacts before rollout (the init container still does)")
    parser.add_argument("--artifact-max-bytes", type=int, default=256 << 20,
                        help="largest artifact the operator verifies itself (default 256 MiB)")
    parser.add_argument("--artifact-allowed-schemes", default="https,s3,gs", metavar="LIST",
                        help="comma-separated URI schemes the operator itself may fetch to verify an artifact "
                        "(default https,s3,gs; s3/gs are left to the init container). Others are not fetched "
                        "(add file or http deliberately)")
    parser.add_argument("--artifact-allowed-hosts", default="", metavar="LIST",
                        help="comma-separated hosts the operator may fetch artifacts from (default: any host "
                        "that does not resolve to a loopback or link-local address; those are always refused)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                        help="hold a coordination.k8s.io Lease and act only while holding it (run 2+ replicas "
                        "with this on; default off for a single process)")
    parser.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE"),
                        help="namespace of the Lease (default: $POD_NAMESPACE)")
    parser.add_argument("--leader-election-lease-name", default="mlops-operator", help="name of the Lease")
    parser.add_argument("--leader-election-identity", default=None,
                        help="this candidate's identity (default: hostname_pid)")
    parser.add_argument("--lease-duration", type=float, default=15.0,
                        help="seconds without renewal after which a standby takes the Lease (default 15; the leader "
                        "renews every third of it and stops acting after two thirds without renewal)")
    parser.add_argument("--workers", type=int, default=4, help="reconcile threads (default 4)")
    parser.add_argument("--collect-workers", type=int, default=4,
                        help="metric collection threads, separate from reconciliation (default 4)")
    parser.add_argument("--cluster-domain", default="cluster.local")
    parser.add_argument("--liveness-port", type=int, default=8081, help="GET /healthz port (0 disables)")
    parser.add_argument("--metrics-port", type=int, default=8082, help="operator's own /metrics port (0 disables)")
    parser.add_argument("--bind", default="0.0.0.0", help="address for the liveness and metrics endpoints")
    parser.add_argument("--clock-offset-file", metavar="FILE", help=argparse.SUPPRESS)  # tests: shift the clock
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag in ("liveness_port", "metrics_port"):
        value = getattr(args, flag)
        if not 0 <= value < 65536:
            raise UsageError(f"--{flag.replace('_', '-')} must be between 0 and 65535, got {value}")
    if args.metrics_interval is not None and args.metrics_interval <= 0:
        raise UsageError(f"--metrics-interval must be positive, got {args.metrics_interval}")
    if args.resync_interval <= 0:
        raise UsageError(f"--resync-interval must be positive, got {args.resync_interval}")
    if args.kubeconfig and not os.path.exists(args.kubeconfig):
        raise UsageError(f"--kubeconfig {args.kubeconfig}: no such file")
    if args.prometheus_url and not args.prometheus_url.startswith(("http://", "https://")):
        raise UsageError("--prometheus-url must start with http:// or https://")
    namespaces = args.namespace or [os.environ.get("MLOPS_OPERATOR_NAMESPACE", "default")]
    if args.leader_elect and not args.leader_election_namespace:
        raise UsageError("--leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)")
    if args.lease_duration < 5:
        raise UsageError(f"--lease-duration must be at least 5 seconds, got {args.lease_duration}")
    if args.workers < 1 or args.collect_workers < 1:
        raise UsageError("--workers and --collect-workers must be at least 1")

    from mlops.operator.artifacts import ArtifactPolicy
    from mlops.operator.handlers import OperatorConfig
    from mlops.operator.main import run_operator

    config = OperatorConfig(
        namespaces=namespaces,
        all_namespaces=args.all_namespaces,
        prometheus_url=args.prometheus_url,
        metrics_interval=args.metrics_interval,
        resync_interval=args.resync_interval,
        metrics_endpoints_file=args.metrics_endpoints,
        verify_artifacts=not args.no_verify_artifacts,
        artifact_max_bytes=args.artifact_max_bytes,
        artifact_policy=ArtifactPolicy.from_flags(args.artifact_allowed_schemes.split(","),
                                                  args.artifact_allowed_hosts.split(",")),
        cluster_domain=args.cluster_domain,
        clock_offset_file=args.clock_offset_file,
        workers=args.workers,
        collect_workers=args.collect_workers,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_lease_name=args.leader_election_lease_name,
        leader_election_identity=args.leader_election_identity,
        lease_duration=args.lease_duration,
        renew_deadline=args.lease_duration * 2 / 3,
        renew_period=args.lease_duration / 3,
        retry_period=1.0,
    )
    return run_operator(
        config,
        kubeconfig=args.kubeconfig,
        liveness_port=args.liveness_port or None,
        metrics_port=args.metrics_port or None,
        bind=args.bind,
        log_json=args.log_format == "json",
        verbose=args.verbose,
    )
