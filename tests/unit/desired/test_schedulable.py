"""Would it run on AKS: the checker over every example, over generated CRs, and one failing rendering per rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tokenplane_operator.api.v1alpha1 import MigProfile, Quantization, Visibility
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.schedulable import Peer, Problem, admits, check_schedulable
from tokenplane_operator.plan.allocatable import host_allocatable
from tokenplane_operator.plan.catalog import all_skus, find_sku
from tokenplane_operator.plan.errors import PlanError
from tokenplane_operator.plan.modelinfo import builtin_model_names
from tokenplane_operator.plan.validation import check_deployment

ROOT = Path(__file__).resolve().parents[3]
CASES = sorted((ROOT / "deploy" / "examples").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "data" / "render" / "input").glob("*.yaml")
)
CONFIG = RenderConfig()


def render(body: dict[str, Any], config: RenderConfig = CONFIG) -> DesiredState:
    return build_desired_state(parse_inference_deployment(body), config)


def example(name: str) -> DesiredState:
    return render(yaml.safe_load((ROOT / "deploy" / "examples" / f"{name}.yaml").read_text()))


def rules(problems: list[Problem]) -> set[str]:
    return {p.rule for p in problems}


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_every_example_would_schedule(path: Path) -> None:
    state = render(yaml.safe_load(path.read_text()))
    assert check_schedulable(state, CONFIG) == []


# --- generated CRs ----------------------------------------------------------------------------------------

_NAME = st.from_regex(r"\A[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,8}){0,2}\Z")
_SKUS = all_skus()


@st.composite
def hardware(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A hardware block and the engine TP/PP it implies, from the catalog and the API's enums."""
    vm_size = draw(st.one_of(st.just("auto"), st.sampled_from([s.vm_size for s in _SKUS])))  # auto: half
    sku = find_sku(vm_size)
    mode = draw(st.sampled_from(["whole", "mig", "fraction"]))
    hw: dict[str, Any] = {"vmSize": vm_size}
    engine: dict[str, Any] = {}
    if mode == "mig":
        offered = sorted(sku.mig_profiles) if sku else [m.value for m in MigProfile]
        assume(offered)
        hw["migProfile"] = draw(st.sampled_from(offered))
    elif mode == "fraction":
        hw["gpuFraction"] = draw(st.sampled_from([0.25, 0.3, 0.5]))
    elif sku is not None:
        count = sku.gpu_count
        options = [g for g in (1, 2, 4, 8) if g <= count and count % g == 0]
        options += [count * k for k in (2, 3) if sku.nvlink]
        gpus = draw(st.sampled_from(options))
        tp = min(gpus, count)
        hw["gpusPerReplica"] = gpus
        engine = {"tensorParallelSize": tp, "pipelineParallelSize": gpus // tp}
    if draw(st.booleans()):
        hw["spot"] = {"enabled": True}
    hw["zones"] = draw(st.lists(st.sampled_from(["1", "2", "3"]), unique=True, max_size=2))
    if draw(st.integers(0, 4)) == 0:
        hw["nodePool"] = {"existing": {"nodeSelector": {"agentpool": draw(_NAME)[:12]}}}
    elif draw(st.booleans()):
        hw["nodePool"] = {"managed": {"minNodes": draw(st.integers(0, 2))}}
    return hw, engine


@st.composite
def deployments(draw: st.DrawFn) -> dict[str, Any]:
    """A CR body: every enum and bound from the API models, placement from the catalog."""
    hw, engine = draw(hardware())
    min_replicas = draw(st.integers(0, 3))
    return {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": draw(_NAME), "namespace": draw(_NAME)},
        "spec": {
            "model": {
                "source": "hf://" + draw(st.sampled_from(builtin_model_names())),
                "maxModelLen": draw(st.sampled_from([1024, 4096, 8192, 32768])),
                "quantization": draw(st.sampled_from([Quantization.NONE.value, Quantization.FP8.value])),
            },
            "engine": engine,
            "hardware": hw,
            "scaling": {"minReplicas": min_replicas, "maxReplicas": min_replicas + draw(st.integers(1, 6))},
            "endpoint": {
                "visibility": draw(st.sampled_from([v.value for v in Visibility])),
                "allowedNamespaces": draw(st.lists(_NAME, max_size=3, unique=True)),
                "port": draw(st.sampled_from([80, 8000, 8080])),
            },
        },
    }


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(deployments())
def test_generated_crs_would_schedule(body: dict[str, Any]) -> None:
    try:
        deployment = parse_inference_deployment(body)
    except InvalidSpecError:
        assume(False)
        raise
    assume(not check_deployment(deployment))
    # Managed pools get an OS disk sized for the weights; bring-your-own nodes are sized by their owner, who
    # tells the operator (TOKENPLANE_NODE_OS_DISK_GIB): these nodes have the largest managed OS disk.
    config = RenderConfig(node_os_disk_gib=2048) if deployment.spec.hardware.node_pool.existing else CONFIG
    try:
        state = build_desired_state(deployment, config)
    except PlanError:
        assume(False)  # refused with a clear reason (does not fit, unknown size): nothing is rendered
        raise
    hw = body["spec"]["hardware"]
    event(f"vmSize {'auto' if hw['vmSize'] == 'auto' else 'explicit'}, plan {state.plan.mig_profile or 'whole'}")
    problems = check_schedulable(state, config)
    assert problems == [], "\n".join(map(str, problems))


# --- each rule can fail -----------------------------------------------------------------------------------


def with_rayservice(state: DesiredState, edit: Any) -> DesiredState:
    rayservice = copy.deepcopy(state.rayservice)
    edit(rayservice["spec"])
    return state.model_copy(update={"rayservice": rayservice})


def worker_container(spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = spec["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    return container


def test_fits_fails_when_workers_ask_more_than_the_node_has() -> None:
    # The case: a 4-vCPU / 28 GiB T4 VM with workers asking 6 CPUs and 48 GiB (the old fixed sizes).
    body = {"apiVersion": "tokenplane.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": "t4", "namespace": "ai"},
            "spec": {"model": {"source": "hf://google/gemma-2-2b-it"},
                     "hardware": {"vmSize": "Standard_NC4as_T4_v3"}}}  # fmt: skip
    state = render(body)
    assert check_schedulable(state, CONFIG) == []

    def old_sizes(spec: dict[str, Any]) -> None:
        worker_container(spec)["resources"]["requests"].update(cpu="6", memory="48Gi")

    problems = check_schedulable(with_rayservice(state, old_sizes), CONFIG)
    assert rules(problems) == {"fits"}
    assert "cpu 6 = 6 exceeds the allocatable 2.86" in str(problems[0])


def test_fits_counts_the_autoscaler_container_kuberay_adds_to_the_head() -> None:
    # In-tree autoscaling: KubeRay appends a 500m / 512Mi autoscaler container to the head pod
    # (ray-operator/controllers/ray/common/pod.go, BuildAutoscalerContainer). A 2.5-CPU head alone fits the
    # 2.86 allocatable CPUs of a D4ds_v5 system node; with the sidecar the pod asks 3.
    config = RenderConfig(head_cpu="2.5", system_node_vm_size="Standard_D4ds_v5")
    state = render(yaml.safe_load((ROOT / "deploy" / "examples" / "byo-nodes.yaml").read_text()), config)
    assert state.rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    (problem,) = check_schedulable(state, config)
    assert problem.rule == "fits"
    assert problem.where.endswith(".headGroupSpec.template.spec.containers[ray-head].resources")
    assert "cpu 3 = 3 exceeds the allocatable 2.86" in problem.message and "autoscaler" in problem.message
    # The default head (300m + 0.5) fits.
    assert check_schedulable(example("byo-nodes"), CONFIG) == []

    def smaller_sidecar(spec: dict[str, Any]) -> None:  # autoscalerOptions.resources replaces KubeRay's
        spec["rayClusterConfig"]["autoscalerOptions"] = {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}

    assert check_schedulable(with_rayservice(state, smaller_sidecar), config) == []

    def no_autoscaler(spec: dict[str, Any]) -> None:
        spec["rayClusterConfig"]["enableInTreeAutoscaling"] = False

    assert check_schedulable(with_rayservice(state, no_autoscaler), config) == []


def test_the_default_head_fits_a_two_vcpu_system_node() -> None:
    # Standard_D2s_v3 (2 vCPUs, 8 GiB): 0.9 CPU and 3.90 GiB allocatable after AKS's reservations and the DaemonSet
    # budget. The old head (2 CPUs, 8Gi) never scheduled there.
    d2 = RenderConfig(system_node_vm_size="Standard_D2s_v3")
    assert d2.system_node() == host_allocatable(2, 8.0)
    state = example("byo-nodes")
    head = state.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"] == {"requests": {"cpu": "300m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    assert check_schedulable(state, d2) == []
    old = RenderConfig(head_cpu="2", head_memory="8Gi", system_node_vm_size="Standard_D2s_v3")
    problems = check_schedulable(render(yaml.safe_load((ROOT / "deploy/examples/byo-nodes.yaml").read_text()), old),
                                 old)  # fmt: skip
    assert [p.where for p in problems] == [
        "RayService/byo .headGroupSpec.template.spec.containers[ray-head].resources"
    ] * 2
    assert "cpu 2.5 = 2.5 exceeds the allocatable 0.90 of a system node (Standard_D2s_v3)" in problems[0].message
    assert "memory 8.5 GiB = 8.5 GiB exceeds the allocatable 3.90 GiB" in problems[1].message
    assert all("TOKENPLANE_HEAD_CPU" in p.message and "serving.head.cpu" in p.message for p in problems)
    assert all("serving.head.systemNodeVmSize" in p.message for p in problems)


def test_the_system_node_size_is_what_the_head_must_fit() -> None:
    # 2 CPUs + the autoscaler's 500m: more than a D2s_v3's 0.9 allocatable, less than a D4ds_v5's 2.86.
    body = yaml.safe_load((ROOT / "deploy/examples/byo-nodes.yaml").read_text())
    small = RenderConfig(head_cpu="2", system_node_vm_size="Standard_D2s_v3")
    assert [p.rule for p in check_schedulable(render(body, small), small)] == ["fits"]
    larger = RenderConfig(head_cpu="2", system_node_vm_size="standard_d4ds_v5")  # AKS sizes are case-insensitive
    assert larger.system_node().cpu_millis == 2860
    assert check_schedulable(render(body, larger), larger) == []
    # The default refuses no head the fixed check passed before: the 2-CPU / 8Gi one docs/rollouts.md pins on upgrade.
    pinned = RenderConfig(head_cpu="2", head_memory="8Gi")
    assert check_schedulable(render(body, pinned), pinned) == []
    with pytest.raises(ValueError, match="unknown VM size 'Standard_D3_nope'"):
        RenderConfig(system_node_vm_size="Standard_D3_nope")


def test_fits_counts_every_pod_a_mig_node_holds() -> None:
    state = example("internal-copilot-mig")  # H100 NVL, MIG3g: two slices, two pods per node

    def a_bit_more(spec: dict[str, Any]) -> None:
        requests = worker_container(spec)["resources"]["requests"]
        requests["memory"] = f"{int(requests['memory'].removesuffix('Gi')) + 10}Gi"

    problems = check_schedulable(with_rayservice(state, a_bit_more), CONFIG)
    assert rules(problems) == {"fits"} and "2 pod(s) x memory" in str(problems[0])


def test_gpu_resource_fails_for_a_mig_profile_the_size_lacks() -> None:
    state = example("internal-copilot-mig")

    def a100_profile(spec: dict[str, Any]) -> None:
        limits = worker_container(spec)["resources"]["limits"]
        del limits["nvidia.com/mig-3g.47gb"]
        limits["nvidia.com/mig-3g.40gb"] = "1"  # an A100 80GB profile, not an H100 NVL one

    problems = check_schedulable(with_rayservice(state, a100_profile), CONFIG)
    assert "gpu-resource" in rules(problems)
    assert "offers nvidia.com/mig-3g.47gb: 2" in " ".join(map(str, problems))


def test_parallelism_fails_when_tp_differs_from_the_replica_gpus() -> None:
    state = example("customer-assistant-70b-fp8")  # TP 4 on 4 GPUs

    def tp1(spec: dict[str, Any]) -> None:
        config = yaml.safe_load(spec["serveConfigV2"])
        config["applications"][0]["args"]["engine"]["tensor_parallel_size"] = 1
        spec["serveConfigV2"] = yaml.safe_dump(config)

    problems = check_schedulable(with_rayservice(state, tp1), CONFIG)
    assert rules(problems) == {"parallelism"}
    assert "TP 1 x PP 1 = 1 but a replica holds 4" in " ".join(map(str, problems))


def test_parallelism_fails_when_status_plan_is_not_what_is_rendered() -> None:
    state = example("customer-assistant-70b-fp8")
    lying = state.model_copy(update={"plan": state.plan.model_copy(update={"tensor_parallel_size": 1})})
    assert [p.where for p in check_schedulable(lying, CONFIG)] == ["status.plan"]


def test_placement_fails_without_the_gpu_toleration() -> None:
    state = example("department-lora")

    def no_tolerations(spec: dict[str, Any]) -> None:
        del spec["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"]

    problems = check_schedulable(with_rayservice(state, no_tolerations), CONFIG)
    assert rules(problems) == {"placement"} and "sku=gpu:NoSchedule" in str(problems[0])


def test_placement_the_head_schedules_on_a_system_pool_tainted_critical_addons_only() -> None:
    # AKS system pools may carry CriticalAddonsOnly=true:NoSchedule and GPU pools their own taint: the head,
    # without a toleration for it, had no node to land on.
    state = example("department-lora")
    assert check_schedulable(state, CONFIG) == []

    def head_without_tolerations(spec: dict[str, Any]) -> None:
        del spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["tolerations"]

    problems = check_schedulable(with_rayservice(state, head_without_tolerations), CONFIG)
    assert rules(problems) == {"placement"} and "CriticalAddonsOnly=true:NoSchedule" in str(problems[0])
    assert ".headGroupSpec" in problems[0].where


def test_placement_fails_when_byo_spot_workers_do_not_tolerate_the_spot_taint() -> None:
    body = yaml.safe_load((ROOT / "tests" / "data" / "render" / "input" / "byo-private-pvc.yaml").read_text())
    body["spec"]["hardware"]["spot"] = {"enabled": True}
    state = render(body)
    assert check_schedulable(state, CONFIG) == []

    def users_list_only(spec: dict[str, Any]) -> None:
        pod = spec["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
        pod["tolerations"] = [t for t in pod["tolerations"] if t["key"] != "kubernetes.azure.com/scalesetpriority"]

    problems = check_schedulable(with_rayservice(state, users_list_only), CONFIG)
    assert rules(problems) == {"placement"} and "scalesetpriority=spot:NoSchedule" in str(problems[0])


def test_placement_fails_when_the_selector_names_another_pool() -> None:
    state = example("department-lora")

    def other_pool(spec: dict[str, Any]) -> None:
        spec["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"] = {
            "tokenplane.io/pool": "elsewhere"
        }

    assert rules(check_schedulable(with_rayservice(state, other_pool), CONFIG)) == {"placement"}


def test_names_fail_past_kubernetes_limits() -> None:
    state = example("department-lora")
    rayservice = copy.deepcopy(state.rayservice)
    rayservice["metadata"]["name"] = "a" * 50
    problems = check_schedulable(state.model_copy(update={"rayservice": rayservice}), CONFIG)
    assert rules(problems) == {"names"}
    assert {p.where for p in problems} == {"RayService", "RayCluster head Service"}


def test_service_fails_when_it_selects_no_serving_pod() -> None:
    state = example("department-lora")
    service = copy.deepcopy(state.service)
    service["spec"]["selector"]["app"] = "nothing-has-this"
    service["spec"]["ports"][0]["targetPort"] = 9000
    problems = check_schedulable(state.model_copy(update={"service": service}), CONFIG)
    assert rules(problems) == {"service"} and len(problems) == 2


def test_network_fails_for_an_open_range_on_a_private_endpoint() -> None:
    # The case: `ipBlock 0.0.0.0/0` on private endpoints voided allowedNamespaces.
    state = example("customer-assistant-70b-fp8")
    policy = copy.deepcopy(state.network_policy)
    policy["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8000}]})
    problems = check_schedulable(state.model_copy(update={"network_policy": policy}), CONFIG)
    assert rules(problems) == {"network"}
    assert "admits a flow nothing needs to the head: outside address 203.0.113.7 -> serve" in map(
        lambda p: p.message, problems
    )


def test_network_fails_when_kuberay_runs_elsewhere_than_the_policy_says() -> None:
    # The case: the namespace was hard-coded while KubeRay ran in another one.
    state = example("department-lora")
    elsewhere = CONFIG.model_copy(update={"kuberay_namespace": "ray-system"})
    problems = check_schedulable(state, elsewhere)
    assert "refuses a needed flow to the head: KubeRay (ray-system) -> 8265" in [p.message for p in problems]
    assert check_schedulable(render_with(elsewhere, "department-lora"), elsewhere) == []


def render_with(config: RenderConfig, name: str) -> DesiredState:
    return render(yaml.safe_load((ROOT / "deploy" / "examples" / f"{name}.yaml").read_text()), config)


def test_network_fails_for_an_allow_all_rule() -> None:
    state = example("department-lora")
    policy = copy.deepcopy(state.network_policy)
    policy["spec"]["ingress"].append({})
    problems = check_schedulable(state.model_copy(update={"network_policy": policy}), CONFIG)
    assert problems and rules(problems) == {"network"}
    assert all("admits a flow nothing needs" in p.message for p in problems)


def test_network_fails_when_the_policy_selects_other_pods() -> None:
    state = example("department-lora")
    policy = copy.deepcopy(state.network_policy)
    policy["spec"]["podSelector"] = {"matchLabels": {"tokenplane.io/deployment": "someone-else"}}
    problems = check_schedulable(state.model_copy(update={"network_policy": policy}), CONFIG)
    assert {p.message for p in problems} == {
        "does not select the head pods: they would be open to all",
        "does not select the gpu pods: they would be open to all",
    }


# --- the evaluator's semantics ----------------------------------------------------------------------------


def policy(ingress: list[dict[str, Any]], namespace: str = "ai", types: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "ray"}}, "ingress": ingress}
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"namespace": namespace}, "spec": spec}


