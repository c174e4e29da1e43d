"""Evaluate the chart's alert rules and the dashboard's queries on made-up series with Prometheus' own engine.

`promtool test rules` (Debian's prometheus package, installed by `make system-deps`) runs rule unit tests: input
series, then the alerts firing or an expression's samples at a time. Parsing a rule only proves it is PromQL; this
shows what it answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["alerts_firing", "promtool", "samples"]


def promtool() -> str:
    """The promtool binary; skips the test without one (fails it on CI, where `make system-deps` installs it)."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed: run `make system-deps` (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(tmp: Path, groups: list[dict[str, Any]], test: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [test]})
    )
    return subprocess.run(
        [promtool(), "test", "rules", "test.yaml"], cwd=tmp, capture_output=True, text=True, timeout=60, check=False
    )


def alerts_firing(
    tmp: Path,
    rules: list[dict[str, Any]],
    series: dict[str, str],
    *,
    alert: str,
    at: str,
    expected: list[dict[str, str]],
) -> None:
    """Assert that `alert` fires at `at` for exactly the `expected` label sets (the rule's own labels included).

    Args:
        tmp: A scratch directory.
        rules: The rules, as the PrometheusRule's groups list them (annotations are not compared).
        series: Input series in promtool's notation, `'name{labels}': '0+10x60'` (one value a minute).
        alert: The alert's name.
        at: The evaluation time after the first sample (`90m`).
        expected: The label sets the firing alert has, one per series.
    """
    bare = [{k: v for k, v in r.items() if k != "annotations"} for r in rules]
    test = {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
        ],
    }
    result = _run(tmp, [{"name": "under-test", "rules": bare}], test)
    assert result.returncode == 0, result.stdout + result.stderr


def samples(tmp: Path, expr: str, series: dict[str, str], *, at: str, expected: list[dict[str, Any]]) -> None:
    """Assert that `expr` evaluated at `at` gives exactly the `expected` samples ({"labels": "{...}", "value": v})."""
    test = {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "promql_expr_test": [{"expr": expr, "eval_time": at, "exp_samples": expected}],
    }
    result = _run(tmp, [], test)
    assert result.returncode == 0, result.stdout + result.stderr
