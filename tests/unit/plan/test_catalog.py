"""The GPU catalog: the sizes the seeds name, MIG profiles per GPU, price overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenplane_operator.plan.catalog import all_skus, find_sku, load_prices, with_prices


@pytest.mark.parametrize(
    "vm_size",
    [
        "Standard_NC24ads_A100_v4",
        "Standard_NC40ads_H100_v5",
        "Standard_ND96isr_H100_v5",
        "Standard_ND96isr_H200_v5",
        "Standard_ND128isr_NDR_GB200_v6",
        "Standard_NC4as_T4_v3",
        "Standard_NV36ads_A10_v5",
    ],
)
def test_seed_sizes_are_in_the_catalog(vm_size: str) -> None:
    assert find_sku(vm_size) is not None
    assert find_sku(vm_size.lower()) is not None


def test_h100_nvl_has_the_nvl_mig_profiles() -> None:
    sku = find_sku("Standard_NC40ads_H100_v5")
    assert sku is not None
    assert sku.gpu_memory_gib > 90 and sku.memory_bandwidth_gbps == 3900
    assert {k: v.profile for k, v in sku.mig_profiles.items()} == {
        "MIG1g": "1g.12gb",
        "MIG2g": "2g.24gb",
        "MIG3g": "3g.47gb",
        "MIG4g": "4g.47gb",
        "MIG7g": "7g.94gb",
    }
    assert sku.mig_profiles["MIG1g"].resource_name == "nvidia.com/mig-1g.12gb"
    assert sku.mig_profiles["MIG1g"].slices_per_gpu == 7


def test_a100_80gb_mig_profiles_and_no_mig_on_t4() -> None:
    a100 = find_sku("Standard_NC24ads_A100_v4")
    assert a100 is not None
    assert a100.mig_profiles["MIG1g"].profile == "1g.10gb"
    assert a100.mig_profiles["MIG7g"].profile == "7g.80gb"
    assert a100.fp8_tflops is None
    t4 = find_sku("Standard_NC4as_T4_v3")
    assert t4 is not None and t4.mig_profiles == {}


def test_unknown_size() -> None:
    assert find_sku("Standard_D4s_v5") is None


def test_prices_override_from_values_file(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "planner:\n  prices:\n    Standard_NC24ads_A100_v4: 1.5\n    Standard_ND128isr_NDR_GB200_v6: 99\n"
    )
    catalog = with_prices(load_prices(values))
    assert find_sku("Standard_NC24ads_A100_v4", catalog).hourly_usd == 1.5  # type: ignore[union-attr]
    assert find_sku("Standard_ND128isr_NDR_GB200_v6", catalog).hourly_usd == 99  # type: ignore[union-attr]
    assert find_sku("Standard_NC24ads_A100_v4").hourly_usd != 1.5  # type: ignore[union-attr]
    assert len(catalog) == len(all_skus())


def test_bad_prices_file(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("prices:\n  Standard_NC24ads_A100_v4: cheap\n")
    with pytest.raises(ValueError, match="number"):
        load_prices(values)
