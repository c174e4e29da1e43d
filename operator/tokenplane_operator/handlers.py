"""kopf handlers: bind events and timers to `reconcile`/`release`, then report what they said."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from tokenplane_operator.adapters import exporter
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.adapters.kube import KubeObjects
from tokenplane_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from tokenplane_operator.converge.overlap import outranking_operators
from tokenplane_operator.converge.status import rayservice_fingerprint
from tokenplane_operator.desired.naming import MANAGED_BY, MANAGED_BY_LABEL
from tokenplane_operator.errors import TokenplaneError
from tokenplane_operator.reconcile import (
    Clients,
    ReconcileResult,
    collect_metrics,
    forget_metrics,
    latest_scaling,
    pool_demand,
    reconcile,
    reconcile_owner,
    release,
    release_abandoned,
    status_patch,
    sweep_orphaned_pools,
)
from tokenplane_operator.settings import OperatorSettings

__all__ = ["FINALIZER", "build_clients"]

FINALIZER = "tokenplane.io/finalizer"
RESOURCE = (GROUP, VERSION, PLURAL)
RAYSERVICE = ("ray.io", "v1", "rayservices")
_OWNED = {MANAGED_BY_LABEL: MANAGED_BY}
_OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
# Timer cadence is fixed when handlers register (import time), so it comes straight from the environment.
_TIMERS = OperatorSettings()
_NOTHING_REPORTED = rayservice_fingerprint({})
_TIMER_EXIT_POLL_S = 1.0  # an in-memory check of a task, cheap at any number of deployments


async def build_clients(config: OperatorSettings) -> Clients:
    """Connect to Kubernetes (in-cluster or kubeconfig) and, when configured, to Azure."""
    pools = None
    if config.azure_configured:
        pools = AksAgentPools(
            subscription_id=config.subscription_id,
            resource_group=config.resource_group,
            cluster_name=config.cluster_name,
            arm_endpoint=config.arm_endpoint,
            connection_verify=config.arm_ca_bundle,
        )
    return Clients(kube=await KubeObjects.from_environment(), pools=pools)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Brand kopf's bookkeeping with our prefix and build the clients (unless a test injected them)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # A CR's finalizer waits for its timers to exit; one caught mid-reconcile is rechecked after this long, and
    # kopf's default (60 s) kept a deleted deployment around for a minute after its deletion handler finished.
    settings.background.cancellation_polling = _TIMER_EXIT_POLL_S
    # Only the RayServices we render reach this process: the API server filters the watch (a cluster's other
    # RayServices cost neither memory nor events here); the handler's `labels` filter says the same client-side.
    settings.watching.label_selectors[RAYSERVICE] = _OWNED_SELECTOR
    if "config" not in memo:
        memo.config = OperatorSettings()
    if "clients" not in memo:
        memo.clients = await build_clients(memo.config)
    # Every handler takes a slot: 1,000 deployments reconciling at once would hold 1,000 desired states.
    memo.slots = asyncio.Semaphore(memo.config.max_concurrent_reconciles)
    memo.rayservices_seen = {}  # RayService namespace/name -> fingerprint of what KubeRay last reported
    if memo.clients.pools is None:
        logger.warning("no Azure settings: managed node pools are reported as CloudError, BYO and CPU work")
    else:
        memo.sweeper = asyncio.create_task(_sweep_orphans(memo, logger))
    if memo.config.peering_name and "stop_flag" in memo:
        memo.overlap_watch = asyncio.create_task(_yield_to_another_release(memo, logger))


async def _yield_to_another_release(memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Stop when another release's operator over a namespace of ours outranks this one (both passed the start check).

    main._refuse_overlap runs before kopf joins its peering, so two releases started together both pass it; once
    both have joined, each sees the other here, and the peering priorities decide the same way on both sides.
    """
    config: OperatorSettings = memo.config
    while True:
        await asyncio.sleep(config.poll_interval_s)
        try:
            peerings = await memo.clients.kube.list_peerings(config.namespaces)
        except TokenplaneError as err:
            logger.warning("cannot check for another tokenplane release's operator (retrying): %s", err)
            continue
        others = outranking_operators(
            peerings,
            own=config.peering_name,
            namespaces=config.namespaces,
            priority=memo.peering_priority,
            now=datetime.now(UTC),
        )
        if others:
            memo.yielded = (
                f"{'; '.join(others)}; it started first, so this operator stops: give each release namespaces of "
                "its own (operator.watchNamespaces), or uninstall one"
            )
            logger.error("%s", memo.yielded)
            memo.stop_flag.set()
            return


