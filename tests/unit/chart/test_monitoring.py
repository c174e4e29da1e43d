"""The dashboard and the alerts read only series that exist: every PromQL expression parses (promql-parser, the
Prometheus grammar) and names a metric the serving pods or the operator export.

The serving pods' series are the docs/metrics.md table, which tests/serving/test_production.py checks against a live
scrape of the real serving app (histograms as their `_bucket`, `_sum` and `_count` series). The operator's are what
its registry (`tokenplane_operator.adapters.exporter.REGISTRY`) collects, by the same naming rules; the operator
process test scrapes them live. DCGM's GPU utilization and Prometheus' own `up` are the only other series allowed,
each named with its source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import CHART, render
from tests.support.kuberay_peer import with_metrics_port
from tests.support.promtool import alerts_firing, samples
from tokenplane_cli.dashboard import DCGM_METRICS, PANELS, build_dashboard
from tokenplane_operator.adapters.exporter import REGISTRY

promql_parser = pytest.importorskip("promql_parser")

DOC = CHART.parents[1] / "docs" / "metrics.md"
PROMETHEUS_OWN = {"up"}  # the scrape health series Prometheus writes for every target


def exported() -> set[str]:
    names: set[str] = set()
    for name, kind in re.findall(r"^\| `(ray_[a-z0-9_]+)` \| (\w+) \|", DOC.read_text(), flags=re.MULTILINE):
        names |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    assert len(names) > 20, "the metrics table moved: update this parser"
    return names


def operator_series() -> set[str]:
    """Every series name the operator's registry exports (counters as `_total`, histograms as their three)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {family.name + s for family in REGISTRY.collect() for s in suffixes[family.type]}
    assert {"tokenplane_inferencedeployment_ready", "tokenplane_operator_reconcile_total"} <= names
    return names


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects; fails on a syntax error."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_dashboard_in_the_chart_is_the_generated_one() -> None:
    committed = json.loads((CHART / "dashboards" / "tokenplane.json").read_text())
    assert committed == build_dashboard(), "run `make dashboard`"


def test_every_dashboard_query_parses_and_reads_an_exported_metric() -> None:
    serving = exported() | operator_series()
    panels = build_dashboard()["panels"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    for panel in panels:
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        assert names, panel["title"]
        unknown = names - serving - set(DCGM_METRICS)
        assert not unknown, f"{panel['title']}: {unknown} is exported neither by the serving pods nor the operator"


def kept_labels(node: Any) -> set[str]:
    """The labels an expression's result series carry, read from its outermost `by` aggregation."""
    if isinstance(node, promql_parser.AggregateExpr):
        return set(node.modifier.labels) if node.modifier is not None else set()
    if isinstance(node, promql_parser.BinaryExpr):
        return kept_labels(node.lhs)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.SubqueryExpr)):
        return kept_labels(node.expr)
    if isinstance(node, promql_parser.Call):
        kept = set().union(*(kept_labels(a) for a in node.args))
        return kept - {"le"} if node.func.name == "histogram_quantile" else kept
    return set()


