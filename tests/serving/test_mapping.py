"""ServingArgs -> Ray Serve LLM config dicts, checked without starting Ray."""

from __future__ import annotations

from typing import Any

import pytest

from tokenplane_serving.args import MANAGED_ENGINE_KEYS, ServingArgs
from tokenplane_serving.mapping import (
    AUTOSCALING_POLICY,
    CONSISTENT_HASH_ROUTER,
    PREFIX_AFFINITY_ROUTER,
    build_llm_config,
    build_lora_adapter_paths,
    build_openai_app_args,
    build_pd_openai_app_args,
    check_engine_kwargs,
)


def make(**overrides: Any) -> ServingArgs:
    body: dict[str, Any] = {
        "model": {"id": "tiny", "source": "/models/tiny"},
        "accelerator": {"kind": "cpu"},
        "engine": {"max_num_seqs": 16, "max_model_len": 1024},
    }
    body.update(overrides)
    return ServingArgs.model_validate(body)


def gpu(**overrides: Any) -> ServingArgs:
    return make(accelerator={"kind": "gpu", "accelerator_type": "A100-80G"}, **overrides)


def test_cpu_config() -> None:
    config = build_llm_config(make())
    assert config["model_loading_config"] == {"model_id": "tiny", "model_source": "/models/tiny"}
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert "accelerator_type" not in config
    assert config["runtime_env"] == {
        "env_vars": {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # The replica's admission: 20 slots + 16 queued (one batch per possible replica), 503, Retry-After 1.
            "TOKENPLANE_REPLICA_CAPACITY": "36",
            "TOKENPLANE_BACKPRESSURE_STATUS": "503",
            "TOKENPLANE_BACKPRESSURE_RETRY_AFTER_S": "1",
        }
    }
    assert config["placement_group_config"]["bundles"] == [{"CPU": 1.0}]
    assert "lora_config" not in config


def test_max_ongoing_requests_derived_from_max_num_seqs() -> None:
    deployment = build_llm_config(make())["deployment_config"]
    # The batch (16) plus a quarter, not Ray Serve LLM's 1e9: the spare slots wait in vLLM's queue.
    assert deployment["max_ongoing_requests"] == 20
    assert deployment["autoscaling_config"]["target_ongoing_requests"] == 12  # 3/4 of the batch
    assert build_llm_config(make(engine={"max_num_seqs": 1}))["deployment_config"]["max_ongoing_requests"] == 2
    explicit = build_llm_config(make(backpressure={"max_ongoing_requests": 40}))["deployment_config"]
    assert explicit["max_ongoing_requests"] == 40


def test_autoscaling_and_backpressure() -> None:
    deployment = build_llm_config(
        make(
            scaling={
                "min_replicas": 0,
                "max_replicas": 4,
                "initial_replicas": 1,
                "target_ongoing_requests": 5,
                "upscale_delay_s": 3,
                "downscale_delay_s": 60,
                "downscale_to_zero_delay_s": 120,
            },
            backpressure={"max_queued_requests": 10, "status_code": 429, "retry_after_s": 2},
            drain_grace_period_s=45,
        )
    )["deployment_config"]
    policy = deployment["autoscaling_config"].pop("policy")
    assert policy["policy_function"] == AUTOSCALING_POLICY
    assert policy["policy_kwargs"]["downscale_delay_s"] == 60
    assert deployment["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 5,
        "upscale_delay_s": 3,
        "downscale_delay_s": 0.0,  # the policy holds scale-in for the 60 s itself (two holds would stack)
        "downscale_to_zero_delay_s": 120,
    }
    # Ray's bound has room for the 20 slots (Ray counts requests on their way to a free slot as queued); the
    # replica's own admission holds the 20 + 10 exactly.
    assert deployment["max_queued_requests"] == 10 + 20
    assert (
        build_llm_config(make(backpressure={"max_queued_requests": 10, "status_code": 429, "retry_after_s": 2}))[
            "runtime_env"
        ]["env_vars"]["TOKENPLANE_REPLICA_CAPACITY"]
        == "30"
    )
    assert deployment["backpressure_config"] == {"status_code": 429, "retry_after_s": 2}
    assert deployment["graceful_shutdown_timeout_s"] == 45
    assert deployment["graceful_shutdown_wait_loop_s"] == 1
    default = build_llm_config(make(scaling={"max_replicas": 3}))["deployment_config"]
    assert default["max_queued_requests"] == 16 * 3 + 20  # bounded by default: one batch per possible replica
    assert default["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert default["autoscaling_config"]["policy"] == {
        "policy_function": AUTOSCALING_POLICY,
        "policy_kwargs": {
            "max_ongoing_requests": 16,
            "target_queue_depth": 8.0,
            "min_replicas": 1,
            "downscale_delay_s": 600.0,
        },
    }


