"""The operator's own Prometheus metrics and the HTTP endpoint that serves them (prometheus-client).

Per InferenceDeployment (labels `namespace`, `inference_deployment`, the labels the serving pods' PodMonitor gives
their series, so the two join): Ready, Stalled, QuotaInsufficient, Scaled (and WaitingForCapacity), replicas ready
and desired, min and max replicas, the node pool's provisioning state, the P95 latency target and the creation
time. Per process: reconciles by trigger and result, their errors and duration, and Azure (ARM) and Kubernetes API
errors by reason. Only the replica that holds kopf's peering reconciles, so only it exports deployment series; every
replica exports its process and API-error series.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from tokenplane_operator.converge.gauges import DeploymentGauges

__all__ = [
    "DEPLOYMENTS",
    "REGISTRY",
    "DeploymentGaugeSet",
    "ReconcileTimer",
    "count_api_error",
    "reconcile_timer",
    "serve",
]

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # memory and CPU of the operator process (the chart's limits)

_DEPLOYMENT_LABELS = ("namespace", "inference_deployment")
# Gauge per DeploymentGauges field (the node pool's two fields make one state series instead, and so do the latency
# target's two).
_GAUGES = {
    "ready": "1 when the Ready condition is True: the endpoint serves at the current spec.",
    "stalled": "1 when the Stalled condition is True: progress needs a human (quota, SKU, invalid spec).",
    "quota_insufficient": "1 when the region's vCPU quota cannot cover the node pool's maxCount (QuotaInsufficient).",
    "replicas_ready": "Ray worker replicas ready, as KubeRay reports them.",
    "replicas_desired": "Replicas the autoscaler wants.",
    "min_replicas": "spec.scaling.minReplicas.",
    "max_replicas": "spec.scaling.maxReplicas.",
    "scaled": "1 when the Scaled condition is True: the replicas the autoscaling policy wants are running.",
    "waiting_for_capacity": "1 when wanted replicas stay pending with no node for them (Scaled: WaitingForCapacity).",
    "created_timestamp_seconds": "metadata.creationTimestamp in Unix seconds (the deployment's age).",
}
_PREFIX = "tokenplane_inferencedeployment_"

Trigger = Literal["change", "poll", "rayservice"]
Api = Literal["arm", "kubernetes"]

_RECONCILES = Counter(
    "tokenplane_operator_reconcile",
    "Reconcile rounds by trigger and result: success, fault (a cloud or API failure, retried), invalid (the spec), "
    "error (the round raised).",
    ["trigger", "result"],
    registry=REGISTRY,
)
_RECONCILE_ERRORS = Counter(
    "tokenplane_operator_reconcile_errors",
    "Reconcile rounds that ended in a fault or raised.",
    ["trigger"],
    registry=REGISTRY,
)
_RECONCILE_SECONDS = Histogram(
    "tokenplane_operator_reconcile_duration_seconds",
    "Time one reconcile round took (Azure and Kubernetes calls included, the wait for a slot excluded).",
    ["trigger"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
_API_ERRORS = Counter(
    "tokenplane_operator_api_errors",
    "Failed Azure Resource Manager (api=arm) and Kubernetes API calls, by reason: Throttled, Transient, "
    "QuotaExceeded, SkuNotAvailable, InvalidRequest (ARM) or Rejected (Kubernetes).",
    ["api", "reason"],
    registry=REGISTRY,
)


class DeploymentGaugeSet:
    """The latest gauge values of every deployment this process reconciles, rendered at scrape time.

    A Collector rather than labelled Gauges: a deleted deployment, or a pool that changes state, leaves no stale
    series behind.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], DeploymentGauges] = {}

    def record(self, namespace: str, name: str, gauges: DeploymentGauges) -> None:
        """Keep a deployment's values from its latest reconcile."""
        self._values[(namespace, name)] = gauges

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted deployment's series."""
        self._values.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        """Yield one family per gauge (prometheus-client calls this on every scrape, in its server thread)."""
        snapshot = list(self._values.items())
        for attribute, documentation in _GAUGES.items():
            family = GaugeMetricFamily(_PREFIX + attribute, documentation, labels=_DEPLOYMENT_LABELS)
            for key, gauges in snapshot:
                value = getattr(gauges, attribute)
                if value is not None:
                    family.add_metric(key, float(value))
            yield family
        pool = GaugeMetricFamily(
            _PREFIX + "node_pool_state",
            "1 for the AKS agent pool's provisioningState now (Creating, Succeeded, Updating, Failed, Replacing...).",
            labels=(*_DEPLOYMENT_LABELS, "node_pool", "state"),
        )
        for key, gauges in snapshot:
            if gauges.node_pool is not None and gauges.node_pool_state is not None:
                pool.add_metric((*key, gauges.node_pool, gauges.node_pool_state), 1.0)
        yield pool
        target = GaugeMetricFamily(
            _PREFIX + "latency_target_seconds",
            "spec.scaling.latencyTarget's P95 in seconds, labelled with the latency it bounds (ttft or e2e); the "
            "latency alert compares each deployment's P95 with it.",
            labels=(*_DEPLOYMENT_LABELS, "latency"),
        )
        for key, gauges in snapshot:
            if gauges.latency_target_seconds is not None and gauges.latency_target_metric is not None:
                target.add_metric((*key, gauges.latency_target_metric), gauges.latency_target_seconds)
        yield target


DEPLOYMENTS = DeploymentGaugeSet()
REGISTRY.register(DEPLOYMENTS)


@dataclass
class ReconcileTimer:
    """How the timed round ended; the caller sets `result` from the round's outcome ("error" if it raises)."""

    result: Literal["success", "fault", "invalid", "error"] = "error"


@contextlib.contextmanager
def reconcile_timer(trigger: Trigger) -> Iterator[ReconcileTimer]:
    """Time one reconcile round and count it by its result."""
    timer = ReconcileTimer()
    started = time.perf_counter()
    try:
        yield timer
    except BaseException:
        timer.result = "error"
        raise
    finally:
        _RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)
        _RECONCILES.labels(trigger, timer.result).inc()
        if timer.result in ("fault", "error"):
            _RECONCILE_ERRORS.labels(trigger).inc()


def count_api_error(api: Api, reason: str) -> None:
    """Count one failed API call (the adapters call this where they convert the vendor's error)."""
    _API_ERRORS.labels(api, reason).inc()


def serve(port: int) -> WSGIServer:
    """Serve `/metrics` on every interface at `port` from a daemon thread; `shutdown()` the result to stop."""
    server, _ = start_http_server(port, registry=REGISTRY)
    return server
