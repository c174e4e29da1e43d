"""Render charts/tokenplane with the real Helm engine (helm-python-sdk) and read what its RBAC grants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.kube_emulator import Access

__all__ = ["CHART", "granted", "render"]

CHART = Path(__file__).resolve().parents[2] / "charts" / "tokenplane"


def render(values: dict[str, Any], *, namespace: str = "tokenplane", name: str = "tp") -> list[dict[str, Any]]:
    """Every object `helm install` would create for these values (templates only; crds/ are separate)."""
    import helm_python  # imported here: the operator tests that use `granted` alone need no Helm

    rendered = helm_python.Chart.load(str(CHART)).render(values=values, name=name, namespace=namespace)
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def granted(objects: list[dict[str, Any]], service_account: str, sa_namespace: str) -> set[Access]:
    """The grants the rendered RBAC gives the service account: namespace None for a ClusterRoleBinding's.

    A Role's grant counts in its own namespace; a ClusterRole bound by a RoleBinding counts in the binding's.
    Wildcards are returned as they are (`*`), so a test comparing with concrete requests sees them as extra.
    """
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    grants: set[Access] = set()
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        subjects = binding.get("subjects") or []
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account and s.get("namespace") == sa_namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_namespace = scope if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_namespace, ref["name"])]
        for rule in role.get("rules") or []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add(Access(group, resource, verb, scope))
    return grants
