"""The operator's own Prometheus metrics (reconciles, errors, durations, collections).

One ``OperatorMetrics`` per process, on an injectable ``CollectorRegistry`` so tests read exact values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "mlops_operator_reconciles",
            "ModelDeployment reconciliations, by result (success, invalid_spec, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "mlops_operator_reconcile_duration_seconds",
            "Time to reconcile one ModelDeployment (observe, verify, apply, prune, status).",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mlops_operator_errors",
            "Errors talking to the API server or collecting metrics, by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.applied = Counter(
            "mlops_operator_applied_objects",
            "Objects sent with server-side apply, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "mlops_operator_pruned_objects",
            "Owned objects deleted because they were no longer desired, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.collections = Counter(
            "mlops_operator_metric_collections",
            "Sidecar metric collections, by result (success, empty, error).",
            ["result"],
            registry=self.registry,
        )
        self.collection_seconds = Histogram(
            "mlops_operator_collection_duration_seconds",
            "Time to scrape, merge and summarize one ModelDeployment's sidecars.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.skipped = Counter(
            "mlops_operator_skipped_applies",
            "Child objects not applied because the live object already matched (no-op writes avoided).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "mlops_operator_api_requests",
            "Requests the operator sent to the API server (kopf's watch streams excluded), by verb and resource.",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.events = Counter(
            "mlops_operator_events",
            "Kubernetes Events recorded (new or aggregated into an existing one), by type and reason.",
            ["type", "reason"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "mlops_operator_leader",
            "1 while this replica holds the leader Lease (always 1 without leader election).",
            registry=self.registry,
        )
        self.managed = Gauge(
            "mlops_operator_model_deployments",
            "ModelDeployments currently known to this operator.",
            registry=self.registry,
        )
