"""Downloaded weights count in the workers' disk: request, Blob volume size, pool OS disk, and the checker."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.agentpool import ObservedAgentPool, needs_replacement, os_disk_tier, to_arm_body
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.schedulable import check_schedulable, parse_quantity
from tokenplane_operator.plan.catalog import GIB
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
CONFIG = RenderConfig()
A100 = "Standard_NC48ads_A100_v4"  # 2 x A100 80 GB


def _body(model: str, **hardware: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"source": model, "maxModelLen": 4096},
            "hardware": {"vmSize": "auto", **hardware},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


def _render(body: dict[str, Any], config: RenderConfig = CONFIG) -> DesiredState:
    return build_desired_state(parse_inference_deployment(body), config)


def _worker(state: DesiredState) -> dict[str, Any]:
    (group,) = state.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    spec: dict[str, Any] = group["template"]["spec"]
    return spec


def _ephemeral_gib(state: DesiredState) -> float:
    requests = _worker(state)["containers"][0]["resources"]["requests"]
    return parse_quantity(requests["ephemeral-storage"]) / GIB


def _blob_volume(state: DesiredState) -> dict[str, Any]:
    (volume,) = [v for v in _worker(state)["volumes"] if v["name"] == "blob-downloads"]
    return volume


def test_70b_worker_requests_disk_for_its_weights_and_its_pool_gets_a_bigger_os_disk() -> None:
    state = _render(_body("hf://meta-llama/Llama-3.1-70B-Instruct"))
    weights = state.plan.weights_bytes
    assert weights is not None and weights > 130 * GIB  # bf16: 2 bytes x 70.6 B parameters
    weights_gib = math.ceil(1.1 * weights / GIB)
    # The base share (20 GiB: logs, Ray's session dir) plus 110% of the weights.
    assert _ephemeral_gib(state) == CONFIG.worker_ephemeral_storage_gib + weights_gib
    # One 2-GPU worker per node needs ~165 GiB: more than 90% of AKS's 128 GiB default, so the next tier.
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb == 256
    assert to_arm_body(state.agent_pool)["properties"]["osDiskSizeGB"] == 256
    assert check_schedulable(state, CONFIG) == []


def test_department_lora_example_sizes_its_blob_download() -> None:
    state = _render(yaml.safe_load((EXAMPLES / "department-lora.yaml").read_text()))
    assert state.plan.weights_bytes is not None  # Llama-3.1-8B, found by name in the Blob path
    weights_gib = math.ceil(1.1 * state.plan.weights_bytes / GIB)
    assert weights_gib == 17  # 16.1 GB of bf16 weights
    assert _blob_volume(state)["emptyDir"] == {"sizeLimit": "17Gi"}  # the kubelet evicts past it
    assert _ephemeral_gib(state) == 20 + 17
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb is None  # fits the default disk


def test_a_tiny_model_adds_little_and_keeps_the_default_disk() -> None:
    state = _render(_body("hf://google/gemma-2-2b-it", vmSize=A100))
    assert state.plan.weights_bytes is not None
    assert _ephemeral_gib(state) == 20 + math.ceil(1.1 * state.plan.weights_bytes / GIB) == 26  # 5.2 GB of bf16
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb is None
    assert "osDiskSizeGB" not in to_arm_body(state.agent_pool)["properties"]


def test_pvc_weights_are_read_in_place_and_add_nothing() -> None:
    state = _render(yaml.safe_load((EXAMPLES / "byo-nodes.yaml").read_text()))
    assert _ephemeral_gib(state) == CONFIG.worker_ephemeral_storage_gib


def test_checker_refuses_weights_larger_than_the_configured_node_disk() -> None:
    # Bring-your-own nodes keep the operator's OS disk setting (128 GiB): a 70B bf16 download cannot fit.
    body = _body("hf://meta-llama/Llama-3.1-70B-Instruct", vmSize=A100, gpusPerReplica=2)
    body["spec"]["hardware"]["nodePool"] = {"existing": {"nodeSelector": {"agentpool": "gpu"}}}
    body["spec"]["engine"] = {"tensorParallelSize": 2}
    state = _render(body)
    (problem,) = check_schedulable(state, CONFIG)
    assert problem.rule == "fits" and "workerGroupSpecs[gpu]" in problem.where
    assert "ephemeral-storage" in problem.message and "TOKENPLANE_NODE_OS_DISK_GIB" in problem.message
    assert "osDiskSizeGB" in problem.message
    # The same nodes with a 256 GiB OS disk, told to the operator: it fits.
    bigger = RenderConfig(node_os_disk_gib=256)
    assert check_schedulable(_render(body, bigger), bigger) == []


def test_checker_refuses_a_request_that_does_not_count_the_weights() -> None:
    state = _render(_body("hf://meta-llama/Llama-3.1-70B-Instruct"))
    broken = copy.deepcopy(state.rayservice)
    (group,) = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    group["template"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] = "20Gi"
    problems = check_schedulable(state.model_copy(update={"rayservice": broken}), CONFIG)
    assert [p.where.rsplit(" ", 1)[1] for p in problems] == [
        ".workerGroupSpecs[gpu].template.spec.containers[ray-worker].resources.requests.ephemeral-storage"
    ]


def test_checker_refuses_an_unbounded_or_too_small_blob_volume() -> None:
    state = _render(yaml.safe_load((EXAMPLES / "department-lora.yaml").read_text()))
    broken = copy.deepcopy(state.rayservice)
    (group,) = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (volume,) = [v for v in group["template"]["spec"]["volumes"] if v["name"] == "blob-downloads"]
    volume["emptyDir"]["sizeLimit"] = "1Gi"
    (problem,) = check_schedulable(state.model_copy(update={"rayservice": broken}), CONFIG)
    assert problem.where.endswith(".volumes[blob-downloads].emptyDir.sizeLimit")


def test_weights_no_os_disk_holds_are_refused_with_the_field() -> None:
    # 405B at bf16 (~830 GiB with headroom) on 8 one-GPU workers of one ND96 node: 8 downloads, ~6.8 TiB.
    body = _body("hf://meta-llama/Llama-3.1-405B", vmSize="Standard_ND96isr_H100_v5", gpuFraction=0.5)
    with pytest.raises(PlanError) as err:
        _render(body)
    assert err.value.reason is PlanErrorReason.DOES_NOT_FIT
    assert "spec.model.source" in str(err.value) and "pvc://" in str(err.value)


@pytest.mark.parametrize(
    ("needed", "tier"), [(0, None), (115, None), (116, 256), (230, 256), (231, 512), (1843, 2048), (1844, None)]
)
def test_os_disk_tiers(needed: float, tier: int | None) -> None:
    assert os_disk_tier(needed, 128) == tier


def test_os_disk_size_cannot_change_in_place() -> None:
    state = _render(_body("hf://meta-llama/Llama-3.1-70B-Instruct"))
    assert state.agent_pool is not None
    body = to_arm_body(state.agent_pool)
    body["properties"]["osDiskSizeGB"] = 128
    observed = ObservedAgentPool.from_arm({"name": state.agent_pool.name, **body})
    assert observed.os_disk_size_gb == 128
    assert needs_replacement(state.agent_pool, observed) == "osDiskSizeGB cannot change in place (128 -> 256)"


# --- online quantization: the checkpoint is downloaded as stored ------------------------------------------


def test_fp8_on_a_bf16_checkpoint_sizes_disk_for_the_bf16_download() -> None:
    # customer-assistant: Llama-3.1-70B, quantization fp8 (online: vLLM downloads the bf16 safetensors and
    # quantizes while loading), TP 4 on an 8-GPU ND H100 v5 node, so 2 workers per node.
    state = _render(yaml.safe_load((EXAMPLES / "customer-assistant-70b-fp8.yaml").read_text()))
    assert state.plan.weights_bytes is not None and state.plan.weights_bytes < 70 * GIB  # the GPUs hold fp8
    weights_gib = math.ceil(1.1 * 2 * 70.55e9 / GIB)  # 70.55 B parameters in bf16, with 10% headroom
    assert weights_gib == 145  # was 75: sized at fp8
    assert _ephemeral_gib(state) == 20 + 145 == 165  # was 95Gi
    # 2 x 165 GiB: more than 90% of 256 GiB (was the tier), within 90% of 512.
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb == 512
    assert check_schedulable(state, CONFIG) == []


def test_fp8_on_a_bf16_235b_moe_gets_the_1024_gib_os_disk() -> None:
    state = _render(yaml.safe_load((EXAMPLES / "frontier-moe-qwen3-235b.yaml").read_text()))
    assert _ephemeral_gib(state) == 20 + math.ceil(1.1 * 2 * 235e9 / GIB) == 502  # was 263Gi
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb == 1024  # was 512
    assert check_schedulable(state, CONFIG) == []


def test_fp8_70b_on_one_h100_nvl_gets_the_256_gib_os_disk() -> None:
    body = _body("hf://meta-llama/Llama-3.1-70B-Instruct", vmSize="Standard_NC40ads_H100_v5")
    body["spec"]["model"]["quantization"] = "fp8"
    state = _render(body)
    assert _ephemeral_gib(state) == 165  # was 95Gi, on AKS's 128 GB default disk: ENOSPC mid-download
    assert state.agent_pool is not None and state.agent_pool.os_disk_size_gb == 256


def test_a_checkpoint_stored_in_fp8_downloads_its_fp8_bytes() -> None:
    # DeepSeek-V3 ships FP8 weights: serving it in fp8 downloads the checkpoint as it is, ~1 byte per parameter.
    body = _body("hf://deepseek-ai/DeepSeek-V3", vmSize="Standard_ND96isr_H200_v5", gpusPerReplica=8)
    body["spec"]["engine"] = {"tensorParallelSize": 8}
    plain = _render(body)
    body["spec"]["model"]["quantization"] = "fp8"
    fp8 = _render(body)
    assert plain.plan.weights_bytes == fp8.plan.weights_bytes
    assert _ephemeral_gib(plain) == _ephemeral_gib(fp8) == 20 + math.ceil(1.1 * fp8.plan.weights_bytes / GIB)


def test_checker_counts_the_checkpoint_not_the_serving_precision() -> None:
    # A rendering that requests disk for the fp8 bytes only (the bug) is reported.
    state = _render(yaml.safe_load((EXAMPLES / "customer-assistant-70b-fp8.yaml").read_text()))
    broken = copy.deepcopy(state.rayservice)
    (group,) = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    group["template"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] = "95Gi"
    (problem,) = check_schedulable(state.model_copy(update={"rayservice": broken}), CONFIG)
    assert problem.where.endswith("requests.ephemeral-storage")
    assert "95 GiB does not hold the 144.6 GiB of weights the pod downloads" in problem.message


def test_an_online_quantized_download_no_disk_holds_is_refused_saying_why() -> None:
    # 405B in fp8 (~405 GB on the GPUs) on the 8 one-GPU workers of one ND96 node: each downloads ~810 GB of bf16.
    body = _body("hf://meta-llama/Llama-3.1-405B", vmSize="Standard_ND96isr_H100_v5", gpuFraction=0.5)
    body["spec"]["model"]["quantization"] = "fp8"
    with pytest.raises(PlanError) as err:
        _render(body)
    assert err.value.reason is PlanErrorReason.DOES_NOT_FIT
    message = str(err.value)
    assert "spec.model.source" in message and "pvc://" in message
    assert "quantization fp8 is applied while loading" in message and "already quantized" in message
