"""Render golden files: CR -> ARM agent pool + RayService + Service + NetworkPolicy, checked against real schemas.

Rewrite the golden files after an intended change with `pytest tests/unit/desired/test_render_golden.py --update-golden`
and review the diff.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.crd_schema import crd_validator
from tokenplane_cli.render import render_command, render_files
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.agentpool import POOL_LABEL, SPOT_TAINT
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.naming import CLUSTER_HASH_ANNOTATION, SPEC_HASH_ANNOTATION, spec_hash
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_serving.args import ServingArgs

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
INPUTS = {f"example-{p.stem}": p for p in sorted((ROOT / "deploy" / "examples").glob("*.yaml"))} | {
    p.stem: p for p in sorted((DATA / "render" / "input").glob("*.yaml"))
}
CONFIG = RenderConfig()


def load(path: Path) -> InferenceDeployment:
    return parse_inference_deployment(yaml.safe_load(path.read_text()))


def desired(path: Path, **changes: Any) -> DesiredState:
    body = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = body
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return build_desired_state(parse_inference_deployment(body), CONFIG)


def rayservice(state: DesiredState) -> dict[str, Any]:
    return state.rayservice


def worker(state: DesiredState) -> dict[str, Any]:
    group: dict[str, Any] = state.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return group


def worker_container(state: DesiredState) -> dict[str, Any]:
    container: dict[str, Any] = worker(state)["template"]["spec"]["containers"][0]
    return container


# --- golden files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_render_matches_golden(name: str, update_golden: bool) -> None:
    files = render_files(build_desired_state(load(INPUTS[name]), CONFIG))
    out = DATA / "render" / "output" / name
    if update_golden:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.iterdir():
            stale.unlink()
        for file, content in files.items():
            (out / file).write_text(content)
    assert out.is_dir(), f"no golden output for {name}; run pytest with --update-golden"
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for file, content in files.items():
        assert (out / file).read_text() == content, f"{name}/{file} differs; run --update-golden and review"


def test_every_gpu_example_renders_a_pool_or_uses_existing_nodes() -> None:
    for name, path in INPUTS.items():
        deployment = load(path)
        state = build_desired_state(deployment, CONFIG)
        if deployment.spec.hardware.accelerator.value == "cpu" or deployment.spec.hardware.node_pool.existing:
            assert state.agent_pool is None, name
        else:
            assert state.agent_pool is not None, name


# --- schemas ---------------------------------------------------------------------------------------------


def rayservice_validator() -> jsonschema.Draft7Validator:
    return crd_validator(DATA / "kuberay" / "ray.io_rayservices.yaml", "RayService", "v1")


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_rayservice_validates_against_kuberay_crd(name: str) -> None:
    obj = build_desired_state(load(INPUTS[name]), CONFIG).rayservice
    errors = sorted(rayservice_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_is_strict() -> None:
    obj = copy.deepcopy(build_desired_state(load(INPUTS["example-byo-nodes"]), CONFIG).rayservice)
    obj["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert list(rayservice_validator().iter_errors(obj))


def _as_pods(state: DesiredState) -> list[dict[str, Any]]:
    cluster = state.rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {**t["metadata"], "name": f"pod-{i}"}, "spec": t["spec"]}
        for i, t in enumerate(templates)
    ]


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_core_objects_validate_with_kubernetes_validate(name: str) -> None:
    state = build_desired_state(load(INPUTS[name]), CONFIG)
    for obj in [state.service, state.network_policy, *_as_pods(state)]:
        kubernetes_validate.validate(obj, "1.33", strict=True)


# --- semantics -------------------------------------------------------------------------------------------


def test_mig_example_requests_the_h100_nvl_3g_slice() -> None:
    state = desired(INPUTS["example-internal-copilot-mig"])
    limits = worker_container(state)["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.47gb"] == "1"
    assert "nvidia.com/gpu" not in limits
    assert worker(state)["rayStartParams"]["num-gpus"] == "1"  # KubeRay does not count MIG resources itself
    assert state.agent_pool is not None and state.agent_pool.mig_profile == "MIG3g"
    assert state.agent_pool.max_count == 2  # CR maxNodes


def test_spot_workers_tolerate_the_spot_taint_and_select_the_pool() -> None:
    state = desired(INPUTS["example-code-completion-speculative"])
    spec = worker(state)["template"]["spec"]
    assert {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
            "effect": "NoSchedule"} in spec["tolerations"]  # fmt: skip
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in spec["tolerations"]
    assert state.agent_pool is not None and SPOT_TAINT in state.agent_pool.effective_taints
    assert spec["nodeSelector"] == {POOL_LABEL: state.agent_pool.name}


def test_byo_has_no_pool_and_uses_the_users_selector_and_taints() -> None:
    state = desired(INPUTS["byo-private-pvc"])
    assert state.agent_pool is None
    spec = worker(state)["template"]["spec"]
    assert spec["nodeSelector"] == {"agentpool": "h100", "kubernetes.azure.com/accelerator": "nvidia"}
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"} in spec["tolerations"]
    mounts = {m["mountPath"]: m for m in worker_container(state)["volumeMounts"]}
    assert mounts["/etc/tokenplane/api-keys"]["readOnly"] is True
    assert mounts["/models/pvc-weights"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {"secretName": "shared-keys"} in [v.get("secret") for v in volumes.values()]
    assert {"claimName": "weights", "readOnly": True} in [v.get("persistentVolumeClaim") for v in volumes.values()]


def test_byo_spot_workers_tolerate_the_taint_aks_puts_on_spot_nodes() -> None:
    # AKS taints every spot node kubernetes.azure.com/scalesetpriority=spot:NoSchedule, the user's pools too:
    # without the toleration the workers stay Pending (they had only the user's own list).
    state = desired(INPUTS["byo-private-pvc"], **{"spec.hardware.spot": {"enabled": True}})
    assert state.agent_pool is None
    tolerations = worker(state)["template"]["spec"]["tolerations"]
    assert tolerations == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    # Listed by the user as well: tolerated once.
    listed = desired(
        INPUTS["byo-private-pvc"],
        **{
            "spec.hardware.spot": {"enabled": True},
            "spec.hardware.nodePool.existing.tolerationsForTaints": [SPOT_TAINT, "sku=gpu:NoSchedule"],
        },
    )
    assert [t["key"] for t in worker(listed)["template"]["spec"]["tolerations"]] == [
        "kubernetes.azure.com/scalesetpriority",
        "sku",
    ]
    # Not spot: the user's list only.
    plain = worker(desired(INPUTS["byo-private-pvc"]))["template"]["spec"]["tolerations"]
    assert [t["key"] for t in plain] == ["sku", "dedicated"]


def test_head_stays_off_gpu_nodes() -> None:
    head = rayservice(desired(INPUTS["example-customer-assistant-70b-fp8"]))["spec"]["rayClusterConfig"][
        "headGroupSpec"
    ]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # The system pool's CriticalAddonsOnly taint only: none of a GPU pool's.
    assert [t["key"] for t in head["template"]["spec"]["tolerations"]] == ["CriticalAddonsOnly"]
    assert POOL_LABEL not in head["template"]["spec"]["nodeSelector"]
    assert not any("nvidia.com" in k for k in head["template"]["spec"]["containers"][0]["resources"]["limits"])


def test_worker_bounds_follow_scaling_and_gpus_per_pod() -> None:
    tp4 = worker(desired(INPUTS["example-customer-assistant-70b-fp8"]))
    assert (tp4["minReplicas"], tp4["maxReplicas"]) == (2, 6)  # one 4-GPU pod per replica
    assert (
        worker_container(desired(INPUTS["example-customer-assistant-70b-fp8"]))["resources"]["limits"]["nvidia.com/gpu"]
        == "4"
    )
    fraction = worker(desired(INPUTS["spot-fraction"]))
    assert (fraction["minReplicas"], fraction["maxReplicas"]) == (1, 3)  # 3 replicas of 0.3 GPU per pod
    pipeline = desired(INPUTS["pipeline-two-nodes"])
    assert (worker(pipeline)["minReplicas"], worker(pipeline)["maxReplicas"]) == (2, 4)  # 2 whole-VM pods each
    assert pipeline.agent_pool is not None and pipeline.agent_pool.max_count == 4
    assert pipeline.agent_pool.os_sku == "Ubuntu"
    zero = worker(desired(INPUTS["example-frontier-moe-qwen3-235b"]))
    assert zero["minReplicas"] == 0 and zero["replicas"] == 0


def test_derived_pool_bounds() -> None:
    state = desired(INPUTS["example-department-lora"])  # 1..3 replicas x 1 GPU on 1-GPU VMs
    assert state.agent_pool is not None and (state.agent_pool.min_count, state.agent_pool.max_count) == (1, 3)
    mig = desired(INPUTS["example-internal-copilot-mig"], **{"spec.hardware.nodePool": {"managed": {}}})
    assert mig.agent_pool is not None and mig.agent_pool.max_count == 2  # 4 slices, 2 per H100 NVL


def test_serve_config_parses_back_to_the_serving_args() -> None:
    state = desired(INPUTS["example-customer-assistant-70b-fp8"])
    config = yaml.safe_load(state.rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "tokenplane_serving.app:build_app"
    assert app["route_prefix"] == "/"
    assert ServingArgs.model_validate(app["args"]) == state.serving_args


def test_access_secret_becomes_hf_token() -> None:
    env = worker_container(desired(INPUTS["example-customer-assistant-70b-fp8"]))["env"]
    assert env[0] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}


def test_session_affinity_header_reaches_every_pod() -> None:
    state = desired(INPUTS["example-customer-assistant-70b-fp8"])
    cluster = rayservice(state)["spec"]["rayClusterConfig"]
    for template in (cluster["headGroupSpec"]["template"], worker(state)["template"]):
        env = template["spec"]["containers"][0]["env"]
        assert {"name": "RAY_SERVE_SESSION_ID_HEADER_KEY", "value": "x-conversation-id"} in env


def test_workers_outlive_the_drain_grace_period() -> None:
    state = desired(INPUTS["example-byo-nodes"])
    grace = worker(state)["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > state.serving_args.drain_grace_period_s


def test_default_api_key_secret_name() -> None:
    volumes = worker(desired(INPUTS["example-byo-nodes"]))["template"]["spec"]["volumes"]
    assert {"secretName": "byo-api-keys"} in [v.get("secret") for v in volumes]


def test_upgrade_strategy_never_doubles_gpus_by_default() -> None:
    assert rayservice(desired(INPUTS["example-byo-nodes"]))["spec"]["upgradeStrategy"] == {"type": "None"}


# --- hashes ----------------------------------------------------------------------------------------------


def _hashes(state: DesiredState) -> tuple[str, str]:
    annotations = state.rayservice["metadata"]["annotations"]
    return annotations[SPEC_HASH_ANNOTATION], annotations[CLUSTER_HASH_ANNOTATION]


def test_spec_hash_is_the_hash_of_the_spec() -> None:
    state = desired(INPUTS["example-byo-nodes"])
    assert _hashes(state)[0] == spec_hash(state.rayservice["spec"])
    assert state.service["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(state.service["spec"])


def test_engine_args_change_the_spec_hash_but_not_the_cluster_hash() -> None:
    path = INPUTS["example-byo-nodes"]
    before, after = desired(path), desired(path, **{"spec.engine": {"maxNumSeqs": 128}})
    assert _hashes(before)[0] != _hashes(after)[0]  # drift: the RayService must be patched
    assert _hashes(before)[1] == _hashes(after)[1]  # but Serve applies it in place: no new Ray cluster


def test_scaling_min_changes_leave_the_cluster_hash_alone() -> None:
    path = INPUTS["example-department-lora"]
    before, after = desired(path), desired(path, **{"spec.scaling.minReplicas": 2})
    assert _hashes(before)[1] == _hashes(after)[1]
    # The spec hash covers every rendered field, so the new bounds still count as drift and get applied.
    assert _hashes(before)[0] != _hashes(after)[0]


def test_image_change_changes_the_cluster_hash() -> None:
    deployment = load(INPUTS["example-byo-nodes"])
    a = build_desired_state(deployment, CONFIG)
    b = build_desired_state(deployment, CONFIG.model_copy(update={"serving_image": "example.com/serving:2"}))
    assert _hashes(a)[1] != _hashes(b)[1]


def test_rendering_is_deterministic() -> None:
    path = INPUTS["example-department-lora"]
    assert render_files(desired(path)) == render_files(desired(path))


# --- objects ---------------------------------------------------------------------------------------------


def test_private_service_is_an_internal_load_balancer() -> None:
    service = desired(INPUTS["example-customer-assistant-70b-fp8"]).service
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    assert service["spec"]["selector"] == {"tokenplane.io/deployment": "assistant", "ray.io/serve": "true"}


def test_cluster_service_uses_the_cr_port() -> None:
    service = desired(INPUTS["spot-fraction"]).service
    assert service["metadata"]["name"] == "small-spot-openai"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}]


def test_network_policy_admits_own_and_allowed_namespaces_on_the_serve_port_only() -> None:
    policy = desired(INPUTS["spot-fraction"]).network_policy
    assert policy["metadata"]["name"] == "small-spot-ingress"
    callers = policy["spec"]["ingress"][1]
    assert callers["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a", "team-b", "team-c"]
    assert callers["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert not any("ipBlock" in peer for rule in policy["spec"]["ingress"] for peer in rule["from"])


# --- errors and the CLI ----------------------------------------------------------------------------------


def test_auto_is_resolved_by_the_planner_inside_the_renderer() -> None:
    # Was: `auto` without a size passed in was a PlanError, and callers passed only the VM size, so TP, GPUs per
    # replica and MIG profile stayed the spec's defaults. Now one function resolves the whole placement.
    with pytest.raises(PlanError) as info:
        desired(INPUTS["example-byo-nodes"], **{"spec.hardware.vmSize": "auto"})
    assert info.value.reason is PlanErrorReason.UNKNOWN_MODEL  # a PVC checkpoint the planner cannot read
    state = desired(INPUTS["example-department-lora"], **{"spec.hardware.vmSize": "auto"})
    assert state.agent_pool is not None and state.agent_pool.vm_size == state.plan.vm_size != "auto"


def test_too_long_names_are_rejected() -> None:
    # The API layer owns the limit (see tokenplane_operator.api.names), so nothing is rendered for such a name.
    with pytest.raises(InvalidSpecError, match="at most 47"):
        desired(INPUTS["example-byo-nodes"], **{"metadata.name": "x" * 48})


def test_render_prints_json_then_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert render_command(INPUTS["example-internal-copilot-mig"], None) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert "properties" in documents[0]  # the ARM body (JSON is YAML)
    assert [d["kind"] for d in documents[1:]] == ["NetworkPolicy", "RayService", "Service"]


def test_render_writes_files(tmp_path: Path) -> None:
    assert render_command(INPUTS["example-department-lora"], tmp_path) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith("agentpool-") and names[0].endswith(".json")
    json.loads((tmp_path / names[0]).read_text())
    assert names[1:] == [
        "networkpolicy-departments-ingress.yaml",
        "rayservice-departments.yaml",
        "service-departments-openai.yaml",
    ]


def test_render_reports_invalid_specs_with_field_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    body = yaml.safe_load(INPUTS["example-byo-nodes"].read_text())
    body["spec"]["scaling"]["minReplicas"] = 5
    bad.write_text(yaml.safe_dump(body))
    assert render_command(bad, None) == 1
    captured = capsys.readouterr()
    assert "spec.scaling.minReplicas" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_render_auto_uses_the_capacity_planner_or_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = yaml.safe_load(INPUTS["example-code-completion-speculative"].read_text())
    body["spec"]["hardware"]["vmSize"] = "auto"
    auto = tmp_path / "auto.yaml"
    auto.write_text(yaml.safe_dump(body))
    assert render_command(auto, tmp_path / "out") == 0
    assert "vmSize auto ->" in capsys.readouterr().err
    body["spec"]["model"]["source"] = "hf://example/unknown-model"
    auto.write_text(yaml.safe_dump(body))
    assert render_command(auto, None) == 1
    assert "UnknownModel" in capsys.readouterr().err