def allowed(policies: list[dict[str, Any]], source: Peer, port: int = 8000) -> bool:
    return admits(policies, namespace="ai", pod_labels={"app": "ray"}, source=source, port=port)


def test_evaluator_unselected_pods_and_egress_only_policies_admit_everything() -> None:
    assert allowed([], Peer("x"))
    assert allowed([policy([], types=["Egress"])], Peer("x"))
    assert not allowed([policy([])], Peer("x"))  # selected, no rules: isolated


def test_evaluator_pod_selector_alone_means_the_policy_namespace() -> None:
    rules_ = [{"from": [{"podSelector": {"matchLabels": {"app": "ray"}}}]}]
    assert allowed([policy(rules_)], Peer("ai", {"app": "ray"}))
    assert not allowed([policy(rules_)], Peer("other", {"app": "ray"}))


def test_evaluator_namespace_and_pod_selector_in_one_peer_are_anded() -> None:
    scraper = {"key": "role", "operator": "In", "values": ["scraper"]}
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchExpressions": [scraper]}}  # fmt: skip
    assert allowed([policy([{"from": [peer]}])], Peer("ops", {"role": "scraper"}))
    assert not allowed([policy([{"from": [peer]}])], Peer("ops", {"role": "other"}))
    assert not allowed([policy([{"from": [peer]}])], Peer("ai", {"role": "scraper"}))


def test_evaluator_ports_and_ip_blocks() -> None:
    rule = {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8010}]}  # fmt: skip
    assert allowed([policy([rule])], Peer(ip="10.2.3.4"), 8005)
    assert not allowed([policy([rule])], Peer(ip="10.1.3.4"), 8005)
    assert not allowed([policy([rule])], Peer(ip="10.2.3.4"), 8265)
    assert not allowed([policy([rule])], Peer("ai"), 8000)  # ipBlock never matches by namespace