def test_every_legend_names_a_label_its_query_keeps() -> None:
    """A legend's {{label}} aggregated away renders empty: series that differ by it read as one."""
    for panel in build_dashboard()["panels"]:
        for target in panel["targets"]:
            legend = set(re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"]))
            kept = kept_labels(promql_parser.parse(target["expr"]))
            assert legend <= kept, f"{panel['title']}: legend {legend - kept} is not kept by {target['expr']}"


def test_requests_by_http_status_keep_the_status() -> None:
    """Ray Serve labels ray_serve_num_http_requests_total with route, method, application and status_code
    (ray/serve/_private/request_ingress_metrics.py, Ray 2.60): the panel summed the code away."""
    (panel,) = [p for p in build_dashboard()["panels"] if "HTTP status" in p["title"]]
    for target in panel["targets"]:
        assert "status_code" in kept_labels(promql_parser.parse(target["expr"]))
        assert "{{status_code}}" in target["legendFormat"]


def test_tokens_per_gpu_hour_is_empty_for_cpu_deployments(tmp_path: Path) -> None:
    """A CPU deployment's replicas hold no GPU: the panel divided its tokens by 0 and plotted +Inf, which also
    stretched the axis so the GPU deployments' lines lay flat. It now shows nothing for them."""
    (panel,) = [p for p in build_dashboard()["panels"] if p["title"] == "Output tokens per GPU-hour"]
    expr = panel["targets"][0]["expr"].replace("$namespace", ".*").replace("$inference_deployment", ".*")
    series = {}
    for name, gpus in (("gpu", 2), ("cpu", 0)):
        labels = f'namespace="ai", inference_deployment="{name}", pod="{name}-worker-0"'
        series[f"ray_vllm_generation_tokens_total{{{labels}}}"] = "0+60x60"  # 1 token/s
        series[f"ray_tokenplane_replica_gpus{{{labels}}}"] = f"{gpus}x60"
    expected = [{"labels": '{namespace="ai", inference_deployment="gpu"}', "value": 1800}]
    samples(tmp_path, expr, series, at="30m", expected=expected)


def test_gpu_utilization_reads_dcgm_series_labelled_either_way() -> None:
    """dcgm-exporter's ServiceMonitor defaults to honorLabels false: the GPU's pod and namespace arrive as exported_pod
    and exported_namespace (NVIDIA/dcgm-exporter#85), and a filter on `namespace` alone matched the exporter's own."""
    (panel,) = [p for p in build_dashboard()["panels"] if "DCGM" in p["title"]]
    matchers: list[set[str]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name == "DCGM_FI_DEV_GPU_UTIL":
            matchers.append({m.name for m in node.matchers.matchers})

    promql_parser.walk(promql_parser.parse(panel["targets"][0]["expr"]), visit)
    assert any("namespace" in m for m in matchers) and any("exported_namespace" in m for m in matchers), matchers


def test_dashboard_covers_the_seeds_profitability_figures() -> None:
    titles = " | ".join(p.title for p in PANELS).lower()
    for figure in (
        "per gpu-hour",
        "tokens/s per gpu",
        "time to first token",
        "end-to-end",
        "output/input",
        "hit rate",
        "queue",
        "replicas",
        "maxreplicas",
        "ready",
        "scale events",
        "gpu utilization",
    ):
        assert figure in titles, figure


def rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = next(o for o in render(values) if o["kind"] == "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_parses_and_reads_an_exported_metric() -> None:
    known = exported() | operator_series()
    found = rules({"monitoring": {"alerts": {"enabled": True}, "operatorMonitor": {"enabled": True}}})
    assert {r["alert"] for r in found} == {
        "TokenplaneOperatorDown",
        "TokenplaneTokenRateSpike",
        "TokenplaneLatencyP95OverTarget",
        "TokenplaneQueueGrowing",
        "TokenplaneReplicasAtMax",
        "TokenplaneDeploymentNotServing",
        "TokenplaneQuotaInsufficient",
    }
    for rule in found:
        names = metric_names(rule["expr"])
        assert names and not names - known - PROMETHEUS_OWN, (rule["alert"], names - known)
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


@pytest.mark.parametrize(
    ("up", "fires"),
    [
        ({}, True),  # no operator pod scraped at all
        ({"tokenplane-operator-7d9f-abcde": "0x20", "tokenplane-operator-7d9f-fghij": "0x20"}, True),
        ({"tokenplane-operator-7d9f-abcde": "0x20", "tokenplane-operator-7d9f-fghij": "1x20"}, False),  # a standby
    ],
    ids=["absent", "all-down", "one-up"],
)
def test_an_operator_that_is_down_is_reported(tmp_path: Path, up: dict[str, str], fires: bool) -> None:
    """With every operator replica crashing, its gauges vanished and the readiness, maxReplicas and quota alerts,
    which read them, went quiet: nothing said that nothing reconciled."""
    series = {
        f'up{{namespace="tokenplane", pod="{pod}", job="tokenplane/tokenplane-operator"}}': v for pod, v in up.items()
    }
    series['up{namespace="tokenplane", pod="web-0", job="web"}'] = "1x20"  # another target in the namespace
    values = {"monitoring": {"operatorMonitor": {"enabled": True}, "alerts": {"enabled": True}}}
    expected = [{"severity": "critical", "namespace": "tokenplane"}] if fires else []
    alerts_firing(tmp_path, rules(values), series, alert="TokenplaneOperatorDown", at="10m", expected=expected)


def test_an_upgrade_reusing_older_values_is_told_the_operator_down_delay_is_missing() -> None:
    """`helm upgrade --reuse-values` takes the old release's values, which have no operatorDownFor (Helm passes the
    missing key as null): the rule rendered `for: null`. A template default kept it at 5m, a second copy of
    values.yaml's; every value an older chart lacked is now named instead, with the upgrade that keeps the new
    defaults (test_chart.py checks each value)."""
    import helm_python

    values = {
        "monitoring": {"operatorMonitor": {"enabled": True}, "alerts": {"enabled": True, "operatorDownFor": None}}
    }
    with pytest.raises(helm_python.HelmError, match=r"monitoring\.alerts\.operatorDownFor is missing from the values"):
        rules(values)


def test_readiness_and_ceiling_alerts_read_the_operator_not_stand_ins() -> None:
    found = {r["alert"]: metric_names(r["expr"]) for r in rules({"monitoring": {"alerts": {"enabled": True}}})}
    operator = operator_series()
    assert found["TokenplaneReplicasAtMax"] == {
        "tokenplane_inferencedeployment_replicas_desired",
        "tokenplane_inferencedeployment_max_replicas",
        "tokenplane_inferencedeployment_min_replicas",
    }
    assert found["TokenplaneDeploymentNotServing"] == {
        "tokenplane_inferencedeployment_ready",
        "tokenplane_inferencedeployment_stalled",
    }
    assert found["TokenplaneQuotaInsufficient"] <= operator


def test_alert_thresholds_come_from_values() -> None:
    found = {
        r["alert"]: r
        for r in rules(
            {
                "monitoring": {
                    "alerts": {"enabled": True, "p95LatencySeconds": 0.8, "p95For": "3m", "tokenRateSpikeFactor": 5}
                }
            }
        )
    }
    p95 = found["TokenplaneLatencyP95OverTarget"]
    assert p95["for"] == "3m" and "> 0.8\n" in p95["expr"]
    promql_parser.parse(p95["expr"])
    assert "> 5 * sum" in found["TokenplaneTokenRateSpike"]["expr"]


def _histogram(name: str, labels: str, bounds: dict[str, int]) -> dict[str, str]:
    """A histogram's bucket series that grow by `count` a minute: every observation in the buckets up to `le`."""
    return {f'{name}_bucket{{{labels}, le="{le}"}}': f"0+{count}x60" for le, count in bounds.items()}


def test_the_latency_alert_holds_each_deployment_to_its_own_target(tmp_path: Path) -> None:
    """One chart-wide p95LatencySeconds (2 s, end to end) judged every deployment: a chat deployment whose TTFT
    target is 0.5 s was never reported at a 0.96 s TTFT, and a batch one whose end-to-end target is 30 s was
    reported at 9.6 s. The operator exports each spec.scaling.latencyTarget; the alert compares the P95 of the
    latency it names, and only deployments without a target fall back to the chart's value."""
    series: dict[str, str] = {}
    for name in ("chat", "batch", "plain"):
        serving = f'namespace="ai", inference_deployment="{name}", pod="{name}-worker-0"'
        # TTFT P95 0.96 s (all in (0.25, 1]); end-to-end P95 9.6 s (all in (2.5, 10]).
        series |= _histogram("ray_vllm_time_to_first_token_seconds", serving, {"0.25": 0, "1": 10, "+Inf": 10})
        series |= _histogram("ray_vllm_e2e_request_latency_seconds", serving, {"2.5": 0, "10": 10, "+Inf": 10})
    series |= {
        'tokenplane_inferencedeployment_latency_target_seconds{namespace="ai", inference_deployment="chat", '
        'latency="ttft", pod="tokenplane-operator-0"}': "0.5x60",
        'tokenplane_inferencedeployment_latency_target_seconds{namespace="ai", inference_deployment="batch", '
        'latency="e2e", pod="tokenplane-operator-0"}': "30x60",
    }
    alerts_firing(
        tmp_path,
        rules({"monitoring": {"alerts": {"enabled": True, "p95For": "10m"}}}),
        series,
        alert="TokenplaneLatencyP95OverTarget",
        at="30m",
        expected=[
            {"severity": "warning", "namespace": "ai", "inference_deployment": "chat", "latency": "ttft"},
            {"severity": "warning", "namespace": "ai", "inference_deployment": "plain", "latency": "e2e"},
        ],
    )


def test_an_operator_failover_does_not_reset_the_latency_alert(tmp_path: Path) -> None:
    """Only the operator replica holding the peering exports the target; when it dies the series stop until the
    standby takes over (60 s and a reconcile). The alert read the target at each instant: the gap resolved a firing
    alert, restarted its 10 min `for`, and judged the deployment by the chart-wide fallback meanwhile."""
    labels = 'namespace="ai", inference_deployment="chat", pod="chat-worker-0"'
    series = _histogram("ray_vllm_time_to_first_token_seconds", labels, {"0.25": 0, "1": 10, "+Inf": 10})
    series |= _histogram("ray_vllm_e2e_request_latency_seconds", labels, {"2.5": 0, "10": 10, "+Inf": 10})
    target = 'tokenplane_inferencedeployment_latency_target_seconds{namespace="ai", inference_deployment="chat"'
    # Prometheus marks a vanished target's series stale at once: no 5 min lookback bridges the gap.
    series[target + ', latency="ttft", pod="tokenplane-operator-0"}'] = "0.5x25 stale"  # minutes 0-25
    series[target + ', latency="ttft", pod="tokenplane-operator-1"}'] = "_x28 0.5x10"  # from minute 28
    alerts_firing(
        tmp_path,
        rules({"monitoring": {"alerts": {"enabled": True, "p95For": "10m"}}}),
        series,
        alert="TokenplaneLatencyP95OverTarget",
        at="30m",
        expected=[{"severity": "warning", "namespace": "ai", "inference_deployment": "chat", "latency": "ttft"}],
    )


@pytest.mark.parametrize(
    ("before", "after", "at"),
    [
        ("1x10 0x15 stale", "_x28 0x20", "30m"),  # not Ready since minute 10, across the gap: fires from minute 20
        ("1x20 stale", "_x22 0x20", "33m"),  # Ready until the failover, not Ready after it: fires 10 min later
    ],
    ids=["outage-across-failover", "outage-from-failover"],
)
def test_an_operator_failover_does_not_delay_the_not_serving_alert(
    tmp_path: Path, before: str, after: str, at: str
) -> None:
    """The readiness gauge stops during a failover as the latency target does: the outage alert resolved and waited
    notServingFor again; and the last value before the gap must not hide the new one after it."""
    gauge = (
        'tokenplane_inferencedeployment_ready{namespace="ai", inference_deployment="chat", pod="tokenplane-operator-'
    )
    series = {gauge + '0"}': before, gauge + '1"}': after}
    alerts_firing(
        tmp_path,
        rules({"monitoring": {"alerts": {"enabled": True, "notServingFor": "10m"}}}),
        series,
        alert="TokenplaneDeploymentNotServing",
        at=at,
        expected=[{"severity": "critical", "namespace": "ai", "inference_deployment": "chat"}],
    )


def test_the_token_spike_alert_waits_for_a_day_of_history(tmp_path: Path) -> None:
    """The baseline is the rate over the day before the last 15 min: for a deployment created 1.5 h ago that rate
    spread its 1.25 h of tokens over 24 h, so its steady 200 tokens/s read as 19 times its "daily average" and paged.
    A day-old deployment that jumps from 200 to 1,000 tokens/s still does."""
    series: dict[str, str] = {}
    for name, tokens, created in (
        ("old", "0+12000x1470 17700000+60000x90", 0),  # 200 tokens/s for 24.5 h, then 1,000
        ("young", "_x1440 0+12000x120", 86400),  # created at 24 h: 200 tokens/s since
    ):
        labels = f'namespace="ai", inference_deployment="{name}", pod="{name}-worker-0"'
        series[f"ray_vllm_generation_tokens_total{{{labels}}}"] = tokens
        series[f"ray_vllm_prompt_tokens_total{{{labels}}}"] = "0x1560" if name == "old" else "_x1440 0x120"
        operator = f'namespace="ai", inference_deployment="{name}", pod="tokenplane-operator-0"'
        series[f"tokenplane_inferencedeployment_created_timestamp_seconds{{{operator}}}"] = f"{created}x1560"
    alerts_firing(
        tmp_path,
        rules({"monitoring": {"alerts": {"enabled": True}}}),
        series,
        alert="TokenplaneTokenRateSpike",
        at="1530m",
        expected=[{"severity": "warning", "namespace": "ai", "inference_deployment": "old"}],
    )


def test_team_scoped_releases_scrape_and_judge_only_their_namespaces(tmp_path: Path) -> None:
    """Each release's serving PodMonitor scraped every namespace: with two team-scoped releases every serving pod was
    scraped twice (a `job` each) and every sum over a deployment counted its tokens twice. Their alerts judged every
    namespace's deployments too, each with its own thresholds."""
    series: dict[str, str] = {}
    for team in ("team-a", "team-b"):
        labels = f'namespace="{team}", inference_deployment="chat", pod="chat-worker-0"'
        series |= _histogram("ray_vllm_e2e_request_latency_seconds", labels, {"2.5": 0, "10": 10, "+Inf": 10})
    for team in ("team-a", "team-b"):
        values = {
            "operator": {"watchNamespaces": [team]},
            "monitoring": {"podMonitor": {"enabled": True}, "alerts": {"enabled": True}},
        }
        objects = render(values, namespace=f"{team}-ops", name="tokenplane")
        (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [team]}
        found = [
            r for g in next(o for o in objects if o["kind"] == "PrometheusRule")["spec"]["groups"] for r in g["rules"]
        ]
        for rule in found:
            metric_names(rule["expr"])  # still PromQL
        labels = {"severity": "warning", "namespace": team, "inference_deployment": "chat", "latency": "e2e"}
        scratch = tmp_path / team
        scratch.mkdir()
        alerts_firing(scratch, found, series, alert="TokenplaneLatencyP95OverTarget", at="30m", expected=[labels])
    (everywhere,) = [o for o in render({"monitoring": {"podMonitor": {"enabled": True}}}) if o["kind"] == "PodMonitor"]
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}, "a cluster-wide release scrapes every namespace"


def test_bad_promql_is_caught_by_this_parser() -> None:
    with pytest.raises(ValueError):
        metric_names("sum by (le (rate(x[5m]))")


def test_podmonitor_labels_what_the_queries_group_by() -> None:
    values = yaml.safe_load((CHART / "ci" / "monitoring-values.yaml").read_text())
    monitor = next(
        o for o in render(values) if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-serving")
    )
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["relabelings"][0]["targetLabel"] == "inference_deployment"
    deployment = next(o for o in render(values) if o["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    # By name, as KubeRay names the port on a worker the operator renders without ports (test_chart.py checks every
    # rendered pod): 8080, where the operator scrapes.
    worker = with_metrics_port({"spec": {"containers": [{"name": "ray-worker"}]}})
    named = {p["name"]: p["containerPort"] for p in worker["spec"]["containers"][0]["ports"]}
    assert str(named[endpoint["port"]]) == env["TOKENPLANE_METRICS_PORT"], "scraped where the operator scrapes"


def test_operator_monitor_scrapes_the_port_the_operator_serves_and_the_policy_admits() -> None:
    values = yaml.safe_load((CHART / "ci" / "monitoring-values.yaml").read_text())
    objects = render(values)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["TOKENPLANE_OPERATOR_METRICS_PORT"])
    monitor = next(
        o for o in objects if o["kind"] == "PodMonitor" and o["metadata"]["name"] == deployment["metadata"]["name"]
    )
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[endpoint["port"]] == port, "the monitor's named port is the operator's metrics port"
    assert endpoint["honorLabels"] is True, "the series keep the InferenceDeployment's namespace"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    admitted = [rule for rule in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in rule["ports"]]
    assert len(admitted) == 1 and admitted[0]["from"], "only the Prometheus namespaces may scrape it"
    selector = admitted[0]["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert selector["key"] == "kubernetes.io/metadata.name" and selector["values"] == ["monitoring", "kube-system"]
    assert not any(
        o["kind"] == "PodMonitor" and o["metadata"]["name"] == deployment["metadata"]["name"] for o in render({})
    )
