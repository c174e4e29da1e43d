"""spec.batch -> the serving contract (ServingArgs.batch), the consumers' Serve application and the pods' env."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.bundle import build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.rayservice import BATCH_IMPORT_PATH
from tokenplane_operator.desired.serveconfig import BATCH_REDIS_URL_ENV, build_serving_args
from tokenplane_operator.plan.errors import PlanError
from tokenplane_serving.blob_uri import STORE_CREDENTIAL_ENV
from tokenplane_serving.mapping import build_llm_config

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
EXAMPLE = EXAMPLES / "internal-copilot-mig.yaml"
REDIS = {"name": "batch-redis", "key": "url"}
STORE = "az://acct/batches/copilot"


def with_batch(batch: dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["batch"] = batch
    return body


def test_enabled_batch_reaches_the_args_a_second_application_and_the_env() -> None:
    spec = {"enabled": True, "store": STORE, "redisSecretRef": REDIS, "storeSecretRef": {"name": "sas", "key": "sas"}}
    deployment = parse_inference_deployment(with_batch({**spec, "maxConsumers": 2, "concurrency": 3, "priority": 7}))
    args = build_serving_args(deployment)
    assert (args.batch.enabled, args.batch.store, args.batch.redis_url_env) == (True, STORE, BATCH_REDIS_URL_ENV)
    assert (args.batch.max_consumers, args.batch.concurrency, args.batch.priority) == (2, 3, 7)
    rayservice = build_desired_state(deployment, RenderConfig()).rayservice
    llm, consumers = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    assert consumers["import_path"] == BATCH_IMPORT_PATH and "route_prefix" not in consumers
    assert consumers["args"] == llm["args"] and llm["args"]["batch"]["store"] == STORE
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env[BATCH_REDIS_URL_ENV]["valueFrom"] == {"secretKeyRef": REDIS}
    assert env[STORE_CREDENTIAL_ENV]["valueFrom"] == {"secretKeyRef": {"name": "sas", "key": "sas"}}


def test_deployments_sharing_one_redis_consume_only_their_own_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator names every Serve app `llm`: the queue was `tokenplane-batch-llm` for all deployments, so two
    # sharing one Redis took each other's tasks, found no such batch in their own store and dropped them.
    from tokenplane_serving.batch.consumer import task_processor_config

    monkeypatch.setenv(BATCH_REDIS_URL_ENV, "rediss://:k@shared.redis.cache.windows.net:6380/1")
    spec = {"enabled": True, "store": STORE, "redisSecretRef": REDIS}
    queues = {}
    for namespace in ("team-a", "team-b"):
        body = with_batch(spec)
        body["metadata"]["namespace"] = namespace
        args = build_serving_args(parse_inference_deployment(body))
        assert args.app_name == "llm" and args.batch.scope == f"{namespace}/copilot"
        queues[namespace] = task_processor_config(args).queue_name
    assert queues["team-a"] != queues["team-b"]


def test_no_batch_leaves_the_serve_config_as_it_was() -> None:
    deployment = parse_inference_deployment(yaml.safe_load(EXAMPLE.read_text()))
    (app,) = yaml.safe_load(build_desired_state(deployment, RenderConfig()).rayservice["spec"]["serveConfigV2"])[
        "applications"
    ]
    assert "batch" not in app["args"]


def test_the_sweep_interval_reaches_the_args_and_unset_is_the_serving_default() -> None:
    spec = {"enabled": True, "store": STORE, "redisSecretRef": REDIS}
    for batch, interval in (({**spec, "sweepIntervalSeconds": 15}, 15), (spec, 60)):
        assert build_serving_args(parse_inference_deployment(with_batch(batch))).batch.sweep_interval_s == interval


@pytest.mark.parametrize(
    ("value", "says"),
    [(0, "greater than or equal to 1 (got 0)"), (-5, "greater than or equal to 1 (got -5)"), ("1m", "an integer")],
)
def test_a_sweep_interval_that_is_not_a_positive_integer_is_refused_with_its_field_path(value: Any, says: str) -> None:
    batch = {"enabled": True, "store": STORE, "redisSecretRef": REDIS, "sweepIntervalSeconds": value}
    with pytest.raises(InvalidSpecError) as err:
        parse_inference_deployment(with_batch(batch))
    assert str(err.value).startswith("spec.batch.sweepIntervalSeconds: ") and says in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("missing", ["redisSecretRef", "store"])
def test_a_cluster_batch_without_queue_or_store_is_refused_with_its_field_path(missing: str) -> None:
    batch = {"enabled": True, "store": STORE, "redisSecretRef": REDIS}
    del batch[missing]
    with pytest.raises(PlanError, match=f"spec.batch.{missing}"):
        build_serving_args(parse_inference_deployment(with_batch(batch)))


def test_tokenplane_up_needs_nothing_but_enabled() -> None:
    local = parse_inference_deployment(with_batch({"enabled": True}))
    args = build_serving_args(local, local=True)
    assert args.batch.enabled and args.batch.store is None  # a local directory, and serve_local's own redis-server
    # Batch requests carry a vLLM priority, which the engine honours only with priority scheduling.
    assert build_llm_config(args)["engine_kwargs"]["scheduling_policy"] == "priority"


def test_a_store_that_is_not_azure_blob_is_refused() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_inference_deployment(with_batch({"enabled": True, "store": "s3://bucket/x", "redisSecretRef": REDIS}))
    assert "spec.batch.store" in str(caught.value)
