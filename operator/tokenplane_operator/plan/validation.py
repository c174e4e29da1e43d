"""Rules that need the GPU catalog or the model's shape: VM sizes, MIG, GPUs per VM, heads, context, memory."""

from __future__ import annotations

from tokenplane_operator.api.v1alpha1 import (
    AcceleratorKind,
    Dtype,
    InferenceDeployment,
    Quantization,
    SpeculativeMethod,
    parse_source,
)
from tokenplane_operator.api.validation import Problem
from tokenplane_operator.plan.catalog import GIB, SERVING_ARCH, GpuSku, all_skus, find_sku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.memory import lora_bytes_per_gpu
from tokenplane_operator.plan.modelinfo import (
    FLOAT16_REFUSED_MODEL_TYPES,
    NO_MTP_MODEL_TYPES,
    ModelInfo,
    resolve_model,
)
from tokenplane_operator.plan.precision import Precision
from tokenplane_operator.plan.sizing import default_step_tokens, plan_for_sku
from tokenplane_operator.plan.spec import workload_as_rendered, workload_from_spec
from tokenplane_serving.engine_arg_rules import engine_arg_problems

__all__ = ["check_deployment", "fit_problems"]


def check_deployment(deployment: InferenceDeployment) -> list[Problem]:
    """Check a parsed InferenceDeployment against the GPU catalog and, when it is known offline, the model.

    Models outside the built-in table (and not a local path) are checked by the operator once it read their
    config.json; the same rules apply there through the planner.

    Args:
        deployment: a spec that already passed the model's own rules.

    Returns:
        The problems found, each with its field path; empty when the spec is valid.
    """
    # The CRD cannot type a free map's values (nor can the model, which must agree with the CRD): checked here, first,
    # since the rules below read these values.
    arg_problems = [
        Problem(f"spec.engine.extraArgs.{key}", problem)
        for key, problem in engine_arg_problems(deployment.spec.engine.extra_args)
    ]
    if arg_problems:
        return arg_problems
    hardware = deployment.spec.hardware
    if hardware.accelerator is AcceleratorKind.CPU:
        return _prefill_problems(deployment, None) + _batch_problems(deployment, None)
    model = _known_model(deployment)
    problems = _prefill_problems(deployment, model) + _quantization_problems(deployment, model)
    problems += _model_problems(deployment, model)
    sku = None if hardware.vm_size == "auto" else find_sku(hardware.vm_size)
    problems += _dtype_problems(deployment, model, sku)
    if hardware.vm_size == "auto":
        return problems
    if sku is None:
        known = ", ".join(s.vm_size for s in all_skus())
        return [
            Problem(
                "spec.hardware.vmSize",
                f"{hardware.vm_size} is not a GPU VM size tokenplane knows; use auto or one of: {known}",
            )
        ]
    problems += _sku_problems(deployment, sku, model) + _batch_problems(deployment, sku)
    if problems or model is None:
        return problems
    return fit_problems(deployment, model, sku)


