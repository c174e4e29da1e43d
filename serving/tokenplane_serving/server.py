"""The LLMServer replica: the feature layer on vLLM's app, local LoRA adapters, honest readiness, metrics."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from fastapi import HTTPException, status
from ray import serve
from ray.serve import metrics
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer, PDDecodeServer
from vllm.v1.metrics.loggers import AggregateStatLoggerBase

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.autoscale import LATENCY_SERIES, latency_histogram
from tokenplane_serving.features import FeatureContext, install
from tokenplane_serving.mapping import build_lora_adapter_paths
from tokenplane_serving.occupancy import OCCUPANCY, Occupancy
from tokenplane_serving.ray_internals import (
    DiskMultiplexConfig,
    LoraModelLoader,
    engine_client,
    start_llm_telemetry_agent,
)

__all__ = ["EngineStats", "LocalLoraLoader", "TokenplaneLLMServer", "TokenplanePDDecodeServer", "TokenplaneServerMixin"]

logger = logging.getLogger(__name__)

# Throughput and hit ratio are averaged over this window: long enough to smooth batch steps,
# short enough that a dashboard sees a load change within a minute.
_WINDOW_S = 60.0
# A completion (probe or client traffic) newer than this proves the replica can generate.
_READY_TTL_S = 15.0
_PROBE_TIMEOUT_S = 8.0  # below Ray Serve LLM's 10 s health_check_timeout_s
_LATENCY_SAMPLES = 4096
# How often the gauges are refreshed besides engine steps: an idle engine makes no steps, and the waiting gauge
# must fall back to 0 when the queue drains.
_PUBLISH_S = 0.5
# Latencies the autoscaling histogram covers: a few metric pushes (10 s each), so a breach shows within one
# push and is gone soon after the fleet has grown.
_LATENCY_WINDOW_S = 30.0


class EngineStats:
    """Per-replica counters fed by vLLM's stat loop and read by metrics, readiness and autoscaling.

    vLLM's own Prometheus logger (re-exported by Ray as `ray_vllm_*`) already covers tokens, latency
    histograms, queue and KV usage; this adds only what it lacks: windowed tokens/s per GPU, tokens per
    GPU-hour, the prefix-cache hit ratio, latency percentiles for the autoscaling policy, and the requests waiting
    in the replica for a slot (`tokenplane_serving.occupancy`), which no Ray or vLLM metric sees with direct streaming.
    """

    def __init__(self, gpus: float, model_id: str, occupancy: Occupancy = OCCUPANCY) -> None:
        """Create the stats holder and its Ray metrics.

        Args:
            gpus: GPUs this replica holds; 0 on CPU replicas, whose per-GPU figures are per replica.
            model_id: The served model name (metric tag).
            occupancy: The replica's request counts (the process-wide one by default).
        """
        self.gpus = gpus
        self.occupancy = occupancy
        self._per = gpus if gpus > 0 else 1.0
        self._lock = threading.Lock()
        self._window: collections.deque[tuple[float, int, int, int]] = collections.deque()
        self._sums = [0, 0, 0]  # generated, queries, hits over `_window`: a snapshot costs O(1), not O(steps)
        self._ttft: collections.deque[tuple[float, float]] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._e2e: collections.deque[tuple[float, float]] = collections.deque(maxlen=_LATENCY_SAMPLES)
        # Per finished request: its wait before its prefill began (vLLM's queued_time), and its prefill.
        self._wait: collections.deque[tuple[float, float]] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._prefill: collections.deque[tuple[float, float]] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self.last_token_time = 0.0
        self.running = 0
        self.waiting = 0
        keys = ("model_name",)
        self._g_gpus = metrics.Gauge("tokenplane_replica_gpus", "GPUs held by the replica (0: CPU).", tag_keys=keys)
        self._g_tps = metrics.Gauge(
            "tokenplane_output_tokens_per_second_per_gpu",
            f"Generated tokens per second per GPU over {_WINDOW_S:.0f} s (per replica on CPU).",
            tag_keys=keys,
        )
        self._g_gpu_hour = metrics.Gauge(
            "tokenplane_output_tokens_per_gpu_hour",
            "Generated tokens per GPU-hour at the current rate (per replica-hour on CPU).",
            tag_keys=keys,
        )
        self._g_hit = metrics.Gauge(
            "tokenplane_prefix_cache_hit_ratio",
            f"Prompt tokens served from the prefix cache / prompt tokens looked up, over {_WINDOW_S:.0f} s.",
            tag_keys=keys,
        )
        self._g_waiting = metrics.Gauge(
            "tokenplane_replica_waiting_requests",
            "Requests the replica accepted that wait for a slot (max_ongoing_requests), not yet in the engine.",
            tag_keys=keys,
        )
        self._g_ongoing = metrics.Gauge(
            "tokenplane_replica_ongoing_requests",
            "Requests holding a replica slot (in tokenplane's features or vLLM), at most max_ongoing_requests.",
            tag_keys=keys,
        )
        gauges = (self._g_gpus, self._g_tps, self._g_gpu_hour, self._g_hit, self._g_waiting, self._g_ongoing)
        for gauge in gauges:
            gauge.set_default_tags({"model_name": model_id})  # Serve adds its tags to the dict it gets
        self._g_gpus.set(gpus)

    def record(self, now: float, generated: int, queries: int, hits: int) -> None:
        """Add one engine step's numbers (the gauges follow on the next `publish`)."""
        with self._lock:
            self._window.append((now, generated, queries, hits))
            sums = self._sums
            sums[0] += generated
            sums[1] += queries
            sums[2] += hits
            self._evict(now)
            if generated:
                self.last_token_time = now

    def _evict(self, now: float) -> None:
        window, sums = self._window, self._sums
        while window and window[0][0] < now - _WINDOW_S:
            _, generated, queries, hits = window.popleft()
            sums[0] -= generated
            sums[1] -= queries
            sums[2] -= hits

    def record_latencies(
        self,
        ttft_s: list[float],
        e2e_s: list[float],
        now: float | None = None,
        wait_s: Sequence[float] = (),
        prefill_s: Sequence[float] = (),
    ) -> None:
        """Keep recent latencies (seconds) with their time.

        Args:
            ttft_s: Times to first token of the requests that got one.
            e2e_s: End-to-end latencies of the requests that finished.
            now: The time they are recorded at (monotonic clock).
            wait_s: Of the finished requests, the time each waited before its prefill started (the part of its
                TTFT that more replicas can remove).
            prefill_s: Of the same requests, their prefill (the part their prompt itself sets).
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            self._ttft.extend((now, v) for v in ttft_s)
            self._e2e.extend((now, v) for v in e2e_s)
            self._wait.extend((now, v) for v in wait_s)
            self._prefill.extend((now, v) for v in prefill_s)

    def recent_ms(self, which: str, now: float | None = None) -> list[float]:
        """Return the `ttft`, `e2e`, `wait` or `prefill` latencies (ms) of the last `_LATENCY_WINDOW_S` seconds."""
        now = time.monotonic() if now is None else now
        series = {"ttft": self._ttft, "e2e": self._e2e, "wait": self._wait, "prefill": self._prefill}[which]
        with self._lock:
            rows = list(series)
        return [v * 1000.0 for t, v in rows if t >= now - _LATENCY_WINDOW_S]

    def snapshot(self, now: float | None = None) -> dict[str, float]:
        """Windowed rates now.

        Returns:
            `tokens_per_s_per_gpu`, `tokens_per_gpu_hour` and `prefix_cache_hit_ratio`.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            self._evict(now)
            generated, queries, hits = self._sums
            oldest = self._window[0][0] if self._window else None
        # Until a full window has passed, divide by the time actually covered.
        span = max(1.0, min(_WINDOW_S, now - oldest)) if oldest is not None else _WINDOW_S
        per_s = generated / span / self._per
        return {
            "tokens_per_s_per_gpu": per_s,
            "tokens_per_gpu_hour": per_s * 3600.0,
            "prefix_cache_hit_ratio": hits / queries if queries else 0.0,
        }

    def publish(self, now: float | None = None) -> None:
        """Push the windowed values to the Ray metric gauges."""
        snap = self.snapshot(now)
        self._g_gpus.set(self.gpus)  # re-set: a gauge set only once can miss the first export
        self._g_tps.set(snap["tokens_per_s_per_gpu"])
        self._g_gpu_hour.set(snap["tokens_per_gpu_hour"])
        self._g_hit.set(snap["prefix_cache_hit_ratio"])
        self._g_waiting.set(self.occupancy.waiting)
        self._g_ongoing.set(self.occupancy.ongoing)

    async def publish_forever(self, interval_s: float = _PUBLISH_S) -> None:
        """Publish every `interval_s`, engine steps or not (run as a task for the replica's life)."""
        while True:
            self.publish()
            await asyncio.sleep(interval_s)


