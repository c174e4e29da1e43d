"""`tokenplane plan`: print the capacity plan for a CR or a model + workload, as a table or JSON."""

from __future__ import annotations

import asyncio
import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment
from tokenplane_operator.converge.quota import QuotaCheck, check_quota, existing_claims
from tokenplane_operator.desired.agentpool import DesiredAgentPool
from tokenplane_operator.errors import TokenplaneError
from tokenplane_operator.plan.catalog import GIB, GpuSku, load_prices
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.estimates import COMPUTE_EFFICIENCY, MEMORY_BANDWIDTH_EFFICIENCY
from tokenplane_operator.plan.modelinfo import ModelInfo, builtin_model_names, read_model_dir, resolve_model
from tokenplane_operator.plan.precision import parse_precision
from tokenplane_operator.plan.sizing import Plan, QuantizationChoice, Workload, plan_for_sku, recommend

if TYPE_CHECKING:
    from tokenplane_cli.validate import Checked

__all__ = ["plan_command", "quota_json", "render_table"]


def _quantization(value: str | None) -> QuantizationChoice:
    if value is None or value.lower() == "auto":
        return "auto"
    if value.lower() in ("none", "native"):
        return "native"
    return parse_precision(value)


def model_override(model_config: Path | None, model: str | None) -> ModelInfo | None:
    """Return the model `--model-config` or `--model` names, for a FILE whose source the CLI cannot read.

    A CR's `spec.model.source` may be a PVC or a blob the planner cannot open here; the model's config.json
    (or a built-in name) stands in for it. None when neither is given.

    Raises:
        PlanError: Both are given, or the model is unknown or unreadable.
    """
    if model_config is not None and model is not None:
        raise PlanError(PlanErrorReason.INVALID_WORKLOAD, "give one of --model-config and --model, not both")
    if model_config is not None:
        return read_model_dir(model_config)
    return resolve_model(model) if model is not None else None


def _model_of_source(source: str) -> ModelInfo:
    """Resolve `spec.model.source` as plan can on this machine: a built-in name or a local path.

    Raises:
        PlanError: UnknownModel saying, in one line, why plan cannot read the source and what to pass instead.
    """
    from tokenplane_operator.api.v1alpha1 import SourceScheme, parse_source

    scheme, location = parse_source(source)  # the CR was validated, so the source has one of the forms
    try:
        return resolve_model(location)
    except PlanError as err:
        if err.reason is not PlanErrorReason.UNKNOWN_MODEL:
            raise
    where = {
        SourceScheme.PVC: "on a PVC, which plan cannot read from here",
        SourceScheme.AZURE_BLOB: "in Azure Blob storage, which plan does not read",
        SourceScheme.LOCAL: f"a local path that does not exist from {Path.cwd()} (relative paths resolve from the "
        "current directory: run plan where it does)",
        SourceScheme.HUGGING_FACE: "not a model plan knows offline (it does not download from Hugging Face)",
    }[scheme]
    names = {name.rsplit("/", 1)[-1].lower(): name for name in builtin_model_names()}
    close = difflib.get_close_matches(location.rstrip("/").rsplit("/", 1)[-1].lower(), list(names), n=1, cutoff=0.6)
    guess = f" (did you mean --model {names[close[0]]}?)" if close else ""
    raise PlanError(
        PlanErrorReason.UNKNOWN_MODEL,
        f"spec.model.source {source!r} is {where}; pass --model NAME if it holds a built-in model{guess}, "
        "or --model-config with the model's config.json",
        field="spec.model.source",
    )


def _workload_from_file(
    file: Path, concurrency: int, vm_size: str | None, model: ModelInfo | None = None
) -> tuple[Workload, InferenceDeployment, tuple[GpuSku, ...] | None]:
    """Return the CR's workload, the CR, and the catalog to size it in (None: all of it, for vmSize auto)."""
    from tokenplane_cli.files import ManifestError, load_one_document
    from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
    from tokenplane_operator.plan.spec import workload_as_rendered, workload_from_spec

    try:
        document = load_one_document(file, "plan")
    except ManifestError as err:
        raise PlanError(PlanErrorReason.INVALID_WORKLOAD, str(err)) from None
    try:
        deployment = parse_inference_deployment(document.body, document=True)
    except InvalidSpecError as err:
        problems = "; ".join(str(p) for p in err.problems)
        field = err.problems[0].path if err.problems else None
        raise PlanError(PlanErrorReason.INVALID_WORKLOAD, f"{file}: {problems}", field=field) from None
    catalog = None
    model = model or _model_of_source(deployment.spec.model.source)
    if deployment.spec.hardware.vm_size == "auto":
        workload = workload_from_spec(deployment.spec, model=model, concurrency=concurrency)
    else:  # sized as the operator renders it, on its own size or on --vm-size
        workload, catalog = workload_as_rendered(deployment, model=model, concurrency=concurrency)
    return (workload if vm_size is None else replace(workload, vm_size=vm_size)), deployment, catalog