async def _sweep_orphans(memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Every `orphan_sweep_interval_s`, release the tagged pools no InferenceDeployment uses (after the grace)."""
    unused_since: dict[str, datetime] = {}  # in memory: a restart only restarts each pool's grace
    # Events need an object: this operator's pod (HOSTNAME is the pod's name in Kubernetes).
    meta = {"namespace": memo.config.operator_namespace, "name": os.environ.get("HOSTNAME", "")}
    pod = kopf.Body(cast(kopf.RawBody, {"apiVersion": "v1", "kind": "Pod", "metadata": meta}))
    while True:
        await asyncio.sleep(memo.config.orphan_sweep_interval_s)  # first after one interval: start-up stays quiet
        try:
            async with memo.slots:
                actions = await sweep_orphaned_pools(
                    clients=memo.clients, settings=memo.config, unused_since=unused_since, now=datetime.now(UTC)
                )
        except TokenplaneError as err:
            logger.warning("orphaned node pool sweep failed (the next one retries): %s", err)
            actions = []
        for action in actions:
            logger.warning("released orphaned agent pool %s: %s", action.target, action.reason)
            kopf.warn(pod, reason="OrphanedPoolReleased", message=f"{action.target}: {action.reason}")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the background tasks and close the HTTP sessions."""
    for task in (memo.get("sweeper"), memo.get("overlap_watch")):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if "clients" in memo and not memo.get("keep_clients"):
        await memo.clients.close()


@kopf.on.probe(id="azure")
def azure_probe(memo: kopf.Memo, **_: Any) -> bool:
    """Report whether Azure agent pools are managed (the liveness endpoint shows it)."""
    return "clients" in memo and memo.clients.pools is not None


@kopf.index(*RESOURCE)
async def pool_demands(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, Any] | None:
    """Index what each InferenceDeployment wants of its shared pool, by pool name.

    Async: kopf runs a sync index function in a thread on every event of every CR; the cached computation is
    cheaper than the hop.
    """
    demand = pool_demand(body, memo.config)
    return None if demand is None else {demand.pool.name: demand}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kwargs: Any) -> None:
    """Reconcile on every spec change and on operator start; faults come back after their delay."""
    result = await _reconcile(body, patch, memo, kwargs["pool_demands"], "change")
    if kwargs.get("old"):
        try:
            async with memo.slots:
                abandoned = await release_abandoned(kwargs["old"], body, clients=memo.clients, settings=memo.config)
        except TokenplaneError as err:  # kopf keeps `old` until the handler succeeds: the retry sees it again
            message = f"releasing a pool the edit abandoned: {err}"
            raise kopf.TemporaryError(message, delay=memo.config.backoff_base_s) from err
        for action in abandoned:
            kopf.info(body, reason=action.kind.value, message=f"{action.target}: {action.reason}")
    if result.invalid:
        raise kopf.PermanentError(_ready_message(result))
    if result.retry_after_s is not None:
        raise kopf.TemporaryError(_ready_message(result), delay=result.retry_after_s)


@kopf.timer(*RESOURCE, interval=_TIMERS.poll_interval_s, initial_delay=_TIMERS.poll_interval_s)
async def poll(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kwargs: Any) -> None:
    """Re-observe Azure LROs and KubeRay on a timer: the only way to notice external progress."""
    result = await _reconcile(body, patch, memo, kwargs["pool_demands"], "poll")
    if result.retry_after_s is not None and not result.invalid:
        raise kopf.TemporaryError(_ready_message(result), delay=result.retry_after_s)


