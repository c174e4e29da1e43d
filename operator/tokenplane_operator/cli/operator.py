"""`tokenplane operator`: run the kopf operator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging

import kopf
from pydantic import ValidationError

from tokenplane_operator.settings import OperatorSettings

__all__ = ["operator_command"]


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
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import tokenplane_operator.handlers  # noqa: F401  (registers the handlers)

    clusterwide = config.all_namespaces or not config.namespaces
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=() if clusterwide else config.namespaces,
            memo=kopf.Memo(config=config),
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
        )
    )
    return 0
