"""spec.endpoint.cache -> the serving contract (ServingArgs.cache) and the Redis URL from its Secret."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.bundle import build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.serveconfig import CACHE_REDIS_URL_ENV, build_serving_args
from tokenplane_serving.cache import settings_from_args

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "internal-copilot-mig.yaml"


def with_cache(cache: dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"].setdefault("endpoint", {})["cache"] = cache
    return body


def test_enabled_cache_reaches_the_serving_args_and_the_pods_env() -> None:
    ref = {"name": "redis-conn", "key": "url"}
    deployment = parse_inference_deployment(
        with_cache({"enabled": True, "ttlSeconds": 600, "qualify": "all", "shared": True, "redisSecretRef": ref})
    )
    args = build_serving_args(deployment)
    assert (args.cache.enabled, args.cache.ttl_s, args.cache.qualify, args.cache.shared) == (True, 600, "all", True)
    assert args.cache.redis_url_env == CACHE_REDIS_URL_ENV
    rayservice = build_desired_state(deployment, RenderConfig()).rayservice
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["cache"]["ttl_s"] == 600
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env[CACHE_REDIS_URL_ENV]["valueFrom"] == {"secretKeyRef": ref}
    settings = settings_from_args(args.cache, {CACHE_REDIS_URL_ENV: "rediss://:k@r.redis.cache.windows.net:6380/0"})
    assert settings is not None and settings.url.startswith("rediss://") and settings.ttl_s == 600
    with pytest.raises(ValueError, match=CACHE_REDIS_URL_ENV):
        settings_from_args(args.cache, {})


def test_no_cache_leaves_the_serve_config_as_it_was() -> None:
    deployment = parse_inference_deployment(yaml.safe_load(EXAMPLE.read_text()))
    assert not build_serving_args(deployment).cache.enabled
    serve = yaml.safe_load(build_desired_state(deployment, RenderConfig()).rayservice["spec"]["serveConfigV2"])
    assert "cache" not in serve["applications"][0]["args"]


def test_enabled_cache_without_redis_is_refused_with_its_field_path() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_inference_deployment(with_cache({"enabled": True}))
    assert "spec.endpoint.cache.redisSecretRef" in str(caught.value)
