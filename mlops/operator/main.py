"""Start the operator: logging, its own metrics endpoint, the Kubernetes adapter, then kopf.

Kept separate from the CLI module so ``mlops --help`` never imports kopf or the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import logging
import os

from mlops.operator.handlers import Controller, OperatorConfig, build_registry

log = logging.getLogger("mlops.operator")


def run_operator(
    config: OperatorConfig,
    *,
    kubeconfig: str | None = None,
    liveness_port: int | None = 8081,
    metrics_port: int | None = 8082,
    bind: str = "0.0.0.0",
    log_json: bool = True,
    verbose: bool = False,
) -> int:
    import kopf
    from prometheus_client import start_http_server

    from mlops.operator.k8s import Kube
    from mlops.operator.metrics import OperatorMetrics

    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.FULL)
    if not verbose:
        # kopf logs "Handler ... succeeded" for every watch event of every owned object and pod: at
        # 1,000 resources that is most of the operator's CPU. Our own logs say what was done.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape request
    metrics = OperatorMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=bind, registry=metrics.registry)
    kube = Kube.from_environment(kubeconfig)
    controller = Controller(kube, config, metrics=metrics, clock=file_offset_clock(config.clock_offset_file))
    registry = build_registry(controller)
    liveness = f"http://{bind}:{liveness_port}/healthz" if liveness_port else None
    log.info(
        "starting mlops operator",
        extra={"namespaces": config.namespaces, "all_namespaces": config.all_namespaces,
               "metrics_port": metrics_port, "liveness_port": liveness_port},
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=config.all_namespaces,
            namespaces=() if config.all_namespaces else config.namespaces,
            liveness_endpoint=liveness,
        )
    )
    return 0


def file_offset_clock(path: str | None):
    """The wall clock, plus the number of seconds written in ``path`` when one is given (re-read at
    every call). Tests use it to move the operator through ramp steps and ``durationDays`` without
    waiting; an unreadable or empty file counts as 0."""
    import time

    if not path:
        return time.time

    def clock() -> float:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read().strip()
            return time.time() + (float(text) if text else 0.0)
        except (OSError, ValueError):
            return time.time()

    return clock
