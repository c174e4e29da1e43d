"""The CRD enforces by itself what it can: every bad case `validate` refuses for a reason the CRD can know is
refused by the generated schema and CEL rules too, admitted as the API server would (tests/support/crd_admission).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.crd_admission import Admission
from tests.unit.api.cases import GOOD, MISTAKES, Case
from tokenplane_operator.api.crd import build_crd

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "deploy" / "examples").glob("*.yaml"))}
ADMISSION = Admission(build_crd())


@pytest.mark.parametrize("case", [c for c in MISTAKES if c.who == "CRD"], ids=lambda c: c.id)
def test_the_crd_refuses_it_too(case: Case) -> None:
    assert ADMISSION.errors(case.body), f"kubectl apply would accept {case.id}"


@pytest.mark.parametrize("case", [c for c in MISTAKES if c.who == "CLI"], ids=lambda c: c.id)
def test_catalog_and_model_rules_are_beyond_the_crd(case: Case) -> None:
    # These need the GPU catalog or the model's config: the operator applies them (Stalled, with the message).
    assert ADMISSION.errors(case.body) == []


@pytest.mark.parametrize("body", [*GOOD.values(), *EXAMPLES.values()], ids=[*GOOD, *EXAMPLES])
def test_the_crd_admits_valid_documents(body: dict[str, Any]) -> None:
    assert ADMISSION.errors(body) == []


def test_two_cel_implementations_agree_on_every_case() -> None:
    # cel-python (pure Python) against common-expression-language (Rust): same verdict on every case in tests/.
    # (The cases refused by a CEL rule, whose messages start with the rule's fieldPath, and the valid ones.)
    python = Admission(build_crd(), cel_engine="python")
    refused = [c.body for c in MISTAKES if any(e.startswith(".") for e in ADMISSION.errors(c.body))]
    assert len(refused) >= 25
    for body in [*refused, *GOOD.values()]:
        assert python.errors(body) == ADMISSION.errors(body)


def _rules(node: dict[str, Any], path: str = ""):
    for rule in node.get("x-kubernetes-validations", []):
        yield path, node, rule
    for name, child in node.get("properties", {}).items():
        yield from _rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[]")


def test_cel_rules_stay_within_the_cost_budget() -> None:
    # The API server estimates each rule's worst-case cost from maxItems/maxLength/maxProperties and refuses a
    # CRD whose rules could exceed the budget. Ours iterate only literal lists and run regexes only on
    # metadata.name, whose length the schema bounds.
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = list(_rules(schema))
    assert len(rules) >= 25
    for path, node, rule in rules:
        expression = rule["rule"]
        for match in re.finditer(r"(\S+)\.(exists|all|exists_one|map|filter)\(", expression):
            assert match.group(1).endswith("]"), f"{path}: {expression} iterates a field"
        if ".matches(" in expression:
            assert "self.metadata.name.matches(" in expression and path == ""
            assert node["properties"]["metadata"]["properties"]["name"]["maxLength"] <= 63
        assert rule["message"] and "fieldPath" in rule, path
