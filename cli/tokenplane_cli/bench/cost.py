"""What the measured endpoint costs: the planner's VM catalog (price and GPU count) or figures given by hand."""

from __future__ import annotations

import math
from pathlib import Path

from tokenplane_cli.bench.stats import Cost
from tokenplane_cli.bench.workload import BenchInputError
from tokenplane_operator.plan.catalog import all_skus, find_sku, load_prices, with_prices

__all__ = ["resolve_cost"]


def resolve_cost(
    *,
    vm_size: str | None = None,
    vms: int = 1,
    prices_file: Path | None = None,
    gpus: float | None = None,
    usd_per_hour: float | None = None,
) -> Cost | None:
    """Work out the cost basis of a run, or None when nothing about cost was given.

    Args:
        vm_size: An Azure VM size from the planner's catalog (its GPU count and list price).
        vms: How many such VMs serve the endpoint.
        prices_file: A values file whose `prices:` map overrides list prices (as `tokenplane plan --prices`).
        gpus: GPUs behind the endpoint (overrides the VM's count).
        usd_per_hour: Price per hour of the whole endpoint (overrides the VM's price).

    Returns:
        The cost basis.

    Raises:
        BenchInputError: for an unknown VM size, non-positive numbers, or a price with nothing to divide it by.
    """
    if vms < 1:
        raise BenchInputError(f"--vms must be at least 1, not {vms}")
    # NaN passes any comparison and infinity divides every figure to 0 or inf: refuse both with the signs.
    if gpus is not None and not (math.isfinite(gpus) and gpus > 0):
        raise BenchInputError(f"--gpus must be a positive number, not {gpus}")
    if usd_per_hour is not None and not (math.isfinite(usd_per_hour) and usd_per_hour >= 0):
        raise BenchInputError(f"--usd-per-hour must be a number >= 0, not {usd_per_hour}")
    if vm_size is None:
        # Both only mean something for a catalog VM: left alone they were ignored without a word.
        if prices_file is not None:
            raise BenchInputError("--prices needs --vm-size: it overrides the price of the VM size named there")
        if vms != 1:
            raise BenchInputError(f"--vms {vms} needs --vm-size (or give --gpus and --usd-per-hour of them all)")
        if gpus is None and usd_per_hour is None:
            return None
        if gpus is None:
            raise BenchInputError("--usd-per-hour needs --gpus (or --vm-size) to give tokens per GPU-hour")
        return Cost(gpus=gpus, usd_per_hour=usd_per_hour, source="--gpus/--usd-per-hour")
    try:
        catalog = with_prices(load_prices(prices_file)) if prices_file else all_skus()
    except (OSError, ValueError) as err:
        raise BenchInputError(f"--prices: {err}") from None
    sku = find_sku(vm_size, catalog)
    if sku is None:
        known = ", ".join(s.vm_size for s in catalog[:6])
        raise BenchInputError(f"--vm-size {vm_size}: not in the planner's catalog (e.g. {known}, ...)")
    hourly = usd_per_hour if usd_per_hour is not None else (sku.hourly_usd * vms if sku.hourly_usd else None)
    price_from = "--usd-per-hour" if usd_per_hour is not None else ("--prices" if prices_file else "list price")
    return Cost(
        gpus=gpus if gpus is not None else sku.gpu_count * vms,
        usd_per_hour=hourly,
        source=f"{vms} x {sku.vm_size} ({sku.gpu_count} x {sku.gpu_model}), {price_from}",
    )
