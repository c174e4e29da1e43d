"""The autoscaling decision: from the Serve controller's gauges (as Ray exports them) to status and `Scaled`."""

from datetime import UTC, datetime

from tokenplane_operator.api.conditions import ConditionType
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.converge.scaling import SCALING_GAUGES, scaled_condition, scaling_from_pages
from tokenplane_operator.converge.status import ObservedState, RayServiceObservation, compute_status
from tokenplane_serving.autoscale import DECISION_GAUGES, REASONS

NOW = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
T_DECIDED = 1_800_000_000.0
T_ZERO = 1_800_000_300.0


def page(deployment: str, current: int, desired: int, reason: str, decided: float, zero: float = 0.0) -> str:
    """A head pod's /metrics as Ray's metrics agent serves the policy's gauges (ray_ prefix, Ray's own labels)."""
    labels = f'Component="core_worker",SessionName="session_x",application="llm",deployment="{deployment}"'
    lines = [
        "# HELP ray_tokenplane_autoscaler_replicas Replicas running / wanted by the policy.",
        "# TYPE ray_tokenplane_autoscaler_replicas gauge",
        f'ray_tokenplane_autoscaler_replicas{{{labels},kind="current"}} {current}',
        f'ray_tokenplane_autoscaler_replicas{{{labels},kind="desired"}} {desired}',
        "# HELP ray_tokenplane_autoscaler_decision_timestamp_seconds When the decision in force was taken.",
        "# TYPE ray_tokenplane_autoscaler_decision_timestamp_seconds gauge",
        *(
            f'ray_tokenplane_autoscaler_decision_timestamp_seconds{{{labels},reason="{r}"}} '
            f"{decided if r == reason else 0.0}"
            for r in REASONS
        ),
        "# HELP ray_tokenplane_autoscaler_zero_since_timestamp_seconds When the deployment reached zero replicas.",
        "# TYPE ray_tokenplane_autoscaler_zero_since_timestamp_seconds gauge",
        f"ray_tokenplane_autoscaler_zero_since_timestamp_seconds{{{labels}}} {zero}",
    ]
    return "\n".join(lines) + "\n"


def test_gauge_names_are_the_ones_the_policy_exports() -> None:
    # One source of truth across the layers that cannot import each other: Ray adds the `ray_` prefix.
    assert {key: f"ray_{name}" for key, name in DECISION_GAUGES.items()} == SCALING_GAUGES


def test_decision_is_read_from_the_pages() -> None:
    scaling = scaling_from_pages([page("LLMServer:tiny", 2, 4, "LatencyBreach", T_DECIDED), "other_metric 1\n"], NOW)
    assert scaling is not None
    assert (scaling.current, scaling.desired, scaling.reason) == (2, 4, "LatencyBreach")
    assert scaling.last_decision_time == datetime.fromtimestamp(T_DECIDED, UTC)
    assert scaling.zero_since is None and scaling.updated_at == NOW
    assert scaling_from_pages(["vllm_x 1\n"], NOW) is None  # the policy has not reported (yet)


def test_waiting_for_capacity_wins_over_a_later_decision_elsewhere() -> None:
    pages = [
        page("Prefill:tiny", 1, 3, "WaitingForCapacity", T_DECIDED),
        page("Decode:tiny", 2, 2, "Steady", T_DECIDED + 60),
    ]
    scaling = scaling_from_pages(pages, NOW)
    assert scaling is not None and (scaling.current, scaling.desired, scaling.reason) == (3, 5, "WaitingForCapacity")


def test_zero_since_only_when_every_deployment_is_at_zero() -> None:
    at_zero = scaling_from_pages([page("LLMServer:tiny", 0, 0, "Idle", T_DECIDED, zero=T_ZERO)], NOW)
    assert at_zero is not None and at_zero.zero_since == datetime.fromtimestamp(T_ZERO, UTC)
    status, reason, message = scaled_condition(at_zero)
    assert (status, reason.value) == ("True", "Idle")
    assert "at zero since 2027-01-15T08:05:00Z" in message
    mixed = [page("Prefill:tiny", 0, 0, "Idle", T_DECIDED, zero=T_ZERO), page("Decode:tiny", 1, 1, "Steady", T_DECIDED)]
    scaling = scaling_from_pages(mixed, NOW)
    assert scaling is not None and scaling.zero_since is None


def test_scaled_condition_reaches_the_status() -> None:
    deployment = InferenceDeployment.model_validate(
        {"metadata": {"name": "m1", "namespace": "team"}, "spec": {"model": {"source": "org/model"}}}
    )
    observed = ObservedState(rayservice=RayServiceObservation(current=True, ready=True))
    waiting = scaling_from_pages([page("LLMServer:m1", 2, 4, "WaitingForCapacity", T_DECIDED)], NOW)
    status = compute_status(deployment, observed, generation=1, now=NOW, scaling=waiting)
    scaled = next(c for c in status.conditions if c.type is ConditionType.SCALED)
    assert (scaled.status, scaled.reason.value) == ("False", "WaitingForCapacity")
    assert "2 of 4 replicas running" in scaled.message and "no node" in scaled.message
    assert status.scaling == waiting  # carried, so `kubectl get -o yaml` shows replicas, reason and time at zero
    growing = scaling_from_pages([page("LLMServer:m1", 2, 4, "QueueDepth", T_DECIDED)], NOW)
    scaled = next(c for c in compute_status(deployment, observed, generation=1, now=NOW, scaling=growing).conditions
                  if c.type is ConditionType.SCALED)  # fmt: skip
    assert (scaled.status, scaled.reason.value) == ("False", "QueueDepth")


def test_every_policy_reason_is_a_status_reason() -> None:
    for reason in REASONS:
        assert scaled_condition(scaling_from_pages([page("d", 1, 1, reason, T_DECIDED)], NOW))[1].value == reason