def test_policy_kwargs_carry_the_latency_target_and_schedule() -> None:
    window = {"days": "1-5", "start": "08:00", "end": "18:00", "timeZone": "Europe/Berlin", "minReplicas": 2}
    scaling = {
        "max_replicas": 4,
        "target_queue_depth": 3,
        "latency_target": {"metric": "ttft", "p95_ms": 500},
        "schedule": [window],
    }
    autoscaling = build_llm_config(make(scaling=scaling))["deployment_config"]["autoscaling_config"]
    assert autoscaling["policy"] == {
        "policy_function": AUTOSCALING_POLICY,
        "policy_kwargs": {
            "max_ongoing_requests": 16,
            "target_queue_depth": 3.0,
            "min_replicas": 1,
            "downscale_delay_s": 600.0,
            "metric": "ttft",
            "p95_ms": 500.0,
            "schedule": [window],
        },
    }


@pytest.mark.parametrize(
    ("policy", "router"),
    [("power_of_two", None), ("prefix_affinity", PREFIX_AFFINITY_ROUTER), ("session_affinity", CONSISTENT_HASH_ROUTER)],
)
def test_router_per_policy(policy: str, router: str | None) -> None:
    config = build_llm_config(make(routing={"policy": policy}))["deployment_config"].get("request_router_config")
    assert (config or {}).get("request_router_class") == router


def test_custom_session_header_reaches_ingress_and_replicas() -> None:
    args = make(routing={"policy": "session_affinity", "session_header": "x-conversation"})
    app_args = build_openai_app_args(args)
    ingress_env = app_args["ingress_deployment_config"]["ray_actor_options"]["runtime_env"]["env_vars"]
    assert ingress_env == {"RAY_SERVE_SESSION_ID_HEADER_KEY": "x-conversation"}
    assert app_args["llm_configs"][0]["runtime_env"]["env_vars"]["RAY_SERVE_SESSION_ID_HEADER_KEY"] == "x-conversation"
    assert "ingress_deployment_config" not in build_openai_app_args(make(routing={"policy": "session_affinity"}))


def test_engine_kwargs() -> None:
    kwargs = build_llm_config(
        make(
            engine={
                "dtype": "bfloat16",
                "max_num_seqs": 8,
                "quantization": "int8",
                "enforce_eager": True,
                "speculative": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
                "extra_engine_args": {"block_size": 32},
            }
        )
    )["engine_kwargs"]
    assert kwargs == {
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_prefix_caching": True,
        "max_num_seqs": 8,
        "enforce_eager": True,
        "quantization": "int8_per_channel_weight_only",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
        "block_size": 32,
    }
    assert set(kwargs) - {"block_size"} <= MANAGED_ENGINE_KEYS


