"""AKS GPU agent pools as tokenplane sees them: the desired pool, its ARM body, and what AKS reports back."""

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenplane_operator.api.v1alpha1 import TAINT_PATTERN
from tokenplane_operator.errors import OperationFailedError

__all__ = [
    "GPU_TAINT",
    "MANAGED_BY_TAG",
    "MANAGED_BY_VALUE",
    "OS_DISK_TIERS_GIB",
    "POOL_LABEL",
    "SPOT_TAINT",
    "DesiredAgentPool",
    "MigProfile",
    "ObservedAgentPool",
    "hardware_class_key",
    "needs_replacement",
    "operation_failure",
    "os_disk_tier",
    "pool_name_for",
    "to_arm_body",
]

MigProfile = Literal["MIG1g", "MIG2g", "MIG3g", "MIG4g", "MIG7g"]
OsSku = Literal["AzureLinux", "AzureLinux3", "Ubuntu", "Ubuntu2204", "Ubuntu2404"]

GPU_TAINT = "sku=gpu:NoSchedule"
# AKS puts this taint on every spot node itself; we declare it too so desired and observed compare equal.
SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"
POOL_LABEL = "tokenplane.io/pool"
OS_DISK_TIERS_GIB = (128, 256, 512, 1024, 2048)
# Azure tag names may not contain "/" (nor < > % & \ ?), so the tag cannot reuse the label's form.
MANAGED_BY_TAG = "tokenplane-managed-by"
MANAGED_BY_VALUE = "tokenplane"

_POOL_NAME_PATTERN = r"^[a-z][a-z0-9]{0,11}$"  # AKS: Linux pool names, lowercase alphanumerics, <= 12
_TAINT_PATTERN = re.compile(TAINT_PATTERN)  # the API layer owns the taint syntax
_TERMINAL_STATES = frozenset({"Succeeded", "Failed", "Canceled"})


def hardware_class_key(
    vm_size: str, mig_profile: str | None, spot: bool, zones: Iterable[str], os_disk_gib: int | None = None
) -> str:
    """Return the canonical key of a hardware class; deployments with equal keys share one pool.

    Args:
        vm_size: Azure VM size, compared case-insensitively as Azure does.
        mig_profile: AKS GPU instance profile (``MIG1g``...), or None for whole GPUs.
        spot: Whether the pool runs on spot VMs.
        zones: Availability zones; order and duplicates do not matter.
        os_disk_gib: The pool's OS disk when larger than the default (a disk tier, see `os_disk_tier`); None
            keeps the key, and so the name, of pools that need no bigger disk.

    Returns:
        A stable, human-readable key such as ``standard_nc24ads_a100_v4|MIG1g|spot|1,2``.
    """
    priority = "spot" if spot else "regular"
    key = f"{vm_size.lower()}|{mig_profile or 'full'}|{priority}|{','.join(sorted(set(zones)))}"
    return key if os_disk_gib is None else f"{key}|disk{os_disk_gib}"


def os_disk_tier(needed_gib: float, default_gib: int) -> int | None:
    """Return the OS disk a pool needs for `needed_gib` of pods' ephemeral storage, or None if the default holds it.

    The kubelet keeps 10% of the OS disk (its `nodefs.available<10%` eviction threshold), so a disk of D GiB
    offers 0.9 x D. Tiers double from 128 GiB to 2048 GiB (the managed OS disk maximum AKS accepts), so
    deployments of similar models share a pool. None also when even 2048 GiB is too small: the schedulability
    check then reports the deployment.

    Args:
        needed_gib: Ephemeral storage the pods of one node request together.
        default_gib: The OS disk the operator assumes for pools (`TOKENPLANE_NODE_OS_DISK_GIB`).

    Returns:
        The smallest tier above the default that holds it, or None.
    """
    if needed_gib <= 0.9 * default_gib:
        return None
    return next((tier for tier in OS_DISK_TIERS_GIB if tier > default_gib and needed_gib <= 0.9 * tier), None)


def pool_name_for(class_key: str) -> str:
    """Return the deterministic AKS pool name of a hardware class: ``tp`` + 8 hex digits of its hash.

    Ten characters, lowercase, starting with a letter: valid for Linux pools (at most 12).
    """
    return "tp" + hashlib.sha256(class_key.encode()).hexdigest()[:8]


