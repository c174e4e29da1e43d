"""The Grafana dashboard of the chart, built with grafana-foundation-sdk: the seeds' profitability figures.

`make dashboard` writes `charts/tokenplane/dashboards/tokenplane.json`; the chart ships it as a ConfigMap that
Grafana's sidecar discovers. Every query reads the series the serving pods export (docs/metrics.md, checked against
a live scrape in the serving tests), labelled by the chart's PodMonitor with `namespace` and `inference_deployment`;
the readiness and replica-bound panels read the operator's own gauges (same labels, `monitoring.operatorMonitor`);
the GPU utilization panel reads NVIDIA's DCGM exporter where it runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["DCGM_METRICS", "PANELS", "Panel", "build_dashboard", "main"]

# The label the PodMonitor copies from the pods' `tokenplane.io/deployment` label, and the dashboard's filter.
BY = "namespace, inference_deployment"
SEL = 'namespace=~"$namespace", inference_deployment=~"$inference_deployment"'
# Series from outside the serving app, and who exports them.
DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL": "NVIDIA DCGM exporter (GPU nodes with the GPU operator or dcgm-exporter)"}


@dataclass(frozen=True)
class Panel:
    """One time-series panel: its title, unit (Grafana's unit ids), description and (legend, PromQL) queries."""

    title: str
    unit: str
    description: str
    queries: tuple[tuple[str, str], ...]


# dcgm-exporter labels each GPU's series with the namespace and pod using it; scraped with honorLabels false (its
# chart's and the GPU operator's ServiceMonitor default) Prometheus renames them exported_namespace and exported_pod,
# and `namespace` is then the exporter's own. Both spellings are read, as `namespace` and `pod`.
_DCGM_BY_POD = (
    'avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{namespace=~"$namespace", pod!=""})'
    " or avg by (namespace, pod) (label_replace(label_replace("
    'DCGM_FI_DEV_GPU_UTIL{exported_namespace=~"$namespace", exported_pod!=""},'
    ' "namespace", "$1", "exported_namespace", "(.+)"), "pod", "$1", "exported_pod", "(.+)"))'
)


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {BY}) (rate({histogram}_bucket{{{SEL}}}[5m])))"


