"""The seeds' profitability numbers, computed from two scrapes of the serving metrics endpoint."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tokenplane_operator.api.v1alpha1 import MetricsStatus

__all__ = ["Scrape", "compute_economics", "gpus_in_pods", "histogram_quantile", "merge_window", "parse_scrape"]

OUTPUT_TOKENS = "ray_vllm_generation_tokens_total"
INPUT_TOKENS = "ray_vllm_prompt_tokens_total"
E2E_LATENCY = "ray_vllm_e2e_request_latency_seconds"
TTFT = "ray_vllm_time_to_first_token_seconds"
PREFIX_HITS = "ray_vllm_prefix_cache_hits_total"
PREFIX_QUERIES = "ray_vllm_prefix_cache_queries_total"
RESPONSE_CACHE_HITS = "ray_tokenplane_response_cache_hits_total"
RESPONSE_CACHE_MISSES = "ray_tokenplane_response_cache_misses_total"
# A MIG slice `nvidia.com/mig-<g>g.<mem>gb` is g of the GPU's 7 compute slices (A100, H100, H200).
_MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(?P<slices>[1-7])g\.")


class Scrape:
    """One scrape: counter totals and histogram buckets, summed over replicas and models."""

    def __init__(self, totals: dict[str, float], buckets: dict[str, dict[float, float]]) -> None:
        self.totals = totals
        self.buckets = buckets

    def delta(self, earlier: Scrape, name: str) -> float:
        """Increase of a counter since `earlier` (a counter reset counts from zero)."""
        now, then = self.totals.get(name, 0.0), earlier.totals.get(name, 0.0)
        return now - then if now >= then else now

    def bucket_delta(self, earlier: Scrape, name: str) -> dict[float, float]:
        """Per-bucket increase of a histogram since `earlier`."""
        now, then = self.buckets.get(name, {}), earlier.buckets.get(name, {})
        return {le: count - then.get(le, 0.0) for le, count in now.items()}


def parse_scrape(text: str) -> Scrape:
    """Parse Prometheus exposition text into the totals the economics need.

    Args:
        text: the body of a `/metrics` response.

    Returns:
        Counter totals and cumulative histogram buckets, each summed over every label set.
    """
    totals: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.name.removesuffix("_bucket")][float(sample.labels["le"])] += sample.value
            else:
                totals[sample.name] += sample.value
    return Scrape(dict(totals), {name: dict(b) for name, b in buckets.items()})


def histogram_quantile(quantile: float, cumulative: dict[float, float]) -> float | None:
    """Estimate a quantile from cumulative buckets, interpolating linearly as PromQL's histogram_quantile does.

    Args:
        quantile: between 0 and 1.
        cumulative: upper bound (`le`) -> cumulative count, including `+Inf`.

    Returns:
        The estimate, or None when the histogram saw nothing.
    """
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = quantile * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the last finite bucket: PromQL answers with that bucket's bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def compute_economics(before: Scrape, after: Scrape, *, elapsed_s: float, gpus: float, now: datetime) -> MetricsStatus:
    """Turn two scrapes into the status metrics: throughput per GPU, tail latency, token mix, cache hit ratios.

    Args:
        before: the earlier scrape.
        after: the later scrape.
        elapsed_s: seconds between them.
        gpus: GPUs behind the scraped replicas; 0 (CPU) reports per replica.
        now: when `after` was taken.

    Returns:
        The MetricsStatus; a field is None when the window holds no data for it. GPU utilization needs DCGM
        and is left None here.
    """
    output = after.delta(before, OUTPUT_TOKENS)
    prompt = after.delta(before, INPUT_TOKENS)
    per_second = output / elapsed_s / max(gpus, 1.0) if elapsed_s > 0 else None
    e2e = after.bucket_delta(before, E2E_LATENCY)
    ttft = after.bucket_delta(before, TTFT)
    queries = after.delta(before, PREFIX_QUERIES)
    cache_hits = after.delta(before, RESPONSE_CACHE_HITS)
    lookups = cache_hits + after.delta(before, RESPONSE_CACHE_MISSES)

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000.0, 1)

    return MetricsStatus(
        tokens_per_second_per_gpu=None if per_second is None else round(per_second, 2),
        tokens_per_gpu_hour=None if per_second is None else round(per_second * 3600.0),
        p95_latency_ms=ms(histogram_quantile(0.95, e2e)),
        p99_latency_ms=ms(histogram_quantile(0.99, e2e)),
        p95_ttft_ms=ms(histogram_quantile(0.95, ttft)),
        output_input_token_ratio=round(output / prompt, 3) if prompt > 0 else None,
        kv_cache_hit_rate=round(after.delta(before, PREFIX_HITS) / queries, 4) if queries > 0 else None,
        response_cache_hit_ratio=round(cache_hits / lookups, 4) if lookups > 0 else None,
        updated_at=now,
    )


def merge_window(before: Mapping[str, Scrape], after: Mapping[str, Scrape]) -> tuple[Scrape, Scrape]:
    """Sum per-pod scrapes into one window over the pods seen at both ends.

    A pod that appeared since `before` starts counting at the next window; a pod whose counters went
    down (its process restarted) counts from zero, so a replaced replica never makes a window negative.

    Args:
        before: pod name -> scrape at the start of the window.
        after: pod name -> scrape at the end.

    Returns:
        The summed (start, end) scrapes.
    """
    empty = Scrape({}, {})
    starts: list[Scrape] = []
    ends: list[Scrape] = []
    for pod in sorted(before.keys() & after.keys()):
        start, end = before[pod], after[pod]
        restarted = any(end.totals.get(name, 0.0) < value for name, value in start.totals.items())
        starts.append(empty if restarted else start)
        ends.append(end)
    return _sum(starts), _sum(ends)


def _sum(scrapes: Iterable[Scrape]) -> Scrape:
    totals: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for scrape in scrapes:
        for name, value in scrape.totals.items():
            totals[name] += value
        for name, cumulative in scrape.buckets.items():
            for le, count in cumulative.items():
                buckets[name][le] += count
    return Scrape(dict(totals), {name: dict(b) for name, b in buckets.items()})


def gpus_in_pods(pods: Iterable[Mapping[str, Any]]) -> float:
    """Count the GPUs the pods hold: whole `nvidia.com/gpu` plus MIG slices as sevenths of a GPU.

    Args:
        pods: Pod objects as the API server returns them.

    Returns:
        GPUs, possibly fractional; 0 for CPU-only pods.
    """
    total = 0.0
    for pod in pods:
        for container in (pod.get("spec") or {}).get("containers") or []:
            limits = (container.get("resources") or {}).get("limits") or {}
            for resource, quantity in limits.items():
                if resource == "nvidia.com/gpu":
                    total += float(quantity)
                elif match := _MIG_RESOURCE.match(resource):
                    total += float(quantity) * int(match["slices"]) / 7
    return total