@kopf.timer(*RESOURCE, interval=_TIMERS.metrics_interval_s, initial_delay=_TIMERS.metrics_interval_s)
async def metrics(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Scrape the serving pods into status.metrics (the economics) and status.scaling (the policy's decision).

    The metrics are tokens per GPU-hour, tail latency and the like; the decision is the replicas running and
    wanted, its reason and the time at zero, which the next reconcile turns into the Scaled condition.
    """
    try:
        async with memo.slots:
            result = await collect_metrics(
                body, clients=memo.clients, settings=memo.config, now=datetime.now(UTC), clock=time.monotonic
            )
    except TokenplaneError as err:
        logger.info("metrics not collected: %s", err)  # the next tick tries again; status keeps the last numbers
        return
    if result is not None:
        patch.status["metrics"] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    scaling = latest_scaling(body, memo.clients)
    if scaling is not None:
        patch.status["scaling"] = scaling.model_dump(mode="json", by_alias=True, exclude_none=True)


@kopf.on.event(*RAYSERVICE, labels=_OWNED)
async def on_rayservice(
    body: kopf.Body,
    type: str | None,  # noqa: A002  (kopf's keyword)
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """React to what KubeRay reports on an owned RayService: reconcile the owner now, not at the next poll."""
    owner = next(
        (ref for ref in body.metadata.get("ownerReferences") or [] if ref.get("kind") == "InferenceDeployment"),
        None,
    )
    if owner is None:
        return
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    seen: dict[str, Any] = memo.rayservices_seen
    fingerprint = None if type == "DELETED" else rayservice_fingerprint(body)
    if type is None or seen.get(key, _NOTHING_REPORTED) == fingerprint:
        # The initial listing (on.resume reconciles those owners), our own write of a RayService KubeRay has not
        # reported on yet, or nothing new.
        seen[key] = fingerprint
        return
    seen[key] = fingerprint
    if type == "DELETED":
        del seen[key]
    namespace, name = str(body.metadata.namespace), str(owner["name"])
    try:
        async with memo.slots:
            with exporter.reconcile_timer("rayservice") as timed:
                result = await reconcile_owner(
                    namespace,
                    name,
                    clients=memo.clients,
                    settings=memo.config,
                    now=datetime.now(UTC),
                    demand=kwargs["pool_demands"],
                )
                timed.result = result.outcome if result is not None else "success"
    except TokenplaneError as err:
        logger.info("owner of RayService %s not reconciled now (the poll will): %s", body.metadata.name, err)
        return
    if result is not None:
        exporter.DEPLOYMENTS.record(namespace, name, result.gauges)


@kopf.on.delete(*RESOURCE)
async def on_delete(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Release the pool if this was its last user; the finalizer stays until Azure has deleted it."""
    forget_metrics(body, memo.clients)
    exporter.DEPLOYMENTS.forget(str(body.metadata.namespace), str(body.metadata.name))
    try:
        async with memo.slots:
            result = await release(body, clients=memo.clients, settings=memo.config)
    except TokenplaneError as err:
        kopf.warn(body, reason="ReleaseFailed", message=str(err))
        raise kopf.TemporaryError(f"releasing the node pool failed: {err}", delay=memo.config.backoff_base_s) from err
    for action in result.actions:
        logger.info("%s %s: %s", action.kind, action.target, action.reason)
        if action.changes_something:
            kopf.info(body, reason=action.kind.value, message=f"{action.target}: {action.reason}")
    if not result.done:
        raise kopf.TemporaryError("waiting for the node pool deletion to finish", delay=result.retry_after_s)


async def _reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, demands: Mapping[str, Any], trigger: exporter.Trigger
) -> ReconcileResult:
    async with memo.slots:
        with exporter.reconcile_timer(trigger) as timed:
            result = await reconcile(
                body, clients=memo.clients, settings=memo.config, now=datetime.now(UTC), demand=demands
            )
            timed.result = result.outcome
    patch.status.update(status_patch(result.status, body.get("status") or {}))
    exporter.DEPLOYMENTS.record(str(body.metadata.namespace), str(body.metadata.name), result.gauges)
    for action in result.actions:
        if action.changes_something:
            kopf.info(body, reason=action.kind.value, message=f"{action.target}: {action.reason}")
    for fault in result.faults:
        kopf.warn(body, reason=fault.reason.value, message=fault.message)
    return result


def _ready_message(result: ReconcileResult) -> str:
    ready = next((c for c in result.status.conditions if c.type == "Ready"), None)
    return f"{ready.reason}: {ready.message}" if ready else "not ready"
