"""`validate` and `simulate` answer "does one replica fit its GPUs" with one rule, so they never disagree."""

from __future__ import annotations

from typing import Any

import pytest

from tokenplane_cli.simulate.physics import physics_for
from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.plan.errors import PlanError
from tokenplane_operator.plan.validation import check_deployment

A100 = "Standard_NC24ads_A100_v4"
H100 = "Standard_NC40ads_H100_v5"
LORA = {"maxAdaptersPerReplica": 64, "maxRank": 128, "adapters": [{"name": "a", "source": "pvc://adapters/a"}]}


def _cr(model: str, hardware: dict[str, Any], max_model_len: int = 8192, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "fit", "namespace": "ai"},
        "spec": {"model": {"source": f"hf://{model}", "maxModelLen": max_model_len}, "hardware": hardware, **spec},
    }


# Each near the edge of its devices' memory, fitting or not; the fractions are where the two rules differed.
CASES = {
    "8B on an A100": _cr("meta-llama/Llama-3.1-8B-Instruct", {"vmSize": A100}),
    "70B bf16 on one A100": _cr("meta-llama/Llama-3.1-70B-Instruct", {"vmSize": A100}),
    "70B on half an A100": _cr("meta-llama/Llama-3.1-70B-Instruct", {"vmSize": A100, "gpuFraction": 0.5}),
    "8B on half an A100": _cr("meta-llama/Llama-3.1-8B-Instruct", {"vmSize": A100, "gpuFraction": 0.5}),
    "8B 128k context on a MIG 1g slice": _cr(
        "meta-llama/Llama-3.1-8B-Instruct", {"vmSize": H100, "migProfile": "MIG1g"}, max_model_len=131072
    ),
    "64 LoRA slots on a MIG 3g slice": _cr(
        "meta-llama/Llama-3.1-8B-Instruct", {"vmSize": A100, "migProfile": "MIG3g"}, lora=LORA
    ),
    "64 LoRA slots on a whole A100": _cr("meta-llama/Llama-3.1-8B-Instruct", {"vmSize": A100}, lora=LORA),
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_validate_and_simulate_give_the_same_fit_answer(body: dict[str, Any]) -> None:
    deployment = parse_inference_deployment(body)
    refused = [str(p) for p in check_deployment(deployment)]
    try:
        physics_for(deployment)
        simulated: list[str] = []
    except PlanError as err:
        simulated = [f"{err.field}: {err.message}"]
    assert simulated == refused


def test_the_cases_cover_both_answers() -> None:
    answers = {bool(check_deployment(parse_inference_deployment(body))) for body in CASES.values()}
    assert answers == {True, False}
