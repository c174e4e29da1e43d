"""The GPU catalog: the sizes the seeds name, MIG profiles per GPU, price overrides."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"prices:\n  Standard_NC24ads_A100_v4: cheap\n", "prices.Standard_NC24ads_A100_v4 is 'cheap': every price"),
        # Printed as "$-3.00/h" and "$nan/M output tokens" before; a boolean was $1.00/h.
        (b"prices:\n  Standard_NC24ads_A100_v4: -3\n", "prices.Standard_NC24ads_A100_v4 is -3: every price must"),
        (b"prices:\n  Standard_NC24ads_A100_v4: .nan\n", "is nan: every price must be a positive number"),
        (b"prices:\n  Standard_NC24ads_A100_v4: 0\n", "is 0: every price must be a positive number"),
        (b"prices:\n  Standard_NC24ads_A100_v4: true\n", "is True: every price must be a positive number"),
        # A traceback from `bench --prices` and "internal error" from `plan --prices` before.
        (b"prices: {Standard_NC24ads_A100_v4: [\n", "values.yaml:2: invalid YAML"),
        (b"prices:\n  Standard_NC24ads_A100_v4: 1 # \xe9\n", "values.yaml: not UTF-8 text"),
    ],
)
def test_bad_prices_file(tmp_path: Path, content: bytes, message: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_prices(values)


def test_a_prices_path_that_is_no_file_is_one_line(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.yaml"):
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: cannot read: "):
            load_prices(path)
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text("prices: {Standard_NC24ads_A100_v4: '1.5'}\n")
    assert load_prices(quoted) == {"Standard_NC24ads_A100_v4": 1.5}


def test_gb200_host_is_arm64_with_the_resource_sku_memory() -> None:
    # The size page says 900 GiB, the resource-SKU list 864: the lower one, so worker requests fit the node.
    gb200 = find_sku("Standard_ND128isr_NDR_GB200_v6")
    assert gb200 is not None and gb200.memory_gib == 864 and gb200.arch == "arm64"
    assert {s.vm_size for s in all_skus() if s.arch != "amd64"} == {gb200.vm_size}


def test_only_t4_lacks_bf16() -> None:
    assert {s.gpu_model for s in all_skus() if not s.bf16} == {"T4-16GB"}