def fit_problems(deployment: InferenceDeployment, model: ModelInfo, sku: GpuSku) -> list[Problem]:
    """Check that one replica fits its devices on a VM size: the one rule `validate` and `simulate` share.

    vLLM refuses to start when one maxModelLen sequence does not fit beside the weights: the pods would load and
    crash on the cluster. The planner's memory model, on this VM size with the CR's fixed fields, decides. A
    gpuFraction replica is held to the share of one GPU its engine is started with.

    Args:
        deployment: The parsed InferenceDeployment.
        model: Its model's shape.
        sku: The VM size to place it on (the CR's, or `simulate --vm-size`).

    Returns:
        One problem naming the field to change and the GiB needed and held; empty when it fits.
    """
    hardware = deployment.spec.hardware
    workload, catalog = workload_as_rendered(deployment, model=model)
    try:
        plan = plan_for_sku(workload, sku.vm_size, catalog=catalog)
    except PlanError as err:
        return [Problem("spec.hardware", f"{err.message}; `tokenplane plan` on this file shows the sizes that fit")]
    if plan.fits:
        return []
    mig, fraction = hardware.mig_profile, hardware.gpu_fraction
    if mig is not None:
        devices, larger = f"a {mig.value} slice", ("spec.hardware.migProfile", "a larger migProfile")
    elif fraction is not None:
        devices, larger = f"a {fraction} share of one GPU", ("spec.hardware.gpuFraction", "a larger gpuFraction")
    else:
        devices = f"{plan.gpus_per_replica} GPU(s)"
        larger = ("spec.hardware.vmSize", "a larger vmSize or more gpusPerReplica")
    lora, lora_fix = "", ""
    if workload.max_loras:
        # vLLM preallocates every LoRA slot at engine start, adapters loaded or not.
        slots = plan.gpus_per_replica * lora_bytes_per_gpu(
            model,
            max_loras=workload.max_loras,
            max_lora_rank=workload.max_lora_rank,
            tp=plan.tensor_parallel_size,
            pp=plan.pipeline_parallel_size,
            dtype_bytes=4 if workload.dtype == "float32" else 2,
        )
        lora = (
            f", {slots / GIB:.1f} GiB of it LoRA slots for {workload.max_loras} adapters x rank "
            f"{workload.max_lora_rank}"
        )
        lora_fix = "lower spec.lora.maxAdaptersPerReplica or spec.lora.maxRank, "
    # Told to weights already quantized (fp8 asked, or an fp8/int4 checkpoint), the hint changed nothing.
    unquantized = deployment.spec.model.quantization is Quantization.NONE and not model.native_precision.is_quantized
    quantize = "quantize (spec.model.quantization: fp8), " if unquantized else ""
    return [
        Problem(
            larger[0],
            f"{model.name} needs {plan.total_bytes_per_replica / GIB:.1f} GiB a replica on {sku.vm_size} as specified "
            f"({devices}, weights {plan.quantization}, maxModelLen {workload.context:,}{lora}), which holds "
            f"{plan.capacity_bytes_per_replica / GIB:.1f} GiB: {lora_fix}choose {larger[1]}, {quantize}lower "
            "maxModelLen, or set vmSize: auto (`tokenplane plan` on this file shows the sizes that fit)",
        )
    ]


def _prefill_problems(deployment: InferenceDeployment, model: ModelInfo | None) -> list[Problem]:
    # Without chunked prefill a prompt is prefilled in one step, so vLLM refuses a step budget below
    # max_model_len at start-up (SchedulerConfig.verify_max_model_len).
    engine = deployment.spec.engine
    explicit = engine.extra_args.get("max_num_batched_tokens")
    context = deployment.spec.model.max_model_len or (model.max_position_embeddings if model else None)
    if engine.enable_chunked_prefill or not isinstance(explicit, int) or context is None or explicit >= context:
        return []
    return [
        Problem(
            "spec.engine.extraArgs.max_num_batched_tokens",
            f"{explicit:,} tokens a step is below maxModelLen {context:,} with enableChunkedPrefill false, so a "
            "long prompt could never be prefilled and vLLM refuses to start: raise max_num_batched_tokens to at "
            f"least {context:,}, lower maxModelLen, or enable chunked prefill",
        )
    ]


def _batch_problems(deployment: InferenceDeployment, sku: GpuSku | None) -> list[Problem]:
    # vLLM refuses max_num_seqs above one step's tokens (`default_step_tokens`); `sku` None is a CPU run.
    engine, hardware = deployment.spec.engine, deployment.spec.hardware
    mig = hardware.mig_profile.value if hardware.mig_profile else None
    slice_ = sku.mig_profiles.get(mig) if sku and mig else None
    explicit = engine.extra_args.get("max_num_batched_tokens")
    if isinstance(explicit, int):
        budget = explicit
    elif sku is None:  # CPU: 2,048 tokens per rank
        budget = default_step_tokens(None, None) * engine.tensor_parallel_size * engine.pipeline_parallel_size
    else:
        memory = int(slice_.memory_gib * GIB) if slice_ else sku.gpu_memory_bytes
        budget = default_step_tokens(memory, sku.gpu_model)
    if engine.max_num_seqs <= budget:
        return []
    on = "CPU" if sku is None else sku.vm_size + (f" {mig}" if mig else "")
    source = (
        "spec.engine.extraArgs.max_num_batched_tokens"
        if explicit is not None
        else f"vLLM's default max_num_batched_tokens on {on}"
    )
    return [
        Problem(
            "spec.engine.maxNumSeqs",
            f"{engine.max_num_seqs:,} sequences exceed the {budget:,} tokens one engine step schedules ({source}), "
            f"and vLLM refuses max_num_seqs above max_num_batched_tokens, so the replica would not start: lower "
            f"maxNumSeqs to {budget:,} or set spec.engine.extraArgs.max_num_batched_tokens to at least "
            f"{engine.max_num_seqs:,}",
        )
    ]


