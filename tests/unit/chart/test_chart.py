"""The Helm chart renders valid objects with the real Helm engine, and its schema is generated."""

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from tests.support.chart import CHART, granted, render  # noqa: E402
from tests.support.kuberay_peer import with_metrics_port  # noqa: E402
from tokenplane_cli.chartschema import build_values_schema  # noqa: E402
from tokenplane_cli.dashboard import build_dashboard  # noqa: E402
from tokenplane_operator.desired.config import RenderConfig  # noqa: E402
from tokenplane_operator.main import operator_command  # noqa: E402
from tokenplane_operator.plan.allocatable import NodeOverhead  # noqa: E402
from tokenplane_operator.settings import OperatorSettings  # noqa: E402

ROOT = CHART.parents[1]
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(values)


def _kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind)


def test_values_schema_is_generated_from_values() -> None:
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == build_values_schema(CHART / "values.yaml"), "run `make chart-schema`"


def test_lint_has_no_errors() -> None:
    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


def test_default_render_is_valid_kubernetes() -> None:
    objects = _render({})
    assert {o["kind"] for o in objects} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "ClusterKopfPeering",
    }
    for obj in objects:
        if obj["apiVersion"].startswith("kopf.dev/"):
            continue  # a custom resource: validated against the chart's CRDs in test_manifests.py
        kubernetes_validate.validate(obj, "1.33", strict=True)
    pod = _kind(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["operator", "--all-namespaces"]
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True and hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert set(container["resources"]["limits"]) == {"cpu", "memory"} and container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_workload_identity_and_namespaces() -> None:
    objects = _render(
        {
            "serviceAccount": {"azureClientId": "11111111-2222-3333-4444-555555555555"},
            "operator": {"watchNamespaces": ["ai", "support"]},
            "azure": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "clusterName": "aks"},
        }
    )
    account = _kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"].startswith("1111")
    pod = _kind(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["containers"][0]["args"] == ["operator", "--namespace=ai", "--namespace=support"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["TOKENPLANE_CLUSTER_NAME"] == "aks"


def test_watching_namespaces_grants_roles_there_and_peers_there() -> None:
    objects = _render({"operator": {"watchNamespaces": ["ai", "support"]}})
    roles = {(o["kind"], o["metadata"].get("namespace")) for o in objects if o["kind"] in ("Role", "RoleBinding")}
    assert roles == {(k, ns) for k in ("Role", "RoleBinding") for ns in ("ai", "support")}
    peerings = [(o["kind"], o["metadata"]["namespace"]) for o in objects if o["apiVersion"] == "kopf.dev/v1"]
    assert peerings == [("KopfPeering", "ai"), ("KopfPeering", "support")]
    cluster_rules = _kind(objects, "ClusterRole")["rules"]
    assert cluster_rules == [
        {"apiGroups": ["tokenplane.io"], "resources": ["inferencedeployments"], "verbs": ["list"]},
        # At start: is another release's operator over every namespace running (tokenplane_operator.main)?
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list"]},
    ]


def test_one_replica_has_no_disruption_budget() -> None:
    kinds = {o["kind"] for o in _render({"replicaCount": 1})}
    assert "PodDisruptionBudget" not in kinds and "Deployment" in kinds


def test_the_tested_ray_version_is_one_fact() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serving"]
    pinned = next(re.search(r"==([\d.]+)", p)[1] for p in pins if p.startswith("ray["))  # type: ignore[index]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    tested = re.search(r'define "tokenplane.testedRayVersion" -}}\n(\S+)', helpers)
    assert tested is not None
    assert (
        pinned
        == tested[1]
        == RenderConfig().ray_version
        == yaml.safe_load((CHART / "values.yaml").read_text())["serving"]["rayVersion"]
    )
    assert "FROM rayproject/ray-llm:" + pinned in (ROOT / "serving" / "Dockerfile").read_text()


def test_a_forced_ray_version_renders() -> None:
    objects = _render({"serving": {"rayVersion": "2.61.0", "forceRayVersion": True}})
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TOKENPLANE_RAY_VERSION"] == "2.61.0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"operator": {"pollIntervalSeconds": "often"}}, "pollIntervalSeconds"),
        ({"operator": {"logLevel": "VERBOSE"}}, "logLevel"),
        ({"operator": {"watchNamespaces": ["AI_Team"]}}, "watchNamespaces"),
        ({"operator": {"healthPort": 80}}, "healthPort"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"azure": {"subscriptionId": "my-subscription"}}, "subscriptionId"),
        (
            {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000001"}},
            "azure.resourceGroup is required",
        ),
        ({"serving": {"rayVersion": "2.59.0"}}, "serving.rayVersion 2.59.0 is not 2.60.0"),
        ({"operator": {"metricsPort": 8080}}, "operator.metricsPort and operator.healthPort are both 8080"),
        ({"networkPolicy": {"operator": {"prometheusNamespaces": ["Monitoring"]}}}, "prometheusNamespaces"),
        # Only KubeRay's metrics-export-port is open on the Ray pods: another port scraped nothing.
        ({"operator": {"servingMetricsPort": 9090}}, "servingMetricsPort"),
        # The RBAC would have gone to the namespace's "default" account.
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        ({"extraEnv": [{"name": "TOKENPLANE_LOG_LEVEL", "value": "DEBUG"}]}, "extraEnv: TOKENPLANE_LOG_LEVEL is set"),
        ({"extraEnv": [{"value": "x"}]}, "extraEnv"),
        # The operator refused these at start (CrashLoopBackOff) after a successful install.
        ({"networkPolicy": {"privateSourceRanges": ["0.0.0.0/0"]}}, "privateSourceRanges"),
        ({"networkPolicy": {"privateSourceRanges": ["10.0.0.0"]}}, "privateSourceRanges"),
        ({"imagePullSecrets": [{"secret": "acr"}]}, "imagePullSecrets"),
        # The selector no longer matched the pods (the API server refused the Deployment), or workload identity was
        # turned off and every Azure call failed; a number is no label value (refused by the API server).
        ({"podLabels": {"app.kubernetes.io/name": "ops"}}, "podLabels: app.kubernetes.io/name is set by the chart"),
        ({"podLabels": {"azure.workload.identity/use": "false"}}, "podLabels: azure.workload.identity/use is set"),
        ({"podLabels": {"team": 1}}, "podLabels"),
        ({"nodeSelector": {"agentpool": 1}}, "nodeSelector"),
        # The budget let a drain evict every operator replica at once.
        (
            {"replicaCount": 2, "podDisruptionBudget": {"maxUnavailable": 2}},
            "podDisruptionBudget.maxUnavailable 2 lets a node drain evict all 2 operator replicas",
        ),
        # The identity was never written anywhere: every Azure call failed after a clean install.
        ({"serviceAccount": {"azureClientId": "my-identity"}}, "azureClientId"),
        (
            {
                "serviceAccount": {
                    "create": False,
                    "name": "ops",
                    "azureClientId": "11111111-2222-3333-4444-555555555555",
                }
            },
            "serviceAccount.azureClientId is written only on the service account the chart creates",
        ),
    ],
    ids=lambda v: "-" if isinstance(v, str) else json.dumps(v)[:40],
)
def test_bad_values_fail_the_install_early(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        _render(values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "image"),
    [
        (helm_python.parse_set_string("image.tag=2"), "ghcr.io/tokenplane/operator:2"),
        (yaml.safe_load("image: {tag: 20240101}"), "ghcr.io/tokenplane/operator:20240101"),
        (helm_python.parse_set_string("image.tag=0.2.0"), "ghcr.io/tokenplane/operator:0.2.0"),
    ],
    ids=["set-integer", "values-file-integer", "string"],
)
def test_an_integer_image_tag_is_used_as_written(values: dict[str, Any], image: str) -> None:
    """`--set image.tag=2` makes an integer, which the schema refused (type string); a values file's integers reach
    the templates as float64, which printed as `2.0240101e+07`."""
    container = _kind(_render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image


def test_a_tag_yaml_reads_as_a_fraction_is_refused() -> None:
    """`tag: 1.10` in a values file is the number 1.1: refused rather than pulling another image."""
    with pytest.raises(helm_python.HelmError) as caught:
        _render(yaml.safe_load("image: {tag: 1.10}"))
    assert "/image/tag" in str(caught.value)


def test_resources_given_replace_the_default_sizing_whole() -> None:
    """Helm merges values maps key by key: `--set resources.limits.memory=2Gi` kept the default CPU limit of 1 (a
    throttle nobody asked for) and both default requests; with 128Mi the 256Mi request exceeded the limit and the API
    server refused the Deployment. What is given is now the whole block; nothing given is the chart's sizing."""

    def resources(values: dict[str, Any]) -> dict[str, Any]:
        return dict(_kind(_render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"])

    assert resources(helm_python.parse_set_string("resources.limits.memory=2Gi")) == {"limits": {"memory": "2Gi"}}
    given = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}}
    assert resources({"resources": given}) == given
    assert resources({}) == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


@pytest.mark.parametrize(
    "expression", ["resources.limit.memory=1Gi", "resources.limits.memory=1GB", "resources.requests.cpu=half"]
)
def test_a_mistyped_resource_is_refused_at_install(expression: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        _render(helm_python.parse_set_string(expression))
    assert "/resources" in str(caught.value)


def test_argo_cd_runs_the_uninstall_check_too() -> None:
    """Argo CD 3.3+ runs the check before deleting the Application, as Helm does before uninstalling; it reads none of
    an object's Helm hook annotations once it has one of its own, so the delete policy is given in both words."""
    (job,) = [o for o in _render({}) if o["kind"] == "Job"]
    notes = job["metadata"]["annotations"]
    assert (notes["helm.sh/hook"], notes["argocd.argoproj.io/hook"]) == ("pre-delete", "PreDelete")
    words = {
        "before-hook-creation": "BeforeHookCreation",
        "hook-succeeded": "HookSucceeded",
        "hook-failed": "HookFailed",
    }
    helm = {words[policy] for policy in notes["helm.sh/hook-delete-policy"].split(",")}
    argo = set(notes["argocd.argoproj.io/hook-delete-policy"].split(","))
    assert helm == argo == {"BeforeHookCreation", "HookSucceeded"}, "a failed check stays for its log under both"


def test_crd_ships_with_the_chart() -> None:
    assert (CHART / "crds" / "inferencedeployments.tokenplane.io.yaml").is_file()


def test_every_rendered_setting_is_one_the_operator_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    overhead = {"daemonsetCpuMillis": 1500, "daemonsetMemoryMiB": 3072, "osDiskGiB": 256}
    objects = _render(
        {
            "operator": {
                "pollIntervalSeconds": 45,
                "logLevel": "DEBUG",
                "healthPort": 9090,
                "metricsPort": 9091,
                "nodeOverhead": overhead,
            }
        }
    )
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f"TOKENPLANE_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields, f"the chart sets variables the operator ignores: {set(env) - fields}"
    for name in [n for n in os.environ if n.startswith("TOKENPLANE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.poll_interval_s == 45 and settings.log_level == "DEBUG"
    assert settings.arm_endpoint is None, "an empty ARM endpoint must mean the public cloud"
    # The node overhead reaches the renderer: worker requests are sized from what the chart says a node keeps.
    assert settings.render_config().node_overhead() == NodeOverhead(1500, 3072, 256)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == settings.health_port == 9090
    assert ports["metrics"] == settings.operator_metrics_port == 9091


def test_bad_operator_settings_fail_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPLANE_POLL_INTERVAL_S", "-1")
    with pytest.raises(SystemExit) as exit_info:
        operator_command([], all_namespaces=True)
    assert "TOKENPLANE_POLL_INTERVAL_S: Input should be greater than 0" in str(exit_info.value)


def test_one_port_for_health_and_metrics_stops_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPLANE_HEALTH_PORT", "9000")
    monkeypatch.setenv("TOKENPLANE_OPERATOR_METRICS_PORT", "9000")
    with pytest.raises(SystemExit) as exit_info:
        operator_command([], all_namespaces=True)
    assert "TOKENPLANE_OPERATOR_METRICS_PORT and TOKENPLANE_HEALTH_PORT are both 9000" in str(exit_info.value)


def test_network_policy_namespaces_come_from_the_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeRay's namespace (values) and the operator's (its release namespace) reach every rendered policy."""
    from tokenplane_operator.api.validation import parse_inference_deployment
    from tokenplane_operator.desired.bundle import build_desired_state
    from tokenplane_operator.desired.schedulable import Peer, admits, check_schedulable

    values = {"networkPolicy": {"kubeRayNamespace": "ray", "privateSourceRanges": ["10.50.0.0/16"]}}
    container = _kind(_render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for name in [n for n in os.environ if n.startswith("TOKENPLANE_")]:
        monkeypatch.delenv(name)
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    config = OperatorSettings().render_config()
    assert (config.kuberay_namespace, config.operator_namespace) == ("ray", "tokenplane")
    body = {"metadata": {"name": "m", "namespace": "ai"},
            "spec": {"model": {"source": "org/m"}, "hardware": {"vmSize": "Standard_NC24ads_A100_v4"},
                     "endpoint": {"visibility": "private"}}}  # fmt: skip
    state = build_desired_state(parse_inference_deployment(body), config)
    head = state.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]

    def allowed(source: Peer, port: int) -> bool:
        return admits([state.network_policy], namespace="ai", pod_labels=head, source=source, port=port)

    assert allowed(Peer("ray"), 8265) and not allowed(Peer("kuberay-system"), 8265)
    assert allowed(Peer("tokenplane"), 8080)
    assert allowed(Peer(ip="10.50.3.4"), 8000) and not allowed(Peer(ip="10.60.3.4"), 8000)
    assert check_schedulable(state, config) == []


def _settings_from(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """The operator's settings as the chart's Deployment sets them (and nothing from this process' environment)."""
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for name in [n for n in os.environ if n.startswith("TOKENPLANE_")]:
        monkeypatch.delenv(name)
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    return OperatorSettings()


def test_the_ray_head_size_comes_from_the_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """serving.head reaches every rendered head (the heads share the system pool, which may be 2-vCPU nodes), and
    the chart's defaults are the renderer's, which `tokenplane validate`, `render` and `plan` use."""
    from tokenplane_operator.api.validation import parse_inference_deployment
    from tokenplane_operator.desired.bundle import build_desired_state

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["serving"]["head"]
    assert (
        defaults
        == {
            "cpu": RenderConfig().head_cpu,
            "memory": RenderConfig().head_memory,
            "systemNodeVmSize": RenderConfig().system_node_vm_size,
        }
        == {"cpu": "300m", "memory": "3Gi", "systemNodeVmSize": "Standard_D4ds_v5"}
    )
    default = _settings_from(_render({}), monkeypatch).render_config()
    assert (default.head_cpu, default.head_memory, default.system_node_vm_size) == ("300m", "3Gi", "Standard_D4ds_v5")
    head = {"cpu": 2, "memory": "6Gi", "systemNodeVmSize": "Standard_D8ds_v5"}
    config = _settings_from(_render({"serving": {"head": head}}), monkeypatch).render_config()
    assert config.system_node_vm_size == "Standard_D8ds_v5"
    body = {"metadata": {"name": "m", "namespace": "ai"},
            "spec": {"model": {"source": "org/m"}, "hardware": {"vmSize": "Standard_NC24ads_A100_v4"}}}  # fmt: skip
    state = build_desired_state(parse_inference_deployment(body), config)
    head = state.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"] == {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"memory": "6Gi"}}


@pytest.mark.parametrize(("key", "value"), [("cpu", "half"), ("cpu", "1.5 cores"), ("memory", "3GB")])
def test_a_mistyped_head_size_is_refused(key: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        _render({"serving": {"head": {key: value}}})
    assert f"/serving/head/{key}" in str(caught.value)
    variable = f"TOKENPLANE_HEAD_{key.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        operator_command([], all_namespaces=True)
    assert f"{variable}: String should match pattern" in str(exit_info.value)


def test_prometheus_may_scrape_the_serving_pods_the_podmonitor_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's PodMonitor scrapes port 8080 of every Ray pod from Prometheus' namespace; each deployment's
    NetworkPolicy admitted only the operator's namespace there, so with a policy engine (Azure NPM, Calico, Cilium)
    every scrape timed out and the dashboard and the serving alerts read nothing."""
    from tokenplane_operator.api.validation import parse_inference_deployment
    from tokenplane_operator.desired.bundle import build_desired_state
    from tokenplane_operator.desired.schedulable import Peer, admits, check_schedulable

    values = yaml.safe_load((CHART / "ci" / "monitoring-values.yaml").read_text())
    objects = _render(values)
    monitor = next(o for o in objects if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-serving"))
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for name in [n for n in os.environ if n.startswith("TOKENPLANE_")]:
        monkeypatch.delenv(name)
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    config = OperatorSettings().render_config()
    body = {"metadata": {"name": "m", "namespace": "ai"},
            "spec": {"model": {"source": "org/m"}, "hardware": {"vmSize": "Standard_NC24ads_A100_v4"}}}  # fmt: skip
    state = build_desired_state(parse_inference_deployment(body), config)
    cluster = state.rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in (with_metrics_port(g["template"]) for g in groups):
        # The port by name, on every pod as KubeRay makes it: `portNumber` needs a Prometheus Operator from late
        # 2024 or later, whose PodMonitor CRD has the field (older ones refused the chart's PodMonitor).
        assert "portNumber" not in endpoint
        (port,) = [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == endpoint["port"]]
        assert port == OperatorSettings().metrics_port
        labels = pod["metadata"]["labels"]
        for prometheus in ("monitoring", "kube-system"):  # kube-prometheus-stack's; Azure Managed Prometheus'
            assert admits([state.network_policy], namespace="ai", pod_labels=labels, source=Peer(prometheus), port=port)
        assert not admits([state.network_policy], namespace="ai", pod_labels=labels, source=Peer("web"), port=port)
    assert check_schedulable(state, config) == []


def test_an_open_private_range_stops_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPLANE_PRIVATE_SOURCE_RANGES", '["0.0.0.0/0"]')
    with pytest.raises(SystemExit):
        operator_command([], all_namespaces=True)


def _notes(values: dict[str, Any]) -> str:
    rendered = helm_python.Chart.load(str(CHART)).render(values=values, name="tp", namespace="tokenplane")
    return str(next(text for path, text in rendered.items() if path.endswith("NOTES.txt")))


def test_notes_tell_what_to_do_next() -> None:
    bare = _notes({})
    assert "deploy/aks/prepare-cluster.sh" in bare and "kubectl apply -f" in bare and "docs/install-aks.md" in bare
    configured = _notes(
        {
            "azure": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "clusterName": "aks"},
            "serviceAccount": {"azureClientId": "11111111-2222-3333-4444-555555555555"},
            "operator": {"watchNamespaces": ["ai"]},
        }
    )
    assert "No Azure settings" not in configured and "azureClientId is empty" not in configured
    assert "watches the namespaces: ai" in configured


def test_every_value_is_documented() -> None:
    undocumented = []

    def walk(node: dict[str, Any], path: list[str]) -> None:
        if "description" in node and node.get("additionalProperties") not in (None, False):
            return  # an open map (labels): its entries are the user's
        if props := node.get("properties"):
            for key, child in props.items():
                walk(child, [*path, key])
        elif "description" not in node:
            undocumented.append(".".join(path))

    walk(json.loads((CHART / "values.schema.json").read_text()), [])
    assert not undocumented, f"values.yaml needs a `# --` line above: {undocumented}"


def test_dashboard_labels_are_an_open_map() -> None:
    labels = {"grafana_dashboard": "1", "team": "ai"}
    config = _kind(_render({"monitoring": {"dashboard": {"labels": labels}}}), "ConfigMap")
    assert config["metadata"]["labels"]["team"] == "ai"


def test_a_taken_metrics_port_stops_the_operator_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TOKENPLANE_OPERATOR_METRICS_PORT", str(port))
        with pytest.raises(SystemExit) as exit_info:
            operator_command([], all_namespaces=True)
    assert f"cannot serve metrics on TOKENPLANE_OPERATOR_METRICS_PORT={port}" in str(exit_info.value)


def test_every_knob_reaches_the_operator_pod() -> None:
    """affinity, priorityClassName, podAnnotations and extraEnv were refused by the schema (no such values), and
    imagePullSecrets given as names rendered `- acr-pull`, a pod spec the API server rejects."""
    values = yaml.safe_load((CHART / "ci" / "every-knob-values.yaml").read_text())
    objects = _render(values)
    deployment = _kind(objects, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    kubernetes_validate.validate(deployment, "1.33", strict=True)
    assert pod["affinity"] == values["affinity"] and pod["tolerations"] == values["tolerations"]
    assert pod["nodeSelector"] == values["nodeSelector"] and pod["priorityClassName"] == values["priorityClassName"]
    assert pod["imagePullSecrets"] == [{"name": "acr-pull"}, {"name": "ghcr-pull"}]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["metadata"]["labels"]["team"] == "ai"
    container = pod["containers"][0]
    assert container["image"] == "myregistry.azurecr.io/tokenplane/operator:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always" and container["resources"] == values["resources"]
    assert container["env"][-2:] == values["extraEnv"]
    assert pod["serviceAccountName"] == "platform-operators"
    assert not any(o["kind"] == "ServiceAccount" for o in objects)
    subjects = [s for o in objects if o["kind"].endswith("RoleBinding") for s in o["subjects"]]
    assert subjects and {s["name"] for s in subjects} == {"platform-operators"}


def test_replicas_spread_over_nodes_unless_told_otherwise() -> None:
    pod = _kind(_render({}), "Deployment")["spec"]["template"]
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_extra_env_refuses_exactly_what_the_chart_sets() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = json.loads(re.search(r'define "tokenplane.deployment.envNames" -}}\n(.+)\n', helpers)[1])  # type: ignore[index]
    container = _kind(_render({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert set(listed) == {e["name"] for e in container["env"]} | {"TOKENPLANE_NAMESPACES", "TOKENPLANE_ALL_NAMESPACES"}


def test_team_scoped_releases_in_two_namespaces_claim_no_common_object() -> None:
    """Both releases rendered the ClusterRole and ClusterRoleBinding `tokenplane-operator`: the second install failed
    (Helm refuses an object another release owns)."""
    claimed: list[set[tuple[str, str | None, str]]] = []
    for team in ("team-a", "team-b"):
        values = {"operator": {"watchNamespaces": [team]}}
        objects = render(values, namespace=f"{team}-ops", name="tokenplane")
        claimed.append({(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects})
        assert granted(objects, "tokenplane-operator", f"{team}-ops"), "the RBAC still binds the operator's account"
    assert not claimed[0] & claimed[1], claimed[0] & claimed[1]


def test_two_releases_share_a_dashboard_namespace_without_clashing() -> None:
    """Both rendered ConfigMap `tokenplane-operator-dashboard` with the key `tokenplane.json`: with one
    monitoring.dashboard.namespace for Grafana's sidecar the second install failed (Helm refuses an object another
    release owns), and one file in the sidecar's folder would have gone with either release's uninstall."""
    found = []
    for team in ("team-a", "team-b"):
        values = {"operator": {"watchNamespaces": [team]}, "monitoring": {"dashboard": {"namespace": "monitoring"}}}
        (config,) = [o for o in render(values, namespace=f"{team}-ops", name="tokenplane") if o["kind"] == "ConfigMap"]
        assert config["metadata"]["namespace"] == "monitoring"
        (text,) = config["data"].values()
        board = json.loads(text)
        assert board["title"] == f"tokenplane: inference economics ({team}-ops/tokenplane)"
        assert board["panels"] == build_dashboard()["panels"], "the generated dashboard, as it is"
        # Grafana keys dashboards by uid: with one uid, the second release's replaced the first's.
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
        again = [o for o in render(values, namespace=f"{team}-ops", name="tokenplane") if o["kind"] == "ConfigMap"]
        assert json.loads(next(iter(again[0]["data"].values())))["uid"] == board["uid"], "an upgrade keeps the uid"
        found.append((config["metadata"]["name"], *config["data"], board["uid"], board["title"]))
    assert all(a != b for a, b in zip(*found, strict=True)), found


def _value_paths() -> list[str]:
    """Every setting of values.yaml, by dotted path; an open map (labels) or a list counts as one."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> list[str]:
        found = []
        for key, value in values.items():
            child = node.get("properties", {}).get(key, {})
            closed = child.get("additionalProperties") is False and child.get("properties")
            found += walk(value, child, f"{path}{key}.") if value and closed else [f"{path}{key}"]
        return found

    return walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


def test_the_chart_checks_every_value_it_has() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = json.loads(re.search(r'define "tokenplane.valuePaths" -}}\n(.+)\n', helpers)[1])  # type: ignore[index]
    assert listed == _value_paths()


@pytest.mark.parametrize("path", _value_paths())
def test_a_value_an_older_chart_lacked_is_named_under_reuse_values(path: str, tmp_path: Path) -> None:
    """`helm upgrade --reuse-values` renders the new templates with the old release's values, defaults included: a
    value added since was nil. `for: {{ $a.p95For }}` rendered `for: null`, a nil section stopped the render with
    "nil pointer evaluating interface {}.enabled", and others rendered empty fields. Each is now named, with the fix.
    """
    import shutil

    chart = shutil.copytree(CHART, tmp_path / "tokenplane")
    values = yaml.safe_load((chart / "values.yaml").read_text())
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node[key]
    del node[leaf]  # the values of a chart version without it
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(helm_python.HelmError) as caught:
        helm_python.Chart.load(str(chart)).render(values={}, name="tp", namespace="tokenplane")
    assert f"{path} is missing from the values" in str(caught.value)
    assert "--reset-then-reuse-values" in str(caught.value)
