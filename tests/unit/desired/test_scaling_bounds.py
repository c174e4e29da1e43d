"""One scaling section drives all three layers: Ray Serve's replicas, KubeRay's worker pods, AKS's nodes."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.bundle import build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.rayservice import compute_worker_shape
from tokenplane_operator.plan.catalog import find_sku

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "deploy" / "examples").glob("*.yaml"))


def bounds(body: dict[str, Any]) -> dict[str, Any]:
    deployment = parse_inference_deployment(body)
    state = build_desired_state(deployment, RenderConfig())
    autoscaling = state.serving_args.scaling
    (group,) = state.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    sku = find_sku(state.vm_size) if state.vm_size else None
    return {
        "deployment": state.deployment,
        "shape": compute_worker_shape(state.deployment, sku),
        "serve": (autoscaling.min_replicas, autoscaling.max_replicas),
        "pods": (group["minReplicas"], group["maxReplicas"]),
        "pool": (state.agent_pool.min_count, state.agent_pool.max_count) if state.agent_pool else None,
        "pinned": (state.deployment.spec.hardware.node_pool.managed or None),
    }


def assert_layers_agree(b: dict[str, Any]) -> None:
    spec = b["deployment"].spec
    shape = b["shape"]
    serve_min, serve_max = b["serve"]
    pod_min, pod_max = b["pods"]
    if spec.disaggregation.enabled:
        fixed = spec.disaggregation.prefill_replicas + spec.disaggregation.decode_replicas
        assert pod_min == pod_max >= fixed
    else:
        # Replicas -> pods: a replica is one pod, several whole-VM pods, or shares a pod's GPU (fractions).
        hardware = spec.hardware
        per_pod = max(1, math.floor(1 / hardware.gpu_fraction)) if hardware.gpu_fraction else 1
        whole_gpus = shape.resource_name is not None and hardware.mig_profile is None and not hardware.gpu_fraction
        pods_per_replica = max(1, hardware.gpus_per_replica // shape.units_per_pod) if whole_gpus else 1
        assert pod_max == math.ceil(serve_max / per_pod) * pods_per_replica
        assert pod_min == math.ceil(serve_min / per_pod) * pods_per_replica
        assert (serve_min == 0) == spec.scaling.scale_to_zero.enabled
    assert (pod_min == 0) == (spec.scaling.scale_to_zero.enabled and not spec.disaggregation.enabled)
    if b["pool"] is None:
        return
    node_min, node_max = b["pool"]
    # The pool holds every pod the worker group may start: it never caps Serve's maximum by accident.
    # Whole pods per node: a pod cannot straddle two nodes, so GPUs (slices) left over on each node do not count.
    assert node_max * shape.pods_per_node >= pod_max
    if spec.scaling.scale_to_zero.enabled:
        assert node_min == 0
    managed = spec.hardware.node_pool.managed
    if managed is None or "min_nodes" not in managed.model_fields_set:
        assert node_min == shape.min_nodes
        assert node_min * shape.pods_per_node >= pod_min


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_three_layers_agree_for_every_example(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    assert_layers_agree(bounds(body))
    # The same example with scale-to-zero on (and no pinned floor): zero replicas, pods and nodes.
    if body["spec"].get("disaggregation", {}).get("enabled"):
        return
    zero = copy.deepcopy(body)
    scaling = zero["spec"].setdefault("scaling", {})
    scaling["scaleToZero"] = {"enabled": True, "idleSeconds": 300}
    scaling["minReplicas"] = 0
    managed = zero["spec"].get("hardware", {}).get("nodePool", {}).get("managed")
    if managed:
        managed.pop("minNodes", None)
    result = bounds(zero)
    assert_layers_agree(result)
    assert result["serve"][0] == result["pods"][0] == 0
    if result["pool"] is not None:
        assert result["pool"][0] == 0


def test_pool_floor_follows_min_replicas_without_scale_to_zero() -> None:
    body = yaml.safe_load((EXAMPLES[0].parent / "customer-assistant-70b-fp8.yaml").read_text())
    body["spec"]["scaling"].update(minReplicas=2, maxReplicas=4)
    body["spec"]["scaling"].pop("scaleToZero", None)
    managed = body["spec"]["hardware"].get("nodePool", {}).get("managed")
    if managed:
        managed.pop("minNodes", None)
    result = bounds(body)
    assert result["pool"] is not None
    assert result["pool"][0] == result["shape"].min_nodes >= 1


def test_pods_that_leave_part_of_a_node_free_get_one_node_each() -> None:
    # 6-GPU replicas (TP 2 x PP 3) on 8-GPU VMs: one pod per node, 2 GPUs idle. Counting GPUs instead of pods
    # (ceil(4 x 6 / 8) = 3 nodes) would leave the 4th replica Pending.
    body = yaml.safe_load((EXAMPLES[0].parent / "customer-assistant-70b-fp8.yaml").read_text())
    body["spec"]["engine"] = {"tensorParallelSize": 2, "pipelineParallelSize": 3}
    body["spec"]["hardware"] = {"vmSize": "Standard_ND96isr_H100_v5", "gpusPerReplica": 6}
    body["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 4}
    result = bounds(body)
    assert_layers_agree(result)
    assert result["shape"].pods_per_node == 1
    assert result["pool"] == (3, 4)


def pod_env(rayservice: dict[str, Any]) -> list[dict[str, str]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    envs = [group["template"]["spec"]["containers"][0]["env"] for group in groups]
    assert all(env == envs[0] for env in envs), "every pod, the head's fallback proxy included, gets the same env"
    return [entry for entry in envs[0] if entry["name"].startswith("TOKENPLANE_HOLD_")]


def test_the_hold_at_zero_reaches_the_fallback_proxys_env_only_with_scale_to_zero() -> None:
    example = EXAMPLES[0].parent / "frontier-moe-qwen3-235b.yaml"  # the example with scaleToZero on
    body = yaml.safe_load(example.read_text())
    body["spec"]["scaling"]["scaleToZero"] |= {"holdSeconds": 90, "maxHeldRequests": 12}
    state = build_desired_state(parse_inference_deployment(body), RenderConfig())
    assert pod_env(state.rayservice) == [
        {"name": "TOKENPLANE_HOLD_SECONDS", "value": "90"},
        {"name": "TOKENPLANE_HOLD_MAX_REQUESTS", "value": "12"},
        {"name": "TOKENPLANE_HOLD_APP", "value": state.serving_args.app_name},
    ]
    assert state.serving_args.scaling.hold is not None and state.serving_args.scaling.hold.seconds == 90
    body["spec"]["scaling"] |= {"minReplicas": 1, "scaleToZero": {"enabled": False}}
    state = build_desired_state(parse_inference_deployment(body), RenderConfig())
    assert pod_env(state.rayservice) == [] and state.serving_args.scaling.hold is None