def _planned_pool(plan: Plan, deployment: InferenceDeployment | None) -> tuple[DesiredAgentPool | None, Checked | None]:
    """Return the agent pool the operator would create (the CR's own, or one of the plan's VMs) and the CR's check.

    The check is validate's render of the CR: its `problems` are why `tokenplane validate` refuses the CR.
    """
    if deployment is None:
        vms = DesiredAgentPool(name="tpplan", vm_size=plan.vm_size, min_count=0, max_count=max(1, plan.nodes))
        return vms, None
    from tokenplane_cli.validate import render_checked

    # Checked and rendered from the CR as written (its own vmSize), as validate and the operator do: a refusal is
    # the file's, whatever `--vm-size` asks.
    checked = render_checked(deployment)
    pool = checked.state.agent_pool if checked.state is not None else None
    # `--vm-size` plans the CR on another size: the pool is the CR's, on that size.
    return (pool.model_copy(update={"vm_size": plan.vm_size}) if pool is not None else None), checked


def _cpu_note(deployment: InferenceDeployment | None) -> str | None:
    """Say that a CPU CR provisions no GPU VM, so the plan sizes the model for `accelerator: gpu`; None otherwise."""
    if deployment is None or deployment.spec.hardware.accelerator is not AcceleratorKind.CPU:
        return None
    return (
        "spec.hardware.accelerator is cpu: this CR runs on CPU and provisions no GPU VM (no pool, no quota); the "
        "plan above sizes its model on a GPU VM, for when you set accelerator: gpu"
    )


def _refusal_json(checked: Checked) -> dict[str, str]:
    """Return the CR's problem in plan's error shape (reason, message), with the field path to change."""
    problem = checked.problems[0]  # a render stops at its first refusal
    reason = checked.refused.reason.value if checked.refused is not None else "InvalidSpec"
    return {"reason": reason, "field": problem.path, "message": problem.message}


def _print_refusal(checked: Checked, file: Path, vm_size: str | None, console: Console) -> None:
    """Say, after the plan, that the CR as written cannot be deployed, with validate's problem lines."""
    from tokenplane_cli.validate import print_problems

    own = checked.deployment.spec.hardware.vm_size if checked.deployment is not None else None
    where = f" (on its own vmSize {own}, not --vm-size {vm_size})" if vm_size is not None and own != vm_size else ""
    console.print(f"[red]cannot deploy[/] {escape(str(file))} as written{where}: `tokenplane validate` refuses it")
    print_problems(checked.problems, console)


def quota_headroom(pool: DesiredAgentPool) -> QuotaCheck | str | None:
    """Read the region's vCPU quota for a pool as the operator does, when its Azure settings are set.

    The settings (``TOKENPLANE_SUBSCRIPTION_ID``, ``_RESOURCE_GROUP``, ``_CLUSTER_NAME``, optionally
    ``_ARM_ENDPOINT``) and the credential (``DefaultAzureCredential``) are the operator's.

    Args:
        pool: The pool the deployment would get (its VM size, maxCount and priority count).

    Returns:
        The check, a sentence saying why the quota could not be read, or None without Azure settings.
    """
    from pydantic import ValidationError

    from tokenplane_operator.adapters.azure import AksAgentPools
    from tokenplane_operator.settings import OperatorSettings

    try:
        settings = OperatorSettings()
    except ValidationError:
        return None
    if not settings.azure_configured:
        return None

    async def read() -> QuotaCheck | str:
        async with AksAgentPools(
            subscription_id=settings.subscription_id,
            resource_group=settings.resource_group,
            cluster_name=settings.cluster_name,
            arm_endpoint=settings.arm_endpoint,
            connection_verify=settings.arm_ca_bundle,
        ) as pools:
            return await read_headroom(pools, pool)

    try:
        return asyncio.run(read())
    except TokenplaneError as err:
        return f"cannot read the quota: {err}"