class _StatsLogger(AggregateStatLoggerBase):
    """Feeds `EngineStats` from vLLM's per-step stats (runs in the replica process)."""

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        generated, queries, hits = 0, 0, 0
        if iteration_stats is not None:
            generated = iteration_stats.num_generation_tokens
            finished = iteration_stats.finished_requests
            if iteration_stats.time_to_first_tokens_iter or finished:  # most decode steps have neither
                self._stats.record_latencies(
                    list(iteration_stats.time_to_first_tokens_iter),
                    [r.e2e_latency for r in finished],
                    wait_s=[max(0.0, r.queued_time) for r in finished],
                    prefill_s=[max(0.0, r.prefill_time) for r in finished],
                )
        if scheduler_stats is not None:
            queries = scheduler_stats.prefix_cache_stats.queries
            hits = scheduler_stats.prefix_cache_stats.hits
            self._stats.running = scheduler_stats.num_running_reqs
            self._stats.waiting = scheduler_stats.num_waiting_reqs
        self._stats.record(time.monotonic(), generated, queries, hits)

    def log_engine_initialized(self) -> None:
        pass


def _replica_gpus(llm_config: LLMConfig) -> float:
    bundles = (llm_config.placement_group_config or {}).get("bundles") or []
    return float(sum(b.get("GPU", 0) for b in bundles))