def test_gpu_placement_and_accelerator_type() -> None:
    config = build_llm_config(gpu(engine={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85}))
    assert config["accelerator_config"] == {"kind": "gpu"}
    assert config["accelerator_type"] == "A100-80G"
    assert config["placement_group_config"] == {
        "bundles": [{"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}],
        "strategy": "STRICT_PACK",
    }
    assert set(config["runtime_env"]["env_vars"]) == {
        "TOKENPLANE_REPLICA_CAPACITY",
        "TOKENPLANE_BACKPRESSURE_STATUS",
        "TOKENPLANE_BACKPRESSURE_RETRY_AFTER_S",
    }
    half = build_llm_config(make(accelerator={"kind": "gpu", "gpus_per_replica": 0.5}))
    assert half["placement_group_config"]["bundles"] == [{"GPU": 0.5, "CPU": 1.0}]


def test_lora_from_mounted_directories() -> None:
    args = make(
        lora={
            "adapters": [
                {"name": "a", "source": "/models/pvc-loras/adapters/a/"},
                {"name": "b", "source": "/models/blob-acct-loras/other/b"},
            ],
            "max_adapters_per_replica": 4,
            "max_lora_rank": 8,
        }
    )
    config = build_llm_config(args)
    assert config["lora_config"] == {"max_num_adapters_per_replica": 4}
    assert build_lora_adapter_paths(args) == {
        "a": "/models/pvc-loras/adapters/a",
        "b": "/models/blob-acct-loras/other/b",
    }
    kwargs = config["engine_kwargs"]
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 8, 4)


def test_blob_sources_map_to_download_directories_and_the_node_callback() -> None:
    args = make(
        model={"id": "m", "source": "az://acct/models/llama/8b/"},
        lora={
            "adapters": [
                {"name": "a", "source": "abfss://loras@acct.dfs.core.windows.net/sql"},
                {"name": "b", "source": "/models/pvc-loras/b"},
                # The same directory in another form is downloaded once.
                {"name": "c", "source": "https://acct.blob.core.windows.net/loras/sql"},
            ]
        },
        engine={"speculative": {"method": "draft_model", "model": "az://acct/models/draft"}},
        download_dir="/models/blob",
    )
    config = build_llm_config(args)
    assert config["model_loading_config"]["model_source"] == "/models/blob/acct/models/llama/8b"
    assert config["engine_kwargs"]["speculative_config"]["model"] == "/models/blob/acct/models/draft"
    assert config["callback_config"] == {
        "callback_class": "tokenplane_serving.blob:BlobDownloadCallback",
        "callback_kwargs": {
            "sources": [
                ["az://acct/models/llama/8b/", "/models/blob/acct/models/llama/8b"],
                ["az://acct/models/draft", "/models/blob/acct/models/draft"],
                ["abfss://loras@acct.dfs.core.windows.net/sql", "/models/blob/acct/loras/sql"],
            ]
        },
    }
    assert build_lora_adapter_paths(args) == {
        "a": "/models/blob/acct/loras/sql",
        "b": "/models/pvc-loras/b",
        "c": "/models/blob/acct/loras/sql",
    }
    assert build_llm_config(make())["callback_config"] == {
        "callback_class": "tokenplane_serving.node_init:SkipNodeInitCallback"
    }


@pytest.mark.parametrize("source", ["s3://b/a", "azure://c@acct.blob.core.windows.net/a", "relative/a"])
def test_lora_source_must_be_a_directory(source: str) -> None:
    with pytest.raises(ValueError, match="must be an absolute directory"):
        build_llm_config(make(lora={"adapters": [{"name": "a", "source": source}]}))


def test_pd_args_have_kv_transfer_and_fixed_replicas() -> None:
    pd = build_pd_openai_app_args(gpu(disaggregation={"enabled": True, "prefill_replicas": 2, "decode_replicas": 3}))
    for side, replicas in (("prefill_config", 2), ("decode_config", 3)):
        assert pd[side]["engine_kwargs"]["kv_transfer_config"] == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
        }
        scaling = pd[side]["deployment_config"]["autoscaling_config"]
        assert scaling["min_replicas"] == scaling["max_replicas"] == replicas


def test_check_engine_kwargs() -> None:
    check_engine_kwargs({"dtype": "auto"}, {"dtype", "max_num_seqs"})
    with pytest.raises(ValueError, match=r"\['bogus', 'device'\]"):
        check_engine_kwargs({"dtype": "auto", "device": "auto", "bogus": 1}, {"dtype"})


def test_the_engine_argument_list_is_the_installed_vllms() -> None:
    # extraArgs are checked against this list before anything runs; a vLLM upgrade without `make engine-args`
    # would refuse its new arguments or let removed ones (swap_space went in 0.32) fail replicas at start-up.
    pytest.importorskip("vllm")
    from importlib import resources

    from tokenplane_serving.app import engine_args_file_text

    written = resources.files("tokenplane_serving").joinpath("vllm_engine_args.txt").read_text(encoding="utf-8")
    assert written == engine_args_file_text(), "run `make engine-args`"


def test_engine_kwargs_are_real_vllm_arguments() -> None:
    """Every key mapping can emit (all typed fields set) exists in the installed vLLM."""
    pytest.importorskip("vllm")
    from tokenplane_serving.app import vllm_engine_arg_names

    known = vllm_engine_arg_names()
    assert known >= MANAGED_ENGINE_KEYS, MANAGED_ENGINE_KEYS - known
    full = gpu(
        model={"id": "m", "source": "org/m", "revision": "main"},
        engine={
            "quantization": "fp8",
            "enable_chunked_prefill": True,
            "gpu_memory_utilization": 0.9,
            "speculative": {"method": "draft_model", "model": "org/d"},
            "max_model_len": 4096,
        },
        lora={"adapters": [{"name": "a", "source": "/models/a"}]},
    )
    check_engine_kwargs(build_llm_config(full)["engine_kwargs"], known)


def test_ray_accepts_the_dicts() -> None:
    """LLMConfig (pydantic, no cluster needed) accepts what mapping builds, for each router and GPU."""
    pytest.importorskip("ray.serve.llm")
    from ray.serve.llm import LLMConfig

    for args in (
        make(routing={"policy": "prefix_affinity"}),
        make(routing={"policy": "session_affinity"}),
        gpu(engine={"tensor_parallel_size": 2}, backpressure={"status_code": 429, "retry_after_s": 1}),
        make(scaling={"max_replicas": 2, "latency_target": {"metric": "e2e", "p95_ms": 900}}),
    ):
        config = LLMConfig(**build_llm_config(args))
        assert config.accelerator_config.kind == args.accelerator.kind
