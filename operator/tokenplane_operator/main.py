"""The operator process: `tokenplane operator` and `python -m tokenplane_operator operator` run it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from tokenplane_operator.errors import TokenplaneError
from tokenplane_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from tokenplane_operator.adapters.kube import KubeObjects

__all__ = [
    "operator_app",
    "operator_command",
    "peering_priority",
    "remaining_deployments",
    "run_operator",
    "uninstall_check",
]


def operator_command(namespaces: list[str], all_namespaces: bool) -> int:
    """Run the operator.

    Args:
        namespaces: Namespaces to watch (none and no `all_namespaces`: the settings decide).
        all_namespaces: Watch the whole cluster.

    Returns:
        The exit code.
    """
    try:
        base = OperatorSettings()
    except ValidationError as err:
        problems = "\n".join(
            f"  TOKENPLANE_{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else f"  {e['msg']}"
            for e in err.errors()
        )
        raise SystemExit(f"error: invalid operator settings in the environment:\n{problems}") from None
    config = base.model_copy(
        update={
            "namespaces": namespaces or base.namespaces,
            "all_namespaces": all_namespaces or (base.all_namespaces and not namespaces),
        }
    )
    if config.all_namespaces and config.namespaces:
        raise SystemExit("use either --namespace or --all-namespaces")
    _refuse_overlap(config)
    from tokenplane_operator.adapters import exporter

    # Its own thread: a scrape is answered even while the event loop is busy with 1,000 reconciles.
    try:
        metrics_server = exporter.serve(config.operator_metrics_port)
    except OSError as err:
        raise SystemExit(
            f"error: cannot serve metrics on TOKENPLANE_OPERATOR_METRICS_PORT={config.operator_metrics_port}: {err}"
        ) from None
    try:
        _run_kopf(config)
    finally:
        metrics_server.shutdown()
    return 0


def _refuse_overlap(config: OperatorSettings) -> None:
    """Stop before kopf starts when another tokenplane release's live operator watches a namespace this one does.

    The chart's install-time check (Helm's `lookup`) never runs under `helm template` or Argo CD; two releases have
    two peering objects, so kopf lets both reconcile the same InferenceDeployments. Only the newcomer stops: it
    never joins its own peering, so the running release, restarted later, does not see it as live.
    """
    if not config.peering_name:
        return  # not run by the chart (tests, a developer's shell): no release to tell apart
    from kubernetes.aio.config import ConfigException

    from tokenplane_operator.adapters.kube import KubeObjects
    from tokenplane_operator.converge.overlap import overlapping_operators

    async def read() -> list[dict[str, object]]:
        kube = await KubeObjects.from_environment()
        try:
            return await kube.list_peerings(config.namespaces)
        finally:
            await kube.close()

    try:
        peerings = asyncio.run(read())
    except (TokenplaneError, ConfigException) as err:  # e.g. an RBAC edited by hand: kopf's peering still works
        logging.getLogger(__name__).warning("cannot check for another tokenplane release's operator: %s", err)
        return
    scope = ", ".join(config.namespaces) if config.namespaces else "every namespace"
    others = overlapping_operators(
        peerings, own=config.peering_name, namespaces=config.namespaces, now=datetime.now(UTC)
    )
    if others:
        raise SystemExit(
            f"error: {'; '.join(others)}; this operator, watching {scope}, would reconcile the same "
            "InferenceDeployments: give each release namespaces of its own "
            "(operator.watchNamespaces), or uninstall the other release first"
        )


_PRIORITY_EPOCH_MS = 2**42  # a moment (year 2109) after every start time, so a priority stays positive


def peering_priority(started_s: float) -> int:
    """Return a replica's kopf peering priority: the earlier it started, the higher.

    kopf's active replica is the live one of highest priority. A random one (kopf's advice) let a replica that
    joined (a rolling update's new pod, a rescheduled standby) outrank the one acting, and both acted until the
    old one read the newcomer's entry; a newcomer now starts paused. The random low part keeps two replicas that
    start in the same millisecond apart (equal priorities all pause, kopf's rule).

    Args:
        started_s: The process's start, in seconds since the Unix epoch.
    """
    return (_PRIORITY_EPOCH_MS - int(started_s * 1000)) * 1024 + secrets.randbelow(1024)


def _run_kopf(config: OperatorSettings) -> None:
    import kopf  # here, not at the top: `tokenplane validate` and friends should not pay for kopf's import

    # kopf's formatter prefixes each object's lines with [namespace/name]: which deployment a line is about.
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger().setLevel(config.log_level)

    import tokenplane_operator.handlers  # noqa: F401  (registers the handlers)

    clusterwide = config.all_namespaces or not config.namespaces
    priority = config.peering_priority if config.peering_priority is not None else peering_priority(time.time())
    settings = kopf.OperatorSettings()
    # Watching named namespaces needs no cluster-wide reads: no namespace or CRD scan (the chart installs the CRD
    # before the operator starts), so its RBAC can stay in Roles in those namespaces.
    settings.scanning.disabled = not clusterwide
    # The handlers set it when another release's operator outranks this one (handlers._yield_to_another_release).
    # An asyncio.Event: kopf waits for a threading.Event in an executor thread, which would keep a SIGTERMed process
    # from exiting (asyncio.run joins that thread).
    stop = asyncio.Event()
    memo = kopf.Memo(config=config, peering_priority=priority, stop_flag=stop)
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=() if clusterwide else config.namespaces,
            peering_name=config.peering_name or None,  # a name makes peering mandatory: no silent standalone
            priority=priority,
            settings=settings,
            memo=memo,
            stop_flag=stop,
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
        )
    )
    if "yielded" in memo:
        raise SystemExit(f"error: {memo.yielded}")


def run_operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")] = False,
) -> None:
    """Run the operator: reconcile InferenceDeployments into AKS node pools and RayServices."""
    if bool(namespace) == all_namespaces:
        typer.echo("✗ give --namespace NS (repeatable) or --all-namespaces, not both and not neither", err=True)
        raise typer.Exit(2)
    raise typer.Exit(operator_command(namespaces=namespace or [], all_namespaces=all_namespaces))


async def remaining_deployments(kube: KubeObjects, namespaces: list[str]) -> list[str]:
    """Return the InferenceDeployments in these namespaces (all namespaces when none), as sorted `namespace/name`.

    Raises:
        TransientKubeError: The API server could not answer.
        KubeRejectedError: The request was refused (e.g. RBAC).
    """
    found = [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in await kube.list_inference_deployments()]
    return [f"{ns}/{name}" for ns, name in sorted(found) if not namespaces or ns in namespaces]


def uninstall_check(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Check this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Check every namespace.")] = False,
) -> None:
    """Exit 1 while InferenceDeployments remain: the chart's pre-delete hook, so uninstalling cannot orphan them.

    Without the operator, deleting one hangs on its finalizer and its GPU node pool is never deleted (still billed).
    """
    if bool(namespace) == all_namespaces:
        typer.echo("✗ give --namespace NS (repeatable) or --all-namespaces, not both and not neither", err=True)
        raise typer.Exit(2)
    from tokenplane_operator.adapters.kube import KubeObjects

    async def check() -> list[str]:
        kube = await KubeObjects.from_environment()
        try:
            return await remaining_deployments(kube, namespace or [])
        finally:
            await kube.close()

    try:
        remaining = asyncio.run(check())
    except TokenplaneError as err:  # the API server down or refusing: the uninstall waits until it can tell
        typer.echo(f"✗ cannot list the InferenceDeployments: {err}; retry the uninstall", err=True)
        raise typer.Exit(1) from None
    if remaining:
        shown = ", ".join(remaining[:10]) + (f" and {len(remaining) - 10} more" if len(remaining) > 10 else "")
        typer.echo(
            f"✗ {len(remaining)} InferenceDeployment(s) remain ({shown}): delete them first, with the operator still "
            "running, so it deletes their GPU node pools (kubectl delete infd --all -A); uninstalled now, their "
            "finalizers and node pools would stay with nothing to remove them. To uninstall anyway: "
            "helm uninstall --no-hooks",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("no InferenceDeployments remain: the operator may go")


# The operator image's entry point: the operator, and the chart's uninstall check; no client-side tools of
# `tokenplane`.
operator_app = typer.Typer(name="tokenplane-operator", no_args_is_help=True, add_completion=False)
operator_app.command("operator")(run_operator)
operator_app.command("uninstall-check")(uninstall_check)


@operator_app.callback()
def _operator_group() -> None:
    """Run the tokenplane operator (`operator -A` or `operator -n NS`)."""  # a group keeps `operator` a subcommand
