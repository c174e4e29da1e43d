"""Kubernetes name and metadata rules for an InferenceDeployment, and the names the operator derives from it.

The API layer owns these so `tokenplane validate`, the CRD (CEL) and the renderer apply one limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ANNOTATIONS_MAX_BYTES",
    "API_KEYS_SECRET_SUFFIX",
    "DNS1035_LABEL",
    "DNS1123_LABEL",
    "LONGEST_DERIVED_NAME",
    "MAX_NAME_LENGTH",
    "NETWORK_POLICY_SUFFIX",
    "OBJECT_MAX_BYTES",
    "SERVICE_SUFFIX",
    "metadata_problems",
]

DNS_LABEL_MAX = 63
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

SERVICE_SUFFIX = "-openai"
NETWORK_POLICY_SUFFIX = "-ingress"
API_KEYS_SECRET_SUFFIX = "-api-keys"
# KubeRay names the RayService's RayCluster `<name>-xxxxx` (GenerateRayClusterName) and that cluster's Services
# `<cluster>-head-svc` / `<cluster>-serve-svc`; a Service name is a DNS-1035 label of at most 63 characters.
# KubeRay itself refuses RayService names over 63 - len("-serve-svc") - 6 = 47 (MaxRayServiceNameLength in
# ray-operator/controllers/ray/utils/constant.go, checked by ValidateRayServiceMetadata).
_KUBERAY_CLUSTER_SUFFIX = "-xxxxx"
_KUBERAY_SERVE_SERVICE_SUFFIX = "-serve-svc"
# Every DNS-1035-limited name built from metadata.name, with the object it names.
_DERIVED = {
    "Service of the RayCluster KubeRay creates (<name>-xxxxx-serve-svc)": _KUBERAY_CLUSTER_SUFFIX
    + _KUBERAY_SERVE_SERVICE_SUFFIX,
    "Service of the RayCluster KubeRay creates (<name>-xxxxx-head-svc)": _KUBERAY_CLUSTER_SUFFIX + "-head-svc",
    "OpenAI Service (<name>-openai)": SERVICE_SUFFIX,
}
LONGEST_DERIVED_NAME = max(_DERIVED, key=lambda what: len(_DERIVED[what]))
MAX_NAME_LENGTH = DNS_LABEL_MAX - len(_DERIVED[LONGEST_DERIVED_NAME])
# Kubernetes' limits (apimachinery ValidateAnnotations: TotalAnnotationSizeLimitB; etcd's default request limit).
ANNOTATIONS_MAX_BYTES = 256 * 1024
OBJECT_MAX_BYTES = 1536 * 1024


def metadata_problems(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check the metadata the operator builds names from, as the API server and KubeRay would.

    Args:
        metadata: the object's `metadata`.

    Returns:
        `(field under metadata, message)` pairs; empty when the metadata is fine.
    """
    problems: list[tuple[str, str]] = []
    name, generate_name = metadata.get("name"), metadata.get("generateName")
    if name is None and generate_name is None:
        problems.append(("name", "required: every InferenceDeployment needs a name; add metadata.name"))
    elif name is not None:
        problems += [("name", m) for m in _name_problems(name, MAX_NAME_LENGTH)]
    else:
        # The API server appends 5 random characters to generateName.
        problems += [("generateName", m) for m in _name_problems(generate_name, MAX_NAME_LENGTH - 5, prefix=True)]
    namespace = metadata.get("namespace")
    if namespace not in (None, "") and (  # kubectl reads an empty namespace as the default one
        not isinstance(namespace, str) or len(namespace) > DNS_LABEL_MAX or not re.match(DNS1123_LABEL, namespace)
    ):
        problems.append(
            ("namespace", f"{namespace!r} is not a namespace name: lowercase letters, digits and '-', at most 63")
        )
    for field, key_only in (("labels", False), ("annotations", True)):
        problems += _map_problems(field, metadata.get(field), values_free=key_only)
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping):
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
        if size > ANNOTATIONS_MAX_BYTES:
            problems.append(
                (
                    "annotations",
                    f"annotations total {size:,} bytes; Kubernetes allows {ANNOTATIONS_MAX_BYTES:,} (256 KiB): "
                    "move large data to a ConfigMap",
                )
            )
    return problems


def _name_problems(name: object, limit: int, *, prefix: bool = False) -> list[str]:
    if not isinstance(name, str):
        return [f"must be a string, got {name!r}"]
    problems = []
    shape = r"^[a-z]([-a-z0-9]*)?$" if prefix else DNS1035_LABEL
    if not re.match(shape, name):
        problems.append(
            f"{name!r} is not a valid name: use lowercase letters, digits and '-', starting with a letter"
            + ("" if prefix else " and ending with a letter or digit")
            + " (a DNS-1035 label, as KubeRay requires for the RayService of the same name)"
        )
    if len(name) > limit:
        problems.append(
            f"{name!r} has {len(name)} characters; at most {limit} fit, because the longest name derived from it, "
            f"the {LONGEST_DERIVED_NAME}, must stay within {DNS_LABEL_MAX}: shorten it"
        )
    return problems


def _map_problems(field: str, value: object, *, values_free: bool) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [(field, f"must be a mapping of key: value strings, got {value!r}")]
    problems = []
    for key, item in value.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or not _qualified_name(key):
            problems.append(
                (
                    where,
                    "not a valid key: an optional DNS prefix and '/', then at most 63 letters, digits, "
                    "'-', '_' or '.', starting and ending with a letter or digit",
                )
            )
        if not isinstance(item, str):
            problems.append((where, f"values are strings; quote {item!r}"))
        elif not values_free and (len(item) > DNS_LABEL_MAX or (item and not _LABEL_NAME.match(item))):
            problems.append(
                (
                    where,
                    f"{item!r} is not a label value: at most 63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit",
                )
            )
    return problems


def _qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= DNS_LABEL_MAX and bool(_LABEL_NAME.match(name))