def _known_model(deployment: InferenceDeployment) -> ModelInfo | None:
    try:
        return resolve_model(parse_source(deployment.spec.model.source)[1])
    except (PlanError, ValueError, OSError):
        return None


def _quantization_problems(deployment: InferenceDeployment, model: ModelInfo | None) -> list[Problem]:
    # What vLLM 0.32 (the serving image's) refuses or ignores at load time, said before any pod pulls weights.
    quantization = deployment.spec.model.quantization
    field = "spec.model.quantization"
    if quantization is Quantization.BITSANDBYTES:
        # vLLM 0.28 moved it out of tree (vllm-project/vllm#43529) into vllm-bnb-plugin, which the image lacks.
        return [
            Problem(
                field,
                "bitsandbytes is no longer part of vLLM (0.28 moved it to the vllm-bnb-plugin, which the serving "
                "image does not install), so the replica would not start: use quantization fp8, or awq/gptq with "
                "a pre-quantized repository",
            )
        ]
    if model is None:
        return []  # not readable offline: the operator's planner sizes what the checkpoint holds
    native = model.native_precision
    if quantization in (Quantization.AWQ, Quantization.GPTQ) and native not in (Precision.INT4, Precision.INT8):
        # vLLM reads AWQ/GPTQ scales from the checkpoint ("Cannot find the config file for awq" without them).
        method = quantization.value.upper()
        stored = f"an {native} checkpoint" if native.is_quantized else f"an unquantized {native} checkpoint"
        return [
            Problem(
                field,
                f"{quantization.value} loads weights already quantized with {method}, and {model.name} is {stored} "
                f"(no {method} quantization_config), so vLLM refuses it: point spec.model.source at a pre-quantized "
                f"{method} repository of the model (e.g. one named ...-{method}), or use quantization fp8",
            )
        ]
    if quantization is Quantization.INT8 and not model.is_moe:
        # Ours maps to int8_per_channel_weight_only, which quantizes MoE experts only (vllm/config/quantization.py).
        return [
            Problem(
                field,
                f"int8 quantizes only MoE expert weights in vLLM 0.32 and {model.name} has no experts, so it would "
                "quantize nothing and load every weight at full size: use quantization fp8, or none",
            )
        ]
    return []


def _model_problems(deployment: InferenceDeployment, model: ModelInfo | None) -> list[Problem]:
    engine = deployment.spec.engine
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    if model is None:
        return []
    problems = []
    try:
        workload_from_spec(deployment.spec, model=model)  # the planner's own rules on the model's shape
    except PlanError as err:
        if err.reason is PlanErrorReason.CONTEXT_TOO_LONG:
            problems.append(Problem("spec.model.maxModelLen", f"{err.message}; lower it, or leave it unset"))
        else:
            problems.append(Problem("spec", err.message))
    if model.num_attention_heads % tp:
        divisors = [n for n in range(1, model.num_attention_heads + 1) if model.num_attention_heads % n == 0 and n <= 8]
        problems.append(
            Problem(
                "spec.engine.tensorParallelSize",
                f"tensorParallelSize {tp} does not divide the {model.num_attention_heads} attention heads of "
                f"{model.name} (vLLM splits heads evenly); use one of {', '.join(map(str, divisors))}",
            )
        )
    speculative = engine.speculative_decoding
    mtp = speculative is not None and speculative.method is SpeculativeMethod.MTP
    if mtp and model.model_type in NO_MTP_MODEL_TYPES:
        problems.append(
            Problem(
                "spec.engine.speculativeDecoding.method",
                f"mtp drafts with the model's own multi-token-prediction layers, and {model.name} (model type "
                f"{model.model_type}) has none that vLLM can use, so the replica would not start: use eagle with an "
                "EAGLE head trained for it (draftModel), draftModel with a smaller model of its family, or ngram",
            )
        )
    if pp > model.num_layers:
        problems.append(
            Problem(
                "spec.engine.pipelineParallelSize",
                f"pipelineParallelSize {pp} exceeds the {model.num_layers} layers of {model.name}; use at most "
                f"{model.num_layers}",
            )
        )
    return problems


