"""The operator's /metrics exposition: every per-deployment value becomes a series, and unknowns stay absent."""

import re
from dataclasses import fields
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tokenplane_operator.adapters.exporter import REGISTRY, DeploymentGaugeSet
from tokenplane_operator.converge.gauges import DeploymentGauges

READY = DeploymentGauges(
    ready=True,
    stalled=False,
    quota_insufficient=None,
    replicas_ready=2,
    replicas_desired=3,
    min_replicas=1,
    max_replicas=3,
    node_pool="tpabc",
    node_pool_state="Succeeded",
    scaled=True,
    waiting_for_capacity=False,
    latency_target_seconds=0.8,
    latency_target_metric="ttft",
    created_timestamp_seconds=1_764_320_000.0,
)


def exposition(gauges: DeploymentGaugeSet) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(gauges)
    page = generate_latest(registry).decode()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(page)}


def test_every_gauge_field_is_exported_with_the_deployment_labels() -> None:
    gauges = DeploymentGaugeSet()
    gauges.record("team", "m1", READY)
    page = exposition(gauges)
    key = {"namespace": "team", "inference_deployment": "m1"}
    expected = {
        f"tokenplane_inferencedeployment_{f.name}": getattr(READY, f.name)
        for f in fields(DeploymentGauges)
        if f.name not in ("node_pool", "node_pool_state", "quota_insufficient")
        and not f.name.startswith("latency_target")
    }
    for name, wanted in expected.items():
        assert page[name] == [(key, float(wanted))], name
    assert page["tokenplane_inferencedeployment_quota_insufficient"] == [], "Unknown exports no series"
    assert page["tokenplane_inferencedeployment_node_pool_state"] == [
        (key | {"node_pool": "tpabc", "state": "Succeeded"}, 1.0)
    ]
    assert page["tokenplane_inferencedeployment_latency_target_seconds"] == [(key | {"latency": "ttft"}, 0.8)]
    assert set(page) == set(expected) | {
        "tokenplane_inferencedeployment_quota_insufficient",
        "tokenplane_inferencedeployment_node_pool_state",
        "tokenplane_inferencedeployment_latency_target_seconds",
    }, "a DeploymentGauges field without a gauge, or a gauge without a field"


def test_a_forgotten_deployment_leaves_no_series() -> None:
    gauges = DeploymentGaugeSet()
    gauges.record("team", "m1", READY)
    gauges.record("team", "m2", READY)
    gauges.forget("team", "m1")
    page = exposition(gauges)
    assert [labels["inference_deployment"] for labels, _ in page["tokenplane_inferencedeployment_ready"]] == ["m2"]


def test_the_metrics_doc_lists_exactly_the_operator_families() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    documented = dict(re.findall(r"^\| `(tokenplane_[a-z_]+)` \| (\w+) \|", doc, flags=re.MULTILINE))
    suffix = {"counter": "_total", "histogram": "", "gauge": ""}
    exported = {f.name + suffix[f.type]: f.type for f in REGISTRY.collect() if f.name.startswith("tokenplane_")}
    assert documented == exported
