"""checkov scans what the chart renders (default values and every ci/ scenario) and both Dockerfiles.

No check may fail; a skip is only accepted with its reason written next to it (the Deployment's
`checkov.io/skipN` annotations, a Dockerfile's `# checkov:skip=ID: reason`). checkov has dependencies that clash
with ours, so it lives in its own venv, `make checkov-install` (part of `make test`) puts it in `.venv-checkov`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import CHART, render

ROOT = CHART.parents[1]
CHECKOV = Path(os.environ.get("TOKENPLANE_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
SCENARIOS = {"default": {}} | {p.stem: yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml"))}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not CHECKOV.exists():
        if os.environ.get("CI"):
            pytest.fail(f"checkov is not installed at {CHECKOV}: `make checkov-install`")
        pytest.skip(f"checkov is not installed at {CHECKOV}: `make checkov-install`")
    scanned = tmp_path_factory.mktemp("checkov")
    for name, values in SCENARIOS.items():
        (scanned / f"{name}.yaml").write_text(yaml.safe_dump_all(render(values)))
    for image in ("operator", "serving"):
        (scanned / image).mkdir()
        shutil.copy(ROOT / image / "Dockerfile", scanned / image / "Dockerfile")
    result = subprocess.run(
        [str(CHECKOV), "-d", str(scanned), "--framework", "kubernetes", "dockerfile", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ | {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    parsed = json.loads(result.stdout)
    return parsed if isinstance(parsed, list) else [parsed]


def test_checkov_finds_no_failed_check(report: list[dict[str, Any]]) -> None:
    summaries = {r["check_type"]: r["summary"] for r in report}
    assert set(summaries) == {"kubernetes", "dockerfile"}, summaries
    failed = [
        (c["check_id"], c["check_name"], c["resource"], c["file_path"])
        for r in report
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, failed
    assert all(s["passed"] > 40 for s in summaries.values()), summaries  # the scan really ran the checks


def test_every_checkov_skip_says_why(report: list[dict[str, Any]]) -> None:
    skipped = [c for r in report for c in r["results"]["skipped_checks"]]
    reasons = {c["check_id"]: (c["check_result"].get("suppress_comment") or "") for c in skipped}
    assert set(reasons) <= {"CKV_K8S_38", "CKV_K8S_15", "CKV_K8S_43", "CKV_DOCKER_2"}, reasons
    assert all(len(reason.split()) >= 8 for reason in reasons.values()), reasons