class LocalLoraLoader(LoraModelLoader):
    """Resolves `<model>:<adapter>` to an adapter directory on this node (a local, PVC or blob-CSI mount).

    Ray Serve LLM 2.60 only downloads from object storage; tokenplane mounts adapters instead, so
    "loading" is a lookup. vLLM reads the weights when the adapter first joins a batch, and
    `serve.multiplexed` keeps at most `max_adapters_per_replica` per replica (LRU).
    """

    def __init__(self, adapters: dict[str, str], **kwargs: Any) -> None:
        """Create the loader.

        Args:
            adapters: Adapter name -> directory holding `adapter_config.json`.
            kwargs: What `LLMServer` passes every loader (download timeout and tries; unused here).
        """
        super().__init__(**kwargs)
        self._adapters = dict(adapters)
        self._ids: dict[str, int] = {}
        self._next_id = itertools.count(1)  # vLLM wants a positive int per adapter, unique in the engine

    async def load_model_from_config(self, lora_model_id: str, llm_config: LLMConfig) -> DiskMultiplexConfig:
        """Return the on-disk config Ray Serve LLM hands to vLLM.

        Raises:
            HTTPException: 404 if the adapter is not configured or its directory is missing.
        """
        name = lora_model_id.partition(":")[2]
        path = self._adapters.get(name)
        if path is None or not await asyncio.to_thread(os.path.isfile, os.path.join(path, "adapter_config.json")):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"LoRA adapter {name!r} is not available")
        # Stable per name, so an evicted adapter reloads under the same id.
        if lora_model_id not in self._ids:
            self._ids[lora_model_id] = next(self._next_id)
        return DiskMultiplexConfig.model_validate(
            {
                "model_id": lora_model_id,
                "max_total_tokens": None,
                "local_path": path,
                "lora_assigned_int_id": self._ids[lora_model_id],
            }
        )


def _ask_for_telemetry_agent_once_vllm_runs(timeout_s: float = 300.0) -> None:
    """Ask for Ray Serve LLM's telemetry actor, from a thread, as soon as vLLM's engine process runs.

    Ray Serve LLM blocks the replica's constructor on that actor once the engine is up. vLLM's engine process
    then imports vLLM on one core for seconds while this replica waits in vLLM's synchronous start (its event
    loop blocked, hence a thread), so the actor's new worker boots on the idle core. Asked for before the
    engine starts, that boot slowed the replica's own start by about as much as it saved.
    """

    def run() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if multiprocessing.active_children():
                    break
            except RuntimeError:  # the set of children changed while it was read; look again
                pass
            time.sleep(0.1)
        try:
            start_llm_telemetry_agent()
        except Exception as err:  # Ray's own call, once the engine runs, creates it then
            logger.warning("could not start Ray Serve LLM's telemetry actor early: %s", err)

    threading.Thread(target=run, name="tokenplane-telemetry-agent", daemon=True).start()