def _float16_refused(model: ModelInfo | None) -> bool:
    return model is not None and model.model_type in FLOAT16_REFUSED_MODEL_TYPES


def _dtype_problems(deployment: InferenceDeployment, model: ModelInfo | None, sku: GpuSku | None) -> list[Problem]:
    if deployment.spec.model.dtype is not Dtype.FLOAT16 or model is None or not _float16_refused(model):
        return []
    # On a GPU without bfloat16 only float32 is left for these models; elsewhere bfloat16 (what auto picks).
    fix = (
        f"set dtype float32 ({sku.gpu_model} has no bfloat16; float32 doubles the weights' memory), or choose an "
        "A10, A100, H100 or H200 size with dtype bfloat16"
        if sku is not None and not sku.bf16
        else "set dtype bfloat16 or auto (auto runs it in bfloat16, or float32 on a GPU without bfloat16)"
    )
    return [
        Problem(
            "spec.model.dtype",
            f"vLLM refuses float16 for {model.name} (model type {model.model_type}: numerical instability), so the "
            f"replica would not start: {fix}",
        )
    ]


def _sku_problems(deployment: InferenceDeployment, sku: GpuSku, model: ModelInfo | None) -> list[Problem]:
    hardware, engine = deployment.spec.hardware, deployment.spec.engine
    problems = []
    if sku.arch != SERVING_ARCH:
        problems.append(
            Problem(
                "spec.hardware.vmSize",
                f"{sku.vm_size} has an {sku.arch} host CPU and the serving image is built for {SERVING_ARCH} only, "
                "so its pods would not start (exec format error): choose an x86 size such as "
                "Standard_ND96isr_H200_v5, or vmSize: auto",
            )
        )
    if deployment.spec.model.dtype is Dtype.BFLOAT16 and not sku.bf16:
        fix = (
            # float16 is refused for these models too: on this GPU only float32 remains (auto picks it as well).
            f"set dtype float32 or auto (vLLM refuses float16 for {model.model_type} models, so auto runs it in "
            "float32 there, doubling the weights' memory)"
            if model is not None and _float16_refused(model)
            else "set dtype float16 or auto (auto serves a bfloat16 checkpoint in float16 there)"
        )
        problems.append(
            Problem(
                "spec.model.dtype",
                f"{sku.vm_size} ({sku.gpu_model}) has no bfloat16 (vLLM needs compute capability 8.0 for it): "
                f"{fix}, or choose an A10, A100, H100 or H200 size",
            )
        )
    if hardware.mig_profile is not None and hardware.mig_profile.value not in sku.mig_profiles:
        supported = ", ".join(sorted(sku.mig_profiles)) or "none"
        problems.append(
            Problem(
                "spec.hardware.migProfile",
                f"{sku.vm_size} ({sku.gpu_model}) does not support MIG profile {hardware.mig_profile.value} "
                f"(supported: {supported}); remove migProfile or pick an A100/H100 size",
            )
        )
    if engine.tensor_parallel_size > sku.gpu_count:
        problems.append(
            Problem(
                "spec.engine.tensorParallelSize",
                f"tensorParallelSize {engine.tensor_parallel_size} exceeds the {sku.gpu_count} GPU(s) of one "
                f"{sku.vm_size}; keep TP within a node and use pipelineParallelSize across nodes",
            )
        )
    gpus = hardware.gpus_per_replica
    if hardware.mig_profile is None and hardware.gpu_fraction is None and gpus > sku.gpu_count and gpus % sku.gpu_count:
        problems.append(
            Problem(
                "spec.hardware.gpusPerReplica",
                f"gpusPerReplica {gpus} spans VMs of {sku.gpu_count} GPUs ({sku.vm_size}) but is not a multiple of "
                f"{sku.gpu_count}; use a multiple so each pipeline stage fills whole VMs",
            )
        )
    return problems
