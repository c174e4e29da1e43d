"""Azure Blob sources as rendered: the credential reaches the pods the way AKS and the serving loader expect."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.bundle import build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.blob_uri import BLOB_CREDENTIAL_ENV
from tokenplane_serving.mapping import build_llm_config, build_lora_adapter_paths

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "department-lora.yaml"
WI_LABEL = "azure.workload.identity/use"


def _body(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    body["spec"].update(spec)
    return body


def _render(body: dict[str, Any]) -> dict[str, Any]:
    rayservice: dict[str, Any] = build_desired_state(parse_inference_deployment(body), RenderConfig()).rayservice
    return rayservice


def _pods(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def _env(template: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom") for e in template["spec"]["containers"][0].get("env", [])}


def test_workload_identity_service_account_and_label_on_every_ray_pod() -> None:
    rendered = _render(_body())
    for template in _pods(rendered):
        assert template["spec"]["serviceAccountName"] == "models-reader"
        assert template["metadata"]["labels"][WI_LABEL] == "true"  # a string: the webhook matches "true"
        # No blob CSI volume and no secret: the identity is the pod's own.
        assert not any("csi" in v for v in template["spec"]["volumes"])
        assert BLOB_CREDENTIAL_ENV not in _env(template) and "HF_TOKEN" not in _env(template)

    without = _body()
    del without["spec"]["serviceAccountName"]
    for template in _pods(_render(without)):
        assert "serviceAccountName" not in template["spec"]
        assert WI_LABEL not in template["metadata"]["labels"]


def test_access_secret_becomes_the_blob_credential_for_blob_sources() -> None:
    body = _body()
    body["spec"]["model"]["accessSecretRef"] = {"name": "models-sas", "key": "sas"}
    for template in _pods(_render(body)):
        env = _env(template)
        assert env[BLOB_CREDENTIAL_ENV] == {"secretKeyRef": {"name": "models-sas", "key": "sas"}}
        assert "HF_TOKEN" not in env


def test_access_secret_stays_the_hf_token_for_hugging_face_sources() -> None:
    body = _body()
    body["spec"]["model"] = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "accessSecretRef": {"name": "hf"}}
    body["spec"]["lora"]["adapters"] = [{"name": "hr", "source": "pvc://adapters/hr"}]
    rendered = _render(body)
    for template in _pods(rendered):
        secrets = {name: source for name, source in _env(template).items() if source is not None}
        assert secrets == {"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}}
        assert not any(v["name"] == "blob-downloads" for v in template["spec"]["volumes"])


def test_access_secret_on_a_pvc_source_is_rejected_with_its_field_path() -> None:
    body = _body()
    body["spec"]["model"] = {"source": "pvc://weights/llama", "accessSecretRef": {"name": "x"}}
    with pytest.raises(InvalidSpecError) as raised:
        parse_inference_deployment(body)
    assert any(p.path == "spec.model.accessSecretRef" and "pvc://" in p.message for p in raised.value.problems)


def test_what_the_worker_downloads_lands_on_its_writable_volume() -> None:
    """serveConfigV2 args -> the serving mapping: every download directory is under a mounted, writable volume."""
    rendered = _render(_body())
    args = ServingArgs.model_validate(yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"][0]["args"])
    config = build_llm_config(args)
    worker = rendered["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    writable = [m["mountPath"] for m in worker["spec"]["containers"][0]["volumeMounts"] if not m.get("readOnly")]
    sources = config["callback_config"]["callback_kwargs"]["sources"]
    assert [uri for uri, _ in sources] == [
        "az://tokenplanemodels/base/llama-3.1-8b-instruct",
        "az://tokenplanemodels/adapters/finance",
        "az://tokenplanemodels/adapters/legal",
    ]
    for _, local in sources:
        assert any(local.startswith(mount + "/") for mount in writable), (local, writable)
    assert config["model_loading_config"]["model_source"] == sources[0][1]
    assert build_lora_adapter_paths(args)["finance"] == sources[1][1]