async def read_headroom(pools: Any, pool: DesiredAgentPool) -> QuotaCheck | str:
    """Check a pool against the region's quota, counting the nodes it already has as the operator does.

    A pool that exists already holds nodes, and they are part of the region's usage: checking its maxCount
    against what is free beside them counted them twice (a pool running all its nodes read 'short').

    Args:
        pools: The agent-pool adapter (`AksAgentPools`).
        pool: The pool the deployment would get.

    Returns:
        The check, or a sentence saying why the quota could not be read.
    """
    try:
        reading = await pools.read_quota(pool.vm_size)
        existing = await pools.observe(pool.name) if reading is not None else None
        managed = await pools.list_managed() if reading is not None else []
    except TokenplaneError as err:
        return f"cannot read the quota: {err}"
    if reading is None:
        return f"the cluster's region does not list {pool.vm_size}"
    same_size = existing is not None and existing.vm_size.lower() == pool.vm_size.lower()
    current = (existing.count or 0) if existing is not None and same_size and existing.spot == pool.spot else 0
    # As the operator counts them: the other tokenplane pools may still grow to their maxCount.
    claims = existing_claims(managed, pool.name)
    return check_quota(pool, current, reading, claims) or "the usage list has no row for this size's family"


def _quota_text(check: QuotaCheck | str) -> str:
    if isinstance(check, str):
        return f"[yellow]{check}[/]"
    if check.sufficient:
        return f"[green]fits[/]; {check.describe()}"
    return f"[red]short[/]: {check.reachable_nodes} node(s) fit; {check.describe()}. {check.remedy()}"


def quota_json(check: QuotaCheck | str) -> dict[str, Any]:
    """Build the `quota` object of `tokenplane plan -o json`: the check's numbers, or `error` saying why none."""
    if isinstance(check, str):
        return {"error": check}
    return {
        "family": check.reading.family,
        "region": check.reading.region,
        "vcpusPerNode": check.reading.vcpus_per_node,
        "wantedNodes": check.wanted_nodes,
        "neededVcpus": check.needed_vcpus,
        "availableVcpus": check.available_vcpus,
        "limitingQuota": check.limiting.name,
        # What other tokenplane pools may still add of the limiting quota: kept from this pool, as the operator does.
        "claimedVcpus": check.claimed.get(check.limiting.name.lower(), 0),
        "claimedBy": list(check.claimed_by),
        "reachableNodes": check.reachable_nodes,
        "sufficient": check.sufficient,
    }


def _bytes(value: int) -> str:
    return f"{value / GIB:,.1f} GiB"


