"""The batch consumers: Ray Serve async inference (`ray.serve.task_consumer`, Celery on Redis).

A consumer is a Serve deployment of its own, next to the LLM app: Ray's Celery adapter runs a worker
thread pool in each replica (late acknowledgement, requeue on worker loss), and Ray's
`AsyncInferenceAutoscalingPolicy` scales the consumers on the queue's length, down to zero between batches.
Each queued request goes to the LLM app's ingress through a `DeploymentHandle` (no HTTP hop, no client
credentials) with vLLM's `priority` set to the batch priority: with `scheduling_policy: priority` the
engine schedules interactive requests (priority 0) first, and batch fills the batches' free slots.
At most `concurrency x max_consumers` batch requests are in flight at once, whatever the queue holds.

Why not the LLM replicas themselves: `task_consumer` wraps `__init__` without awaiting it, and the LLM
server's constructor is async (it starts the engine), so the decorator cannot wrap it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config, task_consumer, task_handler

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.batch.jobs import TASK_FINALIZE, TASK_REQUEST, TASK_START, BatchJobs, Call, Enqueue
from tokenplane_serving.batch.store import open_store
from tokenplane_serving.features.limits import materialize_contents

__all__ = ["batch_app_name", "build_consumer_app", "make_enqueue", "open_jobs", "redis_url", "task_processor_config"]

logger = logging.getLogger(__name__)

_DEFAULT_STORE = "~/.cache/tokenplane/batch"
# How often Ray's queue-length policy reads the queue; a batch waits at most about this long plus a
# consumer's start before its first request runs.
_QUEUE_POLL_S = 2.0
_MAX_RETRIES = 3  # engine errors (e.g. a replica restarting) before a request is written as failed
# Any other error of a task (the store or Redis unreachable: an outage, a failover, throttling) is retried by
# Celery with backoff (Ray's adapter: 1 s, doubling, at most 60 s apart) this many times, about an hour, before the
# task is given up. With 3, an outage of 7 s lost the request (or the start or finalize) for good, and its batch
# stayed in_progress (or validating) forever.
_TASK_RETRIES = 64


def batch_app_name(args: ServingArgs) -> str:
    """Name the Serve application holding the batch consumers: `<app_name>-batch`."""
    return f"{args.app_name}-batch"


def redis_url(args: ServingArgs) -> str:
    """Read the broker's Redis URL from the environment variable `batch.redis_url_env`.

    Raises:
        ValueError: If the variable is unset.
    """
    url = os.environ.get(args.batch.redis_url_env, "").strip()
    if not url:
        raise ValueError(
            f"batch is enabled but {args.batch.redis_url_env} is not set: it must hold the Redis URL of the batch queue"
        )
    return url


def _scope(args: ServingArgs) -> str:
    # The operator's app_name is the same for every deployment ("llm"); deployments sharing one Redis must
    # not consume each other's queue (a task whose batch is in another store was acknowledged and lost).
    return args.batch.scope or args.app_name


def _queue(args: ServingArgs) -> str:
    return f"tokenplane-batch-{_scope(args)}"


def task_processor_config(args: ServingArgs) -> TaskProcessorConfig:
    """Ray's task-processor config for this deployment's batch queue (Celery adapter, Redis broker)."""
    url = redis_url(args)
    return TaskProcessorConfig(
        queue_name=_queue(args),
        adapter="ray.serve.task_processor.CeleryTaskProcessorAdapter",
        adapter_config=CeleryAdapterConfig(
            broker_url=url,
            backend_url=url,
            # An unacknowledged request goes back on the queue after this long (its consumer died).
            broker_transport_options={"visibility_timeout": args.batch.redelivery_timeout_s},
            # One message reserved per worker thread: the queue length the autoscaler reads stays honest,
            # and a dying consumer holds few requests back.
            app_custom_config={"worker_prefetch_multiplier": 1, "result_expires": 3600},
        ),
        max_retries=_TASK_RETRIES,
    )


def make_enqueue(args: ServingArgs) -> Enqueue:
    """Make a producer for the batch queue (Ray's adapter, as its docs show for clients)."""
    adapter = instantiate_adapter_from_config(task_processor_config(args))

    def enqueue(task: str, task_args: list[Any]) -> None:
        adapter.enqueue_task_sync(task, args=task_args)

    return enqueue


def open_jobs(args: ServingArgs, enqueue: Enqueue | None = None) -> BatchJobs:
    """Open the batch lifecycle on this deployment's store and Redis."""
    import redis

    store = open_store(args.batch.store or os.path.expanduser(f"{_DEFAULT_STORE}/{args.app_name}"))
    return BatchJobs(
        store,
        redis.Redis.from_url(redis_url(args)),
        enqueue or make_enqueue(args),
        namespace=f"tokenplane:batch:{_scope(args)}",
        max_file_bytes=args.batch.max_file_mib * 1024 * 1024,
        model=args.model.id,
    )


def _engine_call(app_name: str, base_model: str, priority: int, adapters: frozenset[str] = frozenset()) -> Call:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest, ErrorResponse

    models: dict[str, Any] = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}

    def call(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            request = models[endpoint].model_validate({**body, "priority": priority})
            if hasattr(request, "messages"):
                materialize_contents(request)  # as the interactive path does: `[null]` parts fail here, not later
        except Exception as err:  # pydantic's ValidationError, and validators that crash on a mistyped field
            # Not only ValueError: `"messages": null` raised TypeError, which the consumer retried three times (a
            # minute of backoff) and then wrote to the error file as a 500 server error.
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            if not isinstance(err, ValueError):
                message = f"Invalid request: {type(err).__name__} while validating the body ({message})"
            return 400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}
        model = str(body.get("model") or "")
        if model.startswith(base_model + ":") and model.removeprefix(base_model + ":") not in adapters:
            # As the interactive path answers (features/models.py): otherwise Ray's LoRA loader fails on it,
            # Celery retries it three times, and the error file says 500 instead of the model being unknown.
            served = ", ".join([base_model, *(f"{base_model}:{name}" for name in sorted(adapters))])
            message = f"The model `{model}` does not exist. Served: {served}."
            return 404, {"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}}
        handle = serve.get_app_handle(app_name).options(
            stream=True, multiplexed_model_id=model if model.startswith(base_model + ":") else ""
        )
        method = handle.chat if endpoint == "/v1/chat/completions" else handle.completions
        answers: Any = method.remote(request)  # a DeploymentResponseGenerator (stream=True)
        for item in answers:
            if isinstance(item, ErrorResponse):
                return int(item.error.code), item.model_dump(mode="json")
            return 200, item.model_dump(mode="json", exclude_none=True)
        return 500, {"error": {"message": "the engine returned nothing", "type": "InternalServerError", "code": 500}}

    return call


class _Consumer:
    """The consumer's task handlers (Celery runs them in its worker threads)."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = ServingArgs.model_validate(args)
        self.jobs = open_jobs(self.args)
        adapters = frozenset(adapter.name for adapter in self.args.lora.adapters)
        self.call: Call = _engine_call(self.args.app_name, self.args.model.id, self.args.batch.priority, adapters)

    @task_handler(name=TASK_START)
    def start(self, batch_id: str, resume: bool = False) -> None:
        self.jobs.start(batch_id, resume)

    @task_handler(name=TASK_REQUEST)
    def request(self, batch_id: str, line: int, custom_id: str, body: dict[str, Any]) -> None:
        from celery import current_task

        def call(endpoint: str, request_body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            try:
                return self.call(endpoint, request_body)
            except Exception as err:
                if current_task.request.retries < _MAX_RETRIES:
                    raise  # Celery retries it (with backoff): the LLM app may be restarting
                logger.warning("batch %s line %d failed after %d retries: %s", batch_id, line, _MAX_RETRIES, err)
                message = f"{type(err).__name__}: {err}"[:500]
                return 500, {"error": {"message": message, "type": "server_error", "code": 500}}

        self.jobs.run_request(batch_id, line, custom_id, body, call)

    @task_handler(name=TASK_FINALIZE)
    def finalize(self, batch_id: str, expire: bool = False) -> None:
        self.jobs.finalize(batch_id, expire=expire)


def build_consumer_app(args: dict[str, Any] | ServingArgs) -> Application:
    """Build the batch consumers' Serve application (`batch_app_name`), for a deployment with batch on.

    Args:
        args: The same serving args as the LLM app (a dict, as serveConfigV2 passes them, or validated).

    Returns:
        One deployment, scaled by Ray's `AsyncInferenceAutoscalingPolicy` on the queue's length between
        0 and `batch.max_consumers` replicas, each running `batch.concurrency` requests at a time.
    """
    serving = args if isinstance(args, ServingArgs) else ServingArgs.model_validate(args)
    batch = serving.batch
    consumer_cls = task_consumer(task_processor_config=task_processor_config(serving))(_Consumer)
    deployment: Any = serve.deployment(
        consumer_cls,
        name="BatchConsumer",
        max_ongoing_requests=batch.concurrency,  # Ray's Celery adapter: worker threads per replica
        # I/O bound (it waits on the engine): no CPU slot of its own, so it fits next to the LLM replicas.
        ray_actor_options={"num_cpus": 0},
        autoscaling_config={
            "min_replicas": 0,
            "max_replicas": batch.max_consumers,
            "initial_replicas": 0,
            # Ray's policy wants queue_length / target replicas: one consumer per this many queued requests.
            "target_ongoing_requests": batch.concurrency * 4,
            "upscale_delay_s": 0,
            # Requests a consumer holds are not in the queue's length: keep it while they may still be
            # running or be redelivered to it.
            "downscale_delay_s": max(60.0, 2.0 * batch.redelivery_timeout_s),
            "policy": {
                "policy_function": "ray.serve.async_inference_autoscaling_policy:AsyncInferenceAutoscalingPolicy",
                "policy_kwargs": {
                    "broker_url": redis_url(serving),
                    "queue_name": _queue(serving),
                    "poll_interval_s": _QUEUE_POLL_S,
                },
            },
        },
    )
    app: Application = deployment.bind(serving.to_serve_yaml_args())
    return app
