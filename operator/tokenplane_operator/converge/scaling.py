"""The autoscaling policy's decision, read from the Ray pods' metrics, and the `Scaled` condition it gives.

The policy runs inside Ray Serve's controller (`tokenplane_serving.autoscale.publish_decision`) and exports three
gauges, which Ray's metrics agent serves with a `ray_` prefix on the head pod the operator already scrapes:
`ray_tokenplane_autoscaler_replicas{kind=current|desired}`, `..._decision_timestamp_seconds{reason}` (the Unix
time of the decision in force, 0 for the other reasons) and `..._zero_since_timestamp_seconds` (0 above zero).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from tokenplane_operator.api.conditions import Reason
from tokenplane_operator.api.v1alpha1 import ScalingStatus

__all__ = ["SCALING_GAUGES", "scaled_condition", "scaling_from_pages"]

SCALING_GAUGES = {
    "replicas": "ray_tokenplane_autoscaler_replicas",
    "decision": "ray_tokenplane_autoscaler_decision_timestamp_seconds",
    "zero_since": "ray_tokenplane_autoscaler_zero_since_timestamp_seconds",
}
_WAITING = Reason.WAITING_FOR_CAPACITY.value


def _at(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


def scaling_from_pages(pages: Iterable[str], now: datetime) -> ScalingStatus | None:
    """Read the policy's decision from Prometheus pages (every Ray pod's `/metrics`).

    With several autoscaled deployments (prefill and decode), replicas add up, WaitingForCapacity wins over any
    other reason (a replica that cannot be placed is what a human must know), and otherwise the latest decision's
    reason is reported; the deployment is at zero only when all of them are.

    Returns:
        The status, or None when no page carries the gauges (the policy has not run yet).
    """
    replicas: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    decisions: dict[tuple[str, str], tuple[float, str]] = {}
    zero: dict[tuple[str, str], float] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                key = (sample.labels.get("application", ""), sample.labels.get("deployment", ""))
                if sample.name == SCALING_GAUGES["replicas"]:
                    replicas[key][sample.labels.get("kind", "")] = sample.value
                elif sample.name == SCALING_GAUGES["decision"] and sample.value > decisions.get(key, (0.0, ""))[0]:
                    decisions[key] = (sample.value, sample.labels.get("reason", ""))
                elif sample.name == SCALING_GAUGES["zero_since"]:
                    zero[key] = sample.value
    if not replicas:
        return None
    reasons = {reason for _, reason in decisions.values()}
    latest = max(decisions.values(), default=(0.0, None))
    at_zero = all(zero.get(key, 0.0) > 0 for key in replicas)
    return ScalingStatus(
        current=int(sum(r.get("current", 0.0) for r in replicas.values())),
        desired=int(sum(r.get("desired", 0.0) for r in replicas.values())),
        reason=_WAITING if _WAITING in reasons else latest[1],
        last_decision_time=_at(latest[0]),
        zero_since=_at(max(zero.values())) if at_zero else None,
        updated_at=now,
    )


def scaled_condition(scaling: ScalingStatus | None) -> tuple[Literal["True", "False", "Unknown"], Reason, str]:
    """Return the `Scaled` condition (status, reason, message) for the last decision read."""
    if scaling is None or scaling.reason is None:
        return "Unknown", Reason.NOT_REPORTED, "no autoscaling decision read from the Serve controller yet"
    try:
        reason = Reason(scaling.reason)
    except ValueError:
        reason = Reason.NOT_REPORTED  # a newer serving image with a reason this operator does not know
    when = f" since {scaling.last_decision_time:%Y-%m-%dT%H:%M:%SZ}" if scaling.last_decision_time else ""
    counts = f"{scaling.current} of {scaling.desired} replicas running"
    if reason is Reason.WAITING_FOR_CAPACITY:
        return "False", reason, f"{counts}: replicas pending longer than a cold start, no node for them{when}"
    if (scaling.current or 0) < (scaling.desired or 0):
        return "False", reason, f"{counts}: scaling out ({scaling.reason}){when}"
    zero = f"; at zero since {scaling.zero_since:%Y-%m-%dT%H:%M:%SZ}" if scaling.zero_since else ""
    return "True", reason, f"{counts} ({scaling.reason}{when}){zero}"