def render_table(
    plan: Plan, console: Console, quota: QuotaCheck | str | None = None, price_source: str = "list price"
) -> None:
    """Print a plan for humans: placement, memory, estimates by batch size, quota headroom, and the reasons.

    Args:
        plan: The plan.
        console: Where to print.
        quota: The region's quota against the plan's VMs, when it could be looked at.
        price_source: Where the plan's VM price came from, as the cost row names it.
    """
    head = Table(title=f"tokenplane plan: {plan.model}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    placement = plan.vm_size + (f"  {plan.mig_profile} ({plan.resource_name})" if plan.mig_profile else "")
    rows = [
        ("fits", "[green]yes[/]" if plan.fits else "[red]no[/]"),
        (
            "model",
            f"{plan.architecture}, {plan.params_total / 1e9:.1f}B params ({plan.params_active / 1e9:.1f}B active)",
        ),
        ("placement", placement),
        (
            "gpu",
            f"{plan.gpu_model} x {plan.gpus_per_replica} per replica (TP {plan.tensor_parallel_size}, "
            f"PP {plan.pipeline_parallel_size})",
        ),
        ("replicas", f"{plan.replicas} on {plan.nodes} VM(s), {plan.sequences_per_replica} sequence(s) each"),
        ("precision", f"weights {plan.quantization}, KV cache {plan.kv_cache_dtype}"),
        ("context", f"{plan.max_model_len:,} tokens x {plan.concurrency} concurrent"),
        ("weights", _bytes(plan.weights_bytes)),
        (
            "KV cache",
            f"{plan.kv_bytes_per_token:,} B/token, {_bytes(plan.kv_bytes_per_sequence)}/sequence, "
            f"{_bytes(plan.kv_bytes_per_replica)}/replica",
        ),
        (
            "memory/replica",
            f"{_bytes(plan.total_bytes_per_replica)} of {_bytes(plan.capacity_bytes_per_replica)} "
            f"(gpu_memory_utilization {plan.gpu_memory_utilization})",
        ),
        (
            "headroom",
            f"up to {plan.max_sequences_per_replica} x {plan.max_model_len:,}-token sequences per replica; "
            f"{plan.sequences_per_replica} sequence(s) fit up to {plan.max_model_len_at_concurrency:,} tokens",
        ),
        (
            "cost",
            f"${plan.usd_per_hour:,.2f}/h at {price_source}" if plan.usd_per_hour is not None else "no list price",
        ),
    ]
    if plan.estimates:
        e = plan.estimates
        usd = f", ${e.usd_per_million_output_tokens:,.2f}/M output tokens" if e.usd_per_million_output_tokens else ""
        rows.append(
            (
                "estimate",
                f"{e.decode_tokens_per_second_per_replica:,.0f} tok/s/replica, "
                f"{e.tokens_per_gpu_hour:,.0f} tok/GPU-h{usd} (roofline, not measured)",
            )
        )
    if quota is not None:
        rows.append(("quota", _quota_text(quota)))
    for key, value in rows:
        head.add_row(key, value)
    console.print(head)
    if plan.estimates:
        batches = Table(title="decode estimate by batch size (per replica)", title_justify="left")
        for name in ("batch", "tok/s", "ITL ms", "bound", "$/M out"):
            batches.add_column(name, justify="right")
        for p in plan.estimates.by_batch_size:
            usd = f"{p.usd_per_million_output_tokens:,.2f}" if p.usd_per_million_output_tokens is not None else "-"
            batches.add_row(
                str(p.batch_size),
                f"{p.decode_tokens_per_second_per_replica:,.0f}",
                f"{p.inter_token_latency_ms:.1f}",
                "memory" if p.memory_bound else "compute",
                usd,
            )
        console.print(batches)
    console.print("[bold]why[/]")
    for reason in plan.reasons:
        console.print(f"  - {escape(reason)}")


def _explain(plan: Plan, model: ModelInfo, console: Console) -> None:
    e = plan.estimates
    lines = [
        "KV bytes/token = 2 x layers x kv_heads x head_dim x bytes"
        + (" (MLA: layers x (kv_lora_rank + rope_dim) x bytes)" if model.is_mla else "")
        + f" = {plan.kv_bytes_per_token:,}",
        f"KV bytes/sequence = bytes/token x max_model_len (whole 16-token blocks; windowed layers hold at most "
        f"their window) = {plan.kv_bytes_per_sequence:,}",
        "fits  <=>  weights/GPU + sequences x KV/sequence/GPU + (activations + CUDA context + graphs) "
        "<= gpu_memory_utilization x device memory",
    ]
    if e:
        lines += [
            f"decode step = max(bytes_read / (bandwidth x devices x {MEMORY_BANDWIDTH_EFFICIENCY}), "
            f"2 x active_params x batch / (peak_flops x devices x {COMPUTE_EFFICIENCY}))",
            "  bytes_read = weights (MoE: touched experts only, 1-(1-k/E)^batch) + batch x KV of an average "
            f"{e.avg_context_tokens:,}-token context",
            f"decode tok/s/replica = batch / step = {e.batch_size} / {e.inter_token_latency_ms:.2f} ms "
            f"= {e.decode_tokens_per_second_per_replica:,.1f}",
            f"tokens/GPU-hour = tok/s x 3600 / GPUs per replica = {e.tokens_per_gpu_hour:,.0f}",
            "USD/M output tokens = replica's share of the VM price per hour / (tok/s x 3600) x 1e6",
            "prefill = max(2 x active_params x prompt / (flops x devices x eff), one weight read) "
            f"= {e.prefill_seconds_at_max_model_len:.3f} s at max_model_len",
            "These are estimates from datasheet peaks; measure with vLLM's benchmark client before committing.",
        ]
    console.print("[bold]formulas[/]")
    for line in lines:
        console.print(f"  {line}")


def plan_command(
    file: Path | None,
    model_config: Path | None,
    model: str | None,
    max_model_len: int | None,
    concurrency: int,
    quantization: str | None,
    vm_size: str | None,
    output: str,
    explain: bool,
    prices_file: Path | None = None,
    console: Console | None = None,
) -> int:
    """Run `tokenplane plan` and print the result.

    Args:
        file: An InferenceDeployment YAML file, or None.
        model_config: A config.json (or model directory), or None.
        model: A built-in model name (or local path), or None.
        max_model_len: Context length; None means the model's (or the CR's) maximum.
        concurrency: Concurrent max_model_len sequences the deployment must hold.
        quantization: A precision or method name; None means auto.
        vm_size: Plan on this VM size only.
        output: "table" or "json".
        explain: Also print the formulas behind the numbers.
        prices_file: A values file with `prices: {VM size: USD per hour}` overrides.
        console: Where to print; stdout by default.

    Returns:
        0 when the workload fits, 1 when it cannot be planned or does not fit, or when `tokenplane validate`
        refuses the FILE as written (the plan is printed, then the field path and message; in JSON, `error`).
    """
    out = console or Console(highlight=False, soft_wrap=True)
    try:
        prices = load_prices(prices_file) if prices_file else None
        deployment, catalog = None, None
        if file is not None:
            ignored = [flag for flag, value in (("--max-model-len", max_model_len), ("--quantization", quantization))
                       if value is not None]  # fmt: skip
            if ignored:
                raise PlanError(
                    PlanErrorReason.INVALID_WORKLOAD,
                    f"{' and '.join(ignored)} apply without a FILE; with one, set spec.model.maxModelLen and "
                    "spec.model.quantization in it",
                )
            workload, deployment, catalog = _workload_from_file(
                file, concurrency, vm_size, model_override(model_config, model)
            )
        else:
            info = model_override(model_config, model)
            if info is None:
                raise PlanError(
                    PlanErrorReason.INVALID_WORKLOAD, "give a FILE, or exactly one of --model-config and --model"
                )
            workload = Workload(
                model=info,
                max_model_len=max_model_len,
                concurrency=concurrency,
                quantization=_quantization(quantization),
                vm_size=vm_size,
            )
        if workload.vm_size is not None:
            result = plan_for_sku(workload, workload.vm_size, prices=prices, catalog=catalog)
        else:
            result = recommend(workload, prices=prices)
    except (PlanError, ValueError) as err:
        message = err.message if isinstance(err, PlanError) else str(err)
        reason = err.reason.value if isinstance(err, PlanError) else "InvalidInput"
        field = err.field if isinstance(err, PlanError) else None
        if output == "json":
            # The README's error shape: {reason, field, message}, field when one field is the one to change.
            error = {"reason": reason} | ({"field": field} if field else {}) | {"message": message}
            print(json.dumps({"error": error}, indent=2))
        else:
            out.print(f"[red]cannot plan[/] ({reason}): {escape(message)}", markup=True)
        return 1
    cpu_note = _cpu_note(deployment)
    pool, checked = _planned_pool(result, deployment) if result.fits else (None, None)
    refusal = checked if checked is not None and checked.problems else None  # the CR as written cannot deploy
    quota = quota_headroom(pool) if pool is not None else None
    if output == "json":
        doc = result.model_dump(mode="json", by_alias=True)
        doc |= {"quota": quota_json(quota)} if quota is not None else {}
        doc |= {"error": _refusal_json(refusal)} if refusal is not None else {}
        doc |= {"note": cpu_note} if cpu_note is not None else {}
        print(json.dumps(doc, indent=2))
    else:
        overridden = prices_file is not None and prices is not None and result.vm_size in prices
        render_table(result, out, quota, f"the price in {prices_file}" if overridden else "list price")
        if explain:
            _explain(result, workload.model, out)
        if refusal is not None and file is not None:
            _print_refusal(refusal, file, vm_size, out)
        if cpu_note is not None:
            out.print(f"note: {cpu_note}", markup=False)
    return 0 if result.fits and refusal is None else 1
