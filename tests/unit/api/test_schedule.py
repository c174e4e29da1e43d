"""spec.scaling.schedule: validated with the serving runtime's own rules and carried to the policy's kwargs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.serveconfig import build_serving_args
from tokenplane_serving.mapping import build_llm_config

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "local-tiny.yaml"
BUSINESS_HOURS = {"days": "1-5", "start": "08:00", "end": "18:00", "timeZone": "Europe/Berlin", "minReplicas": 1}


def body(*windows: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["scaling"].update(minReplicas=0, maxReplicas=2, scaleToZero={"enabled": True}, schedule=list(windows))
    return doc


def test_schedule_reaches_the_policy() -> None:
    args = build_serving_args(parse_inference_deployment(body(BUSINESS_HOURS)))
    policy = build_llm_config(args)["deployment_config"]["autoscaling_config"]["policy"]
    assert policy["policy_kwargs"]["schedule"] == [BUSINESS_HOURS]


@pytest.mark.parametrize(
    ("window", "path", "words"),
    [
        ({**BUSINESS_HOURS, "timeZone": "Mars/Olympus"}, "schedule[0].timeZone", "IANA"),
        ({**BUSINESS_HOURS, "start": "25:00"}, "schedule[0].start", "25:00"),
        ({**BUSINESS_HOURS, "end": "08:00"}, "schedule[0]", "length"),
        ({**BUSINESS_HOURS, "days": "8"}, "schedule[0].days", "days"),
    ],
)
def test_bad_windows_name_the_field(window: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_inference_deployment(body(window))
    message = str(info.value)
    assert f"spec.scaling.{path}" in message
    assert words in message
