"""Economics from Prometheus text: the arithmetic, checked on known histograms and counters."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenplane_operator.converge.economics import (
    E2E_LATENCY,
    OUTPUT_TOKENS,
    RESPONSE_CACHE_HITS,
    RESPONSE_CACHE_MISSES,
    Scrape,
    compute_economics,
    gpus_in_pods,
    histogram_quantile,
    merge_window,
    parse_scrape,
)

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def _exposition(output: float, prompt: float, buckets: dict[str, float], hits: float, queries: float) -> str:
    lines = [
        "# TYPE ray_vllm_generation_tokens_total counter",
        f'ray_vllm_generation_tokens_total{{ReplicaId="a"}} {output / 2}',
        f'ray_vllm_generation_tokens_total{{ReplicaId="b"}} {output / 2}',
        "# TYPE ray_vllm_prompt_tokens_total counter",
        f"ray_vllm_prompt_tokens_total {prompt}",
        "# TYPE ray_vllm_prefix_cache_hits_total counter",
        f"ray_vllm_prefix_cache_hits_total {hits}",
        "# TYPE ray_vllm_prefix_cache_queries_total counter",
        f"ray_vllm_prefix_cache_queries_total {queries}",
        "# TYPE ray_vllm_e2e_request_latency_seconds histogram",
    ]
    lines += [f'ray_vllm_e2e_request_latency_seconds_bucket{{le="{le}"}} {n}' for le, n in buckets.items()]
    total = buckets["+Inf"]
    lines += [f"ray_vllm_e2e_request_latency_seconds_count {total}", "ray_vllm_e2e_request_latency_seconds_sum 1"]
    return "\n".join(lines) + "\n"


def test_throughput_mix_hits_and_tail_latency() -> None:
    zero = {"0.5": 0, "1.0": 0, "2.0": 0, "+Inf": 0}
    before = parse_scrape(_exposition(1000, 4000, zero, 0, 0))
    # 100 requests: 50 under 0.5 s, 40 more under 1 s, 10 more under 2 s.
    after = parse_scrape(_exposition(8200, 6400, {"0.5": 50, "1.0": 90, "2.0": 100, "+Inf": 100}, 600, 2400))
    metrics = compute_economics(before, after, elapsed_s=60, gpus=2, now=NOW)
    assert metrics.tokens_per_second_per_gpu == 60.0  # 7200 tokens / 60 s / 2 GPUs
    assert metrics.tokens_per_gpu_hour == 216_000
    assert metrics.output_input_token_ratio == 3.0
    assert metrics.kv_cache_hit_rate == 0.25
    assert metrics.p95_latency_ms == 1500.0  # rank 95 lies halfway through the (1, 2] bucket
    assert metrics.p99_latency_ms == 1900.0
    assert metrics.p95_ttft_ms is None and metrics.gpu_utilization is None
    assert metrics.updated_at == NOW


def test_cpu_replicas_report_per_replica_and_resets_count_from_zero() -> None:
    before = parse_scrape(_exposition(5000, 10, {"+Inf": 0}, 0, 0))
    after = parse_scrape(_exposition(300, 10, {"+Inf": 0}, 0, 0))  # the replica restarted
    metrics = compute_economics(before, after, elapsed_s=10, gpus=0, now=NOW)
    assert metrics.tokens_per_second_per_gpu == 30.0
    assert metrics.output_input_token_ratio is None and metrics.p95_latency_ms is None


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=8), st.floats(0.01, 0.99))
def test_quantile_stays_within_the_buckets_and_is_monotonic(counts: list[int], q: float) -> None:
    cumulative: dict[float, float] = {}
    running = 0
    for index, count in enumerate(counts):
        running += count
        cumulative[float(index + 1)] = running
    cumulative[float("inf")] = running
    value = histogram_quantile(q, cumulative)
    if running == 0:
        assert value is None
        return
    assert value is not None and 0 <= value <= len(counts)
    higher = histogram_quantile(min(q + 0.005, 1.0), cumulative)
    assert higher is not None and higher >= value - 1e-9


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_quantile_matches_promql_on_an_even_histogram(q: float) -> None:
    # 100 observations spread evenly over (0, 10]: PromQL's estimate is q * 10.
    cumulative = {float(le): le * 10.0 for le in range(1, 11)} | {float("inf"): 100.0}
    assert histogram_quantile(q, cumulative) == pytest.approx(q * 10)


def _tokens(output: float) -> Scrape:
    return Scrape({OUTPUT_TOKENS: output}, {})


def test_window_spans_only_pods_seen_at_both_ends_and_restarts_count_from_zero() -> None:
    before = {"a": _tokens(100), "b": _tokens(500), "gone": _tokens(900)}
    after = {"a": _tokens(160), "b": _tokens(40), "new": _tokens(10_000)}
    start, end = merge_window(before, after)
    # a grew by 60; b restarted and counted 40 since; "gone" and "new" do not span the window.
    assert end.delta(start, OUTPUT_TOKENS) == 100


def test_window_sums_histogram_buckets_across_pods() -> None:
    def latency(fast: float, slow: float) -> Scrape:
        return Scrape({}, {E2E_LATENCY: {0.5: fast, float("inf"): fast + slow}})

    start, end = merge_window({"a": latency(1, 0), "b": latency(0, 1)}, {"a": latency(5, 0), "b": latency(0, 5)})
    assert end.bucket_delta(start, E2E_LATENCY) == {0.5: 4, float("inf"): 8}


def test_gpus_count_whole_gpus_and_mig_slices_as_sevenths() -> None:
    def pod(limits: dict[str, str]) -> dict[str, object]:
        return {"spec": {"containers": [{"resources": {"limits": limits}}]}}

    pods = [pod({"nvidia.com/gpu": "2"}), pod({"nvidia.com/mig-3g.40gb": "1"}), pod({"cpu": "4"}), {"spec": {}}]
    assert gpus_in_pods(pods) == pytest.approx(2 + 3 / 7)


def test_response_cache_hit_ratio_over_the_window_and_none_without_a_cache() -> None:
    def cache(hits: float, misses: float) -> Scrape:
        return Scrape({RESPONSE_CACHE_HITS: hits, RESPONSE_CACHE_MISSES: misses}, {})

    metrics = compute_economics(cache(10, 90), cache(40, 100), elapsed_s=60, gpus=1, now=NOW)
    assert metrics.response_cache_hit_ratio == 0.75  # 30 hits of 40 lookups in the window, not 40 of 140 ever
    idle = compute_economics(cache(40, 100), cache(40, 100), elapsed_s=60, gpus=1, now=NOW)
    assert idle.response_cache_hit_ratio is None
    no_cache = compute_economics(_tokens(0), _tokens(10), elapsed_s=60, gpus=1, now=NOW)
    assert no_cache.response_cache_hit_ratio is None
