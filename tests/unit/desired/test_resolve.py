"""One resolved plan drives everything: pool, worker group, engine TP/PP and status.plan say the same."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.plan.allocatable import (
    kube_reserved_cpu_millis,
    kube_reserved_memory_bytes,
    node_allocatable,
)
from tokenplane_operator.plan.catalog import GIB, all_skus, find_sku

CONFIG = RenderConfig()


def render(spec: dict[str, Any]) -> DesiredState:
    body = {"apiVersion": "tokenplane.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": "m", "namespace": "ai"}, "spec": spec}  # fmt: skip
    return build_desired_state(parse_inference_deployment(body), CONFIG)


def worker(state: DesiredState) -> dict[str, Any]:
    group: dict[str, Any] = state.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return group


def engine(state: DesiredState) -> dict[str, Any]:
    config = yaml.safe_load(state.rayservice["spec"]["serveConfigV2"])
    args: dict[str, Any] = config["applications"][0]["args"]["engine"]
    return args


def test_70b_auto_gets_the_planned_tp_and_gpus_everywhere() -> None:
    # The case: status said NC48ads A100 with TP 2 on 2 GPUs while the worker asked for 1 GPU at TP 1.
    state = render({"model": {"source": "hf://meta-llama/Llama-3.1-70B-Instruct", "maxModelLen": 8192}})
    plan = state.plan
    assert plan.vm_size == "Standard_NC48ads_A100_v4" and plan.tensor_parallel_size == 2
    assert state.agent_pool is not None and state.agent_pool.vm_size == plan.vm_size
    limits = worker(state)["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(int(plan.gpus_per_replica or 0)) == "2"
    assert engine(state)["tensor_parallel_size"] == plan.tensor_parallel_size
    assert engine(state).get("pipeline_parallel_size", 1) == plan.pipeline_parallel_size
    assert worker(state)["rayStartParams"]["num-gpus"] == "2"


def test_auto_mig_plan_renders_the_mig_pool_and_resource() -> None:
    state = render({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096}})
    plan = state.plan
    assert state.agent_pool is not None
    assert state.agent_pool.mig_profile == plan.mig_profile
    limits = worker(state)["template"]["spec"]["containers"][0]["resources"]["limits"]
    if plan.mig_profile:
        sku = find_sku(plan.vm_size or "")
        assert sku is not None
        assert limits == {sku.mig_profiles[plan.mig_profile].resource_name: "1", "memory": limits["memory"]}
    else:
        assert limits["nvidia.com/gpu"] == str(int(plan.gpus_per_replica or 0))


def test_fraction_with_auto_never_gets_a_mig_profile() -> None:
    state = render({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
                    "hardware": {"gpuFraction": 0.5}})  # fmt: skip
    assert state.plan.mig_profile is None and state.agent_pool is not None and state.agent_pool.mig_profile is None
    assert state.plan.gpus_per_replica == 0.5


@pytest.mark.parametrize("sku", all_skus(), ids=lambda s: s.vm_size)
def test_every_catalog_size_has_host_capacity_and_leaves_most_of_it_allocatable(sku: Any) -> None:
    node = node_allocatable(sku)
    assert sku.vcpus >= 4 and sku.memory_gib >= 28, "host vCPUs and RAM come from the catalog"
    assert 0.7 * sku.vcpus * 1000 < node.cpu_millis < sku.vcpus * 1000
    assert 0.7 * sku.memory_gib * GIB < node.memory_bytes < sku.memory_gib * GIB


def test_aks_reservation_formula_matches_the_documented_examples() -> None:
    # learn.microsoft.com/azure/aks/node-resource-reservations: the CPU table, and the memory examples.
    assert [kube_reserved_cpu_millis(c) for c in (1, 2, 4, 8, 16, 32, 64)] == [60, 100, 140, 180, 260, 420, 740]
    assert kube_reserved_cpu_millis(24) == 340 and kube_reserved_cpu_millis(96) == 1060
    mb = 10**6
    # 8 GB VM, 30 max pods: 20 MB x 30 + 50 MB = 650 MB kube-reserved, plus the 100 Mi eviction threshold.
    assert kube_reserved_memory_bytes(8000 * mb, max_pods=30) == 650 * mb + 100 * (1 << 20)
    # 4 GB VM, 70 max pods: 25% of 4 GB = 1000 MB is smaller than 1450 MB.
    assert kube_reserved_memory_bytes(4000 * mb, max_pods=70) == 1000 * mb + 100 * (1 << 20)