PANELS: tuple[Panel, ...] = (
    Panel(
        "Output tokens per GPU-hour",
        "short",
        "Tokens one GPU-hour buys at the current load; divide the GPU's hourly price by it for the cost per token. "
        "Empty for CPU deployments, which hold no GPU.",
        (
            (
                "{{inference_deployment}}",
                # Only deployments holding GPUs: a CPU one's 0 made the quotient +Inf.
                f"sum by ({BY}) (rate(ray_vllm_generation_tokens_total{{{SEL}}}[5m])) * 3600"
                f" / (sum by ({BY}) (ray_tokenplane_replica_gpus{{{SEL}}}) > 0)",
            ),
        ),
    ),
    Panel(
        "Output tokens/s per GPU",
        "short",
        "Per replica, over the last 60 s (per replica on CPU, where a replica holds no GPU).",
        (("{{inference_deployment}}", f"avg by ({BY}) (ray_tokenplane_output_tokens_per_second_per_gpu{{{SEL}}})"),),
    ),
    Panel(
        "Time to first token, P95 and P99",
        "s",
        "From arrival at the engine; the latency target of scaling.latencyTarget (metric ttft) is the P95.",
        (
            ("P95 {{inference_deployment}}", _quantile(0.95, "ray_vllm_time_to_first_token_seconds")),
            ("P99 {{inference_deployment}}", _quantile(0.99, "ray_vllm_time_to_first_token_seconds")),
        ),
    ),
    Panel(
        "End-to-end latency, P95 and P99",
        "s",
        "Whole requests in the engine.",
        (
            ("P95 {{inference_deployment}}", _quantile(0.95, "ray_vllm_e2e_request_latency_seconds")),
            ("P99 {{inference_deployment}}", _quantile(0.99, "ray_vllm_e2e_request_latency_seconds")),
        ),
    ),
    Panel(
        "Output/input token ratio",
        "short",
        "Generated tokens per prompt token: prefill-heavy (RAG) below 0.1, generation-heavy above 1.",
        (
            (
                "{{inference_deployment}}",
                f"sum by ({BY}) (rate(ray_vllm_generation_tokens_total{{{SEL}}}[5m]))"
                f" / sum by ({BY}) (rate(ray_vllm_prompt_tokens_total{{{SEL}}}[5m]))",
            ),
        ),
    ),
    Panel(
        "KV-cache (prefix) hit rate",
        "percentunit",
        "Prompt tokens found in the prefix cache: what prefix-affinity routing and shared system prompts save.",
        (
            (
                "{{inference_deployment}}",
                f"sum by ({BY}) (rate(ray_vllm_prefix_cache_hits_total{{{SEL}}}[5m]))"
                f" / sum by ({BY}) (rate(ray_vllm_prefix_cache_queries_total{{{SEL}}}[5m]))",
            ),
        ),
    ),
    Panel(
        "Response-cache hit ratio",
        "percentunit",
        "Qualifying requests answered from the response cache (spec.endpoint.cache) without reaching the engine; "
        "empty for deployments without a cache.",
        (
            (
                "{{inference_deployment}}",
                f"sum by ({BY}) (rate(ray_tokenplane_response_cache_hits_total{{{SEL}}}[5m]))"
                f" / (sum by ({BY}) (rate(ray_tokenplane_response_cache_hits_total{{{SEL}}}[5m]))"
                f" + sum by ({BY}) (rate(ray_tokenplane_response_cache_misses_total{{{SEL}}}[5m])))",
            ),
        ),
    ),
    Panel(
        "Tokens saved by the response cache",
        "short",
        "Prompt + completion tokens per second that cache hits spared the engine; Redis errors (each a miss) beside.",
        (
            (
                "saved {{inference_deployment}}",
                f"sum by ({BY}) (rate(ray_tokenplane_response_cache_saved_tokens_total{{{SEL}}}[5m]))",
            ),
            (
                "Redis errors/s {{inference_deployment}}",
                f"sum by ({BY}) (rate(ray_tokenplane_response_cache_errors_total{{{SEL}}}[5m]))",
            ),
        ),
    ),
    Panel(
        "KV-cache usage",
        "percentunit",
        "Share of KV-cache blocks in use; near 1 requests start waiting inside the engine.",
        (("{{inference_deployment}}", f"max by ({BY}) (ray_vllm_kv_cache_usage_perc{{{SEL}}})"),),
    ),
    Panel(
        "Queue depth",
        "short",
        "Requests waiting in the replicas for a slot (max_ongoing_requests busy; with direct streaming Ray Serve's "
        "own queue gauge stays 0) and inside the engine (vLLM, KV-cache pressure).",
        (
            ("replicas {{inference_deployment}}", f"sum by ({BY}) (ray_tokenplane_replica_waiting_requests{{{SEL}}})"),
            ("engine {{inference_deployment}}", f"sum by ({BY}) (ray_vllm_num_requests_waiting{{{SEL}}})"),
        ),
    ),
    Panel(
        "Replicas",
        "short",
        "Serving replicas (each exports one replica-GPU gauge).",
        (("{{inference_deployment}}", f"count by ({BY}) (ray_tokenplane_replica_gpus{{{SEL}}})"),),
    ),
    Panel(
        "Replicas against maxReplicas (operator)",
        "short",
        "From the operator: ready and wanted replicas, and spec.scaling's bounds; wanted at max means the ceiling "
        "holds the deployment back.",
        (
            (
                "ready {{inference_deployment}}",
                f"max by ({BY}) (tokenplane_inferencedeployment_replicas_ready{{{SEL}}})",
            ),
            (
                "wanted {{inference_deployment}}",
                f"max by ({BY}) (tokenplane_inferencedeployment_replicas_desired{{{SEL}}})",
            ),
            ("max {{inference_deployment}}", f"max by ({BY}) (tokenplane_inferencedeployment_max_replicas{{{SEL}}})"),
            ("min {{inference_deployment}}", f"max by ({BY}) (tokenplane_inferencedeployment_min_replicas{{{SEL}}})"),
        ),
    ),
    Panel(
        "Deployment Ready (operator)",
        "short",
        "1 while the InferenceDeployment's Ready condition is True; 0 while it provisions, deploys or is stalled.",
        (("{{inference_deployment}}", f"max by ({BY}) (tokenplane_inferencedeployment_ready{{{SEL}}})"),),
    ),
    Panel(
        "Scale events (per hour)",
        "short",
        "How often the replica count changed in the last hour.",
        (
            (
                "{{inference_deployment}}",
                f"changes((count by ({BY}) (ray_tokenplane_replica_gpus{{{SEL}}}))[1h:1m])",
            ),
        ),
    ),
    Panel(
        "Requests by HTTP status",
        "reqps",
        "At the Serve proxy, rejections (401, 413, 429, 503) included.",
        (
            (
                "{{status_code}} {{inference_deployment}}",
                f"sum by ({BY}, status_code) (rate(ray_serve_num_http_requests_total{{{SEL}}}[5m]))",
            ),
        ),
    ),
    Panel(
        "GPU utilization (DCGM)",
        "percent",
        "Needs NVIDIA's DCGM exporter on the GPU nodes; empty without it. Per serving pod, whether the exporter's "
        "scrape keeps its pod labels (honorLabels) or Prometheus renamed them exported_namespace and exported_pod.",
        (("{{pod}}", _DCGM_BY_POD),),
    ),
)


def build_dashboard() -> dict[str, Any]:
    """Build the dashboard (Grafana's JSON model) from `PANELS`."""
    from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (
        dashboard.Dashboard("tokenplane: inference economics")
        .uid("tokenplane-economics")
        .tags(["tokenplane", "llm", "vllm", "ray"])
        .refresh("1m")
        .time("now-6h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("namespace")
            .datasource(source)
            .query("label_values(ray_tokenplane_replica_gpus, namespace)")
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            dashboard.QueryVariable("inference_deployment")
            .label("InferenceDeployment")
            .datasource(source)
            .query('label_values(ray_tokenplane_replica_gpus{namespace=~"$namespace"}, inference_deployment)')
            .multi(True)
            .include_all(True)
        )
    )
    for panel in PANELS:
        built = timeseries.Panel().title(panel.title).description(panel.description).unit(panel.unit)
        built = built.datasource(source).height(8).span(12)
        for ref, (legend, expr) in zip("ABCDEFGH", panel.queries, strict=False):
            built = built.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        board = board.with_panel(built)
    result: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return result


def main() -> None:
    """Print the dashboard JSON (`make dashboard` writes it into the chart)."""
    sys.stdout.write(json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