class TokenplaneServerMixin:
    """tokenplane's replica behaviour on any Ray Serve LLM server class (`LLMServer`, `PDDecodeServer`).

    With direct streaming this replica is the ingress and its app is vLLM's OpenAI server (or Ray's P/D
    app around it), wrapped here in `tokenplane_serving.features`. The replica is ready only once it has
    generated a token, loads mounted LoRA adapters and feeds the profitability metrics and autoscaling stats.
    """

    serving_args: ClassVar[ServingArgs | None] = None
    engine: Any

    @classmethod
    def for_args(cls, args: ServingArgs) -> type[Any]:
        """Bind this class to one deployment's args (they travel with the class to the replicas).

        Returns:
            A subclass whose `serving_args` is `args`.
        """
        return type(cls.__name__, (cls,), {"serving_args": args, "__module__": cls.__module__})

    async def __init__(self, llm_config: LLMConfig, **kwargs: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        """Start the engine, then prove it generates before Ray routes traffic here.

        Args:
            llm_config: The model's LLMConfig.
            kwargs: Passed on to `LLMServer`.
        """
        self._last_ok = 0.0
        self._last_probe_ms: float | None = None
        self._last_error: str | None = None
        self._probe_lock = asyncio.Lock()
        self.stats: EngineStats | None = None
        self._batch_running = 0
        adapters = build_lora_adapter_paths(self.serving_args) if self.serving_args else {}
        loader = functools.partial(LocalLoraLoader, adapters)
        _ask_for_telemetry_agent_once_vllm_runs()
        await super().__init__(llm_config, model_downloader=cast(Any, loader), **kwargs)  # type: ignore[misc,call-arg]
        self.stats = EngineStats(_replica_gpus(llm_config), llm_config.model_id)
        self._publisher = asyncio.get_running_loop().create_task(self.stats.publish_forever())
        # AsyncLLM takes stat loggers only at construction, where Ray fixes the list; its manager
        # iterates `stat_loggers` on every step, so appending is enough.
        manager = getattr(engine_client(self.engine), "logger_manager", None)
        if manager is not None:
            manager.stat_loggers.append(_StatsLogger(self.stats))
        # Raising here fails the replica's constructor: Ray retries it and never routes to it.
        await self._probe()

    async def __serve_build_asgi_app__(self) -> Any:
        """Return vLLM's OpenAI app (Ray builds it once the engine runs) inside tokenplane's feature layer."""
        app = await super().__serve_build_asgi_app__()  # type: ignore[misc]
        if self.serving_args is None:
            raise RuntimeError("TokenplaneLLMServer needs serving args: use TokenplaneLLMServer.for_args(args)")
        return install(app, FeatureContext(self.serving_args, self))

    async def _generate_probe(self, timeout_s: float) -> float:
        from vllm import SamplingParams

        started = time.monotonic()
        params = SamplingParams(max_tokens=1, temperature=0.0)
        request_id = f"tokenplane-probe-{uuid.uuid4().hex}"
        client = engine_client(self.engine)

        async def _run() -> None:
            async for _ in client.generate({"prompt_token_ids": [1]}, params, request_id):
                pass

        await asyncio.wait_for(_run(), timeout=timeout_s)
        return time.monotonic() - started

    async def _probe(self) -> None:
        async with self._probe_lock:
            if time.monotonic() - self._last_ok < _READY_TTL_S:
                return
            try:
                latency = await self._generate_probe(_PROBE_TIMEOUT_S)
            except Exception as err:
                self._last_error = f"{type(err).__name__}: {err}"[:200]
                raise
            self._last_probe_ms = latency * 1000.0
            self._last_error = None
            self._last_ok = time.monotonic()

    def _recently_generated(self) -> bool:
        stats = self.stats
        return stats is not None and time.monotonic() - stats.last_token_time < _READY_TTL_S

    async def check_health(self) -> None:
        """Healthy while the engine is alive and a completion succeeded within the last few seconds.

        Client traffic that produced tokens counts as proof; otherwise a one-token probe runs. A
        saturated replica whose probe waits behind full batches is still healthy if tokens flow.
        """
        await super().check_health()  # type: ignore[misc]
        if self._recently_generated():
            self._last_ok = time.monotonic()
            return
        try:
            await self._probe()
        except Exception:
            if not self._recently_generated():
                logger.warning("readiness probe failed: %s", self._last_error)
                raise

    async def readiness(self) -> dict[str, Any]:
        """Report this replica's readiness, for `/-/ready`.

        Returns:
            `ready`, `last_success_age_s`, `probe_latency_ms` and `error`.
        """
        with contextlib.suppress(Exception):  # reported, not raised: the caller reports it
            await self.check_health()
        age = time.monotonic() - self._last_ok
        return {
            "ready": age < _READY_TTL_S * 2,
            "last_success_age_s": round(age, 3),
            "probe_latency_ms": None if self._last_probe_ms is None else round(self._last_probe_ms, 3),
            "error": self._last_error,
        }

    async def running_replicas(self) -> int | None:
        """Count running replicas of this deployment from the Serve controller (None if it cannot tell)."""
        try:
            context = serve.get_replica_context()
            app = (await asyncio.to_thread(serve.status)).applications.get(context.app_name)
        except Exception:  # the controller may be briefly unreachable; readiness then reports this replica only
            return None
        deployment = app.deployments.get(context.deployment) if app is not None else None
        if deployment is None:
            return 0
        return sum(n for state, n in deployment.replica_states.items() if getattr(state, "value", state) == "RUNNING")

    async def chat(self, request: Any, raw_request_info: Any = None) -> Any:
        """Run a chat request that came through a handle (HTTP goes to vLLM's app); count batch ones."""
        return await self._count_batch(request, super().chat(request, raw_request_info))  # type: ignore[misc]

    async def completions(self, request: Any, raw_request_info: Any = None) -> Any:
        """Run a completion request that came through a handle; count batch ones."""
        return await self._count_batch(request, super().completions(request, raw_request_info))  # type: ignore[misc]

    async def _count_batch(self, request: Any, run: Any) -> Any:
        # The batch consumers send their requests through handles with a priority above 0; the autoscaling
        # policy leaves those out of the demand it grows the fleet for (the batch's GPU budget).
        if getattr(request, "priority", 0) <= 0:
            return await run
        self._batch_running += 1
        try:
            stream = await run
        except BaseException:
            self._batch_running -= 1
            raise

        async def counted() -> Any:
            try:
                async for item in stream:
                    yield item
            finally:
                self._batch_running -= 1

        return counted()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Report custom autoscaling metrics (Ray Serve calls this on each replica).

        Returns:
            The requests waiting in the replica for a slot (which Serve's own counts miss with direct streaming),
            vLLM's waiting and running requests, the Batch API requests in flight, the requests that arrived in the
            last 30 s (the policy's demand, as opposed to what the replica served), and the TTFT and end-to-end
            latency histograms of the last 30 s as sparse bucket counts, which the policy sums over replicas into
            the fleet's P95; with them, the histograms of the finished requests' wait before prefill and of their
            prefill (vLLM's `queued_time` and `prefill_time`): what more replicas can remove of the TTFT and what
            the prompts themselves set.
        """
        stats = self.stats
        if stats is None:
            return {
                "replica_waiting": 0.0,
                "engine_waiting": 0.0,
                "engine_running": 0.0,
                "batch_running": float(self._batch_running),
                "arrivals": 0.0,
            }
        report = {
            "replica_waiting": float(stats.occupancy.waiting),
            "engine_waiting": float(stats.waiting),
            "engine_running": float(stats.running),
            "batch_running": float(self._batch_running),
            "arrivals": float(stats.occupancy.arrivals()),
        }
        for which in LATENCY_SERIES:
            report.update(latency_histogram(which, stats.recent_ms(which)))
        return report


class TokenplaneLLMServer(TokenplaneServerMixin, LLMServer):
    """`LLMServer` with tokenplane's features: the ingress of a plain deployment (`LLMConfig.server_cls`)."""


class TokenplanePDDecodeServer(TokenplaneServerMixin, PDDecodeServer):
    """`PDDecodeServer` with tokenplane's features: the ingress of a prefill/decode deployment.

    Ray's P/D app (remote prefill, then local decode) is what the features wrap; the prefill replicas are
    reached only through it, so they need no features of their own.
    """