class DesiredAgentPool(BaseModel):
    """The agent pool tokenplane wants; built by the planner, turned into ARM JSON by `to_arm_body`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_POOL_NAME_PATTERN)
    vm_size: str = Field(min_length=1)
    mig_profile: MigProfile | None = None
    min_count: int = Field(ge=0, le=1000)
    max_count: int = Field(ge=1, le=1000)
    spot: bool = False
    spot_max_price: float | None = None  # None on a spot pool means -1: pay up to the on-demand price
    zones: tuple[str, ...] = ()
    os_sku: OsSku = "AzureLinux"
    os_disk_size_gb: int | None = Field(default=None, ge=30, le=2048)  # None: AKS's default (128 GiB)
    node_labels: dict[str, str] = Field(default_factory=dict)
    node_taints: tuple[str, ...] = ()  # extra taints; the GPU (and spot) taints are always added
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("zones")
    @classmethod
    def _canonical_zones(cls, zones: tuple[str, ...]) -> tuple[str, ...]:
        if any(not zone.isdigit() for zone in zones):
            raise ValueError(f"availability zones are digits such as '1', got {list(zones)}")
        return tuple(sorted(set(zones)))

    @field_validator("node_taints")
    @classmethod
    def _valid_taints(cls, taints: tuple[str, ...]) -> tuple[str, ...]:
        bad = [taint for taint in taints if not _TAINT_PATTERN.match(taint)]
        if bad:
            raise ValueError(f"taints must look like key=value:NoSchedule, got {bad}")
        return taints

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_count < self.min_count:
            raise ValueError(f"max_count {self.max_count} is below min_count {self.min_count}")
        if self.spot_max_price is not None:
            if not self.spot:
                raise ValueError("spot_max_price is only allowed on spot pools")
            if self.spot_max_price != -1 and self.spot_max_price <= 0:
                raise ValueError("spot_max_price is -1 (up to on-demand) or a positive price")
        return self

    @property
    def hardware_class(self) -> str:
        """The key of the hardware class this pool serves (see `hardware_class_key`)."""
        return hardware_class_key(self.vm_size, self.mig_profile, self.spot, self.zones, self.os_disk_size_gb)

    @property
    def effective_taints(self) -> tuple[str, ...]:
        """Every taint the pool carries: GPU, spot when spot, then the extra ones, without duplicates."""
        required = (GPU_TAINT, SPOT_TAINT) if self.spot else (GPU_TAINT,)
        return tuple(dict.fromkeys((*required, *self.node_taints)))

    @property
    def effective_labels(self) -> dict[str, str]:
        """Node labels including the pool label workers select on."""
        return {**self.node_labels, POOL_LABEL: self.name}

    @property
    def effective_tags(self) -> dict[str, str]:
        """Azure tags including the managed-by tag `list_managed` filters on."""
        return {**self.tags, MANAGED_BY_TAG: MANAGED_BY_VALUE}


def to_arm_body(desired: DesiredAgentPool, *, current_count: int | None = None) -> dict[str, Any]:
    """Return the ARM JSON body of a PUT on ``.../agentPools/{name}`` for a desired pool.

    Args:
        desired: The pool to create or update.
        current_count: The node count AKS reports for an existing pool. It is kept (clamped into
            [min, max]) so that an update does not resize a pool the cluster autoscaler has scaled.

    Returns:
        ``{"properties": {...}}`` with ARM (camelCase) field names, ready to send as JSON.
    """
    count = desired.min_count if current_count is None else current_count
    properties: dict[str, Any] = {
        "vmSize": desired.vm_size,
        "mode": "User",
        "type": "VirtualMachineScaleSets",
        "osType": "Linux",
        "osSKU": desired.os_sku,
        "enableAutoScaling": True,
        "minCount": desired.min_count,
        "maxCount": desired.max_count,
        "count": min(max(count, desired.min_count), desired.max_count),
        "gpuProfile": {"driver": "Install"},
        "nodeLabels": desired.effective_labels,
        "nodeTaints": list(desired.effective_taints),
        "tags": desired.effective_tags,
    }
    if desired.os_disk_size_gb is not None:
        properties["osDiskSizeGB"] = desired.os_disk_size_gb
    if desired.mig_profile is not None:
        properties["gpuInstanceProfile"] = desired.mig_profile
    if desired.zones:
        properties["availabilityZones"] = list(desired.zones)
    if desired.spot:
        properties["scaleSetPriority"] = "Spot"
        properties["scaleSetEvictionPolicy"] = "Delete"
        properties["spotMaxPrice"] = -1 if desired.spot_max_price is None else desired.spot_max_price
    else:
        properties["scaleSetPriority"] = "Regular"
        # Surge one node at a time: a percentage surge on a GPU pool multiplies GPU quota use.
        # Spot pools get no upgrade settings (surge on spot is not offered; kept out to be safe).
        properties["upgradeSettings"] = {"maxSurge": "1", "maxUnavailable": "0"}
    return {"properties": properties}


class ObservedAgentPool(BaseModel):
    """An agent pool as AKS reports it (parsed from ARM JSON by `from_arm`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vm_size: str
    mig_profile: str | None = None
    count: int | None = None
    min_count: int | None = None
    max_count: int | None = None
    provisioning_state: str  # Succeeded, Creating, Updating, Deleting, Failed, Canceled, Scaling, ...
    power_state: str | None = None  # Running or Stopped
    spot: bool = False
    spot_max_price: float | None = None
    zones: tuple[str, ...] = ()
    os_sku: str | None = None
    os_disk_size_gb: int | None = None
    node_labels: dict[str, str] = Field(default_factory=dict)
    node_taints: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    error_code: str | None = None  # status.provisioningError after a failed operation
    error_message: str | None = None

    @classmethod
    def from_arm(cls, body: Mapping[str, Any]) -> Self:
        """Parse an ARM agent pool resource (the JSON of a GET) into an observation.

        Args:
            body: ``{"name": ..., "properties": {...}}`` as ARM returns it.

        Returns:
            The observation; fields AKS left out take their defaults.
        """
        props: Mapping[str, Any] = body.get("properties") or {}
        error: Mapping[str, Any] = (props.get("status") or {}).get("provisioningError") or {}
        spot_price = props.get("spotMaxPrice")
        return cls(
            name=body["name"],
            vm_size=props.get("vmSize", ""),
            mig_profile=props.get("gpuInstanceProfile"),
            count=props.get("count"),
            min_count=props.get("minCount"),
            max_count=props.get("maxCount"),
            provisioning_state=props.get("provisioningState", "Unknown"),
            power_state=(props.get("powerState") or {}).get("code"),
            spot=props.get("scaleSetPriority") == "Spot",
            spot_max_price=None if spot_price is None else float(spot_price),
            zones=tuple(sorted(props.get("availabilityZones") or ())),
            os_sku=props.get("osSKU"),
            os_disk_size_gb=props.get("osDiskSizeGB"),
            node_labels=dict(props.get("nodeLabels") or {}),
            node_taints=tuple(props.get("nodeTaints") or ()),
            tags=dict(props.get("tags") or {}),
            error_code=error.get("code"),
            error_message=error.get("message"),
        )

    @property
    def managed(self) -> bool:
        """Whether tokenplane made this pool (it carries our managed-by tag)."""
        return self.tags.get(MANAGED_BY_TAG) == MANAGED_BY_VALUE

    @property
    def in_progress(self) -> bool:
        """Whether an operation is still running on the pool (creating, updating, deleting, scaling...)."""
        return self.provisioning_state not in _TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the last operation on the pool finished successfully."""
        return self.provisioning_state == "Succeeded"


def operation_failure(observed: ObservedAgentPool) -> OperationFailedError | None:
    """Return the error of the pool's last operation if it ended Failed, else None.

    Args:
        observed: The pool as last observed.

    Returns:
        An `OperationFailedError` carrying AKS's ``status.provisioningError`` when there is one.
    """
    if observed.provisioning_state != "Failed":
        return None
    return OperationFailedError(
        observed.error_code or "ProvisioningFailed",
        observed.error_message or f"the last operation on agent pool {observed.name} failed",
    )


def needs_replacement(desired: DesiredAgentPool, observed: ObservedAgentPool) -> str | None:
    """Say why the observed pool cannot become the desired one in place, or None if a PUT can do it.

    AKS cannot change VM size, GPU instance profile, taints, priority (spot or not), spot max price,
    zones, OS SKU or OS disk size of an existing pool; autoscaler bounds, labels and tags it can.

    Args:
        desired: The pool we want.
        observed: The pool AKS has under the same name.

    Returns:
        A human-readable reason naming the field and both values, or None.
    """
    if desired.vm_size.lower() != observed.vm_size.lower():
        return f"vmSize cannot change in place ({observed.vm_size} -> {desired.vm_size})"
    if (desired.mig_profile or "").lower() != (observed.mig_profile or "").lower():
        return f"gpuInstanceProfile cannot change in place ({observed.mig_profile} -> {desired.mig_profile})"
    if desired.spot != observed.spot:
        return f"scaleSetPriority cannot change in place (spot={observed.spot} -> spot={desired.spot})"
    if desired.spot:
        want_price = -1.0 if desired.spot_max_price is None else desired.spot_max_price
        have_price = -1.0 if observed.spot_max_price is None else observed.spot_max_price
        if want_price != have_price:
            return f"spotMaxPrice cannot change in place ({have_price} -> {want_price})"
    if set(desired.zones) != set(observed.zones):
        return f"availabilityZones cannot change in place ({list(observed.zones)} -> {list(desired.zones)})"
    if observed.os_sku is not None and desired.os_sku != observed.os_sku:
        return f"osSKU cannot change in place ({observed.os_sku} -> {desired.os_sku})"
    disk = desired.os_disk_size_gb
    if disk is not None and observed.os_disk_size_gb is not None and disk != observed.os_disk_size_gb:
        return f"osDiskSizeGB cannot change in place ({observed.os_disk_size_gb} -> {disk})"
    if set(desired.effective_taints) != set(observed.node_taints):
        have, want = sorted(observed.node_taints), sorted(desired.effective_taints)
        return f"nodeTaints cannot change in place ({have} -> {want})"
    return None
