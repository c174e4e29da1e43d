"""The extraArgs type table against the installed vLLM's own argparse types and pydantic bounds."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from tokenplane_serving.args import MANAGED_ENGINE_KEYS, VLLM_SERVER_KEYS
from tokenplane_serving.engine_arg_rules import ENGINE_ARG_RULES, EngineArgRule


@pytest.fixture(scope="module")
def vllm_actions() -> dict[str, argparse.Action]:
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return {action.dest: action for action in AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())._actions}


def _vllm_bounds(name: str) -> dict[str, float]:
    import vllm.config

    bounds: dict[str, float] = {}
    for cls in vars(vllm.config).values():
        field = getattr(cls, "__pydantic_fields__", {}).get(name)
        for constraint in field.metadata if field else ():
            for kind in ("ge", "gt", "le", "lt"):
                if getattr(constraint, kind, None) is not None:
                    bounds[kind] = getattr(constraint, kind)
    return bounds


def _kind(action: argparse.Action) -> type:
    if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
        return bool
    parsed = action.type("7") if action.type else "7"
    if isinstance(parsed, int):
        return int
    return float if isinstance(parsed, float) else str


@pytest.mark.parametrize("name", sorted(ENGINE_ARG_RULES))
def test_rule_matches_vllm(name: str, vllm_actions: dict[str, argparse.Action]) -> None:
    """Kind, choices, nullability and bounds are what vLLM declares; a vLLM upgrade that changes one fails here."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    rule = ENGINE_ARG_RULES[name]
    assert name in vllm_actions, f"vLLM dropped --{name.replace('_', '-')}: remove it from ENGINE_ARG_RULES"
    action = vllm_actions[name]
    assert name not in MANAGED_ENGINE_KEYS
    assert rule.kind is _kind(action)
    assert rule.choices == tuple(action.choices or ())
    default = {f.name: f.default for f in dataclasses.fields(AsyncEngineArgs)}[name]
    assert rule.nullable == (default is None)
    declared = {k: v for k, v in (("ge", rule.ge), ("gt", rule.gt)) if v is not None}
    assert declared == _vllm_bounds(name)


@pytest.mark.parametrize(
    ("rule", "value", "fragment"),
    [
        (EngineArgRule(int, ge=1), "4096", "expected an integer, got '4096'; remove the quotes"),
        (EngineArgRule(bool), "true", "expected true or false, got 'true'; remove the quotes"),
        (EngineArgRule(int, ge=1), True, "expected an integer, got True"),
        (EngineArgRule(int, ge=1), 2.5, "expected an integer"),
        (EngineArgRule(int, ge=1), 0, "must be at least 1, got 0"),
        (EngineArgRule(int, gt=0), 0, "must be greater than 0"),
        (EngineArgRule(int), None, "must not be null"),
        (EngineArgRule(bool), "yes please", "expected true or false"),
        (EngineArgRule(float, ge=0), -1, "must be at least 0"),
        (EngineArgRule(str, choices=("fcfs", "priority")), "lifo", "not one of vLLM's values: fcfs, priority"),
    ],
)
def test_rule_refuses(rule: EngineArgRule, value: Any, fragment: str) -> None:
    """Each refusal says what was expected and what was given."""
    assert fragment in (rule.problem(value) or "")


@pytest.mark.parametrize("value", ["lots", "1e5", "4k"])
def test_text_is_not_told_to_lose_quotes_it_never_had(value: str) -> None:
    """YAML reads 1e5 (no dot) as text: removing quotes would not make it a number, so the hint is not given."""
    problem = EngineArgRule(int).problem(value) or ""
    assert problem.startswith(f"expected an integer, got {value!r}") and "quotes" not in problem


@pytest.mark.parametrize(
    ("rule", "value"),
    [(EngineArgRule(int, ge=1, nullable=True), None), (EngineArgRule(float, ge=0), 4), (EngineArgRule(bool), False)],
)
def test_rule_accepts(rule: EngineArgRule, value: Any) -> None:
    """Null where vLLM defaults to it, an integer for a float, and false for a flag are fine."""
    assert rule.problem(value) is None


def test_refused_server_keys_are_frontend_args_ray_serve_llm_never_reads() -> None:
    """Each key refused as vLLM's own server's is a FrontendArgs field, and no Ray Serve LLM module reads it."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    frontend = {field.name for field in dataclasses.fields(FrontendArgs)}
    assert set(VLLM_SERVER_KEYS) <= frontend, set(VLLM_SERVER_KEYS) - frontend
    spec = importlib.util.find_spec("ray.llm._internal.serve")
    assert spec is not None and spec.submodule_search_locations
    read: set[str] = set()
    for root in spec.submodule_search_locations:
        for source in Path(root).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            read |= set(re.findall(r"frontend_args\.(\w+)", text))
            read |= set(re.findall(r"frontend_kwargs(?:\.get\(|\[)[\"'](\w+)", text))
    assert "chat_template" in read, "the scan found none of the FrontendArgs Ray does read"
    assert not read & set(VLLM_SERVER_KEYS), read & set(VLLM_SERVER_KEYS)
