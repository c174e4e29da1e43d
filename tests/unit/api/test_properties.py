"""Properties over generated InferenceDeployments (hypothesis, from the API models).

1. `validate` accepts => `render` succeeds and the serving contract accepts the arguments render wrote into the
   RayService; `validate` rejects => exit 1, every problem with a field path, no traceback (and render refuses too).
2. The API models and the generated CRD (OpenAPI schema + CEL, admitted as the API server would) give the same
   verdict, so neither can drift from the other.
"""

from __future__ import annotations

import io
import re
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.support.crd_admission import Admission
from tests.unit.api.strategies import deployment_bodies, mutated_bodies
from tokenplane_cli.render import render_command
from tokenplane_cli.validate import check_document, validate_files
from tokenplane_operator.api.crd import build_crd
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_serving.args import ServingArgs

_WORK = Path(tempfile.mkdtemp(prefix="tokenplane-properties-"))
_ADMISSION = Admission(build_crd())
_PROBLEM = re.compile(r"^    (\(document\)|[A-Za-z][^:\s]*): \S")  # a field path, then what to do
_FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, width=400, soft_wrap=True, highlight=False, color_system=None)


def _serving_args(rendered: str) -> list[dict[str, Any]]:
    """The `args` of every Serve application in the RayServices render printed: what the cluster runs."""
    found = []
    for document in yaml.safe_load_all(rendered):
        if isinstance(document, dict) and document.get("kind") == "RayService":
            serve_config = yaml.safe_load(document["spec"]["serveConfigV2"])
            found += [app["args"] for app in serve_config["applications"]]
    return found


@settings(_FAST, max_examples=1000)
@given(st.one_of(deployment_bodies(), mutated_bodies()))
def test_what_validate_accepts_renders_and_serves(body: dict[str, Any]) -> None:
    # check_document is the whole of what `validate` decides per document and what `render` renders from;
    # test_cli_commands_agree_with_it below runs the real commands on generated files.
    checked = check_document(body)
    if checked.problems:
        assert all(_PROBLEM.match(f"    {problem}") for problem in checked.problems), checked.problems
        assert checked.state is None
        return
    if checked.unplanned is not None:
        # The one documented exception: `vmSize: auto` for a model outside the built-in table is valid (the
        # operator reads its config.json in the cluster) but cannot be planned offline, so render refuses it.
        assert body["spec"].get("hardware", {}).get("vmSize", "auto") == "auto"
        return
    assert checked.state is not None
    serve_config = yaml.load(checked.state.rayservice["spec"]["serveConfigV2"], Loader=yaml.CSafeLoader)
    for app in serve_config["applications"]:
        ServingArgs.model_validate(app["args"])  # the serving side's own entry check (build_app does the same)


@settings(_FAST, max_examples=60)
@given(st.one_of(deployment_bodies(), mutated_bodies()))
def test_cli_commands_agree_with_it(body: dict[str, Any]) -> None:
    path = _WORK / "cr.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = validate_files([path], _console(out), _console(err))
    report = out.getvalue() + err.getvalue()
    assert "Traceback" not in report and "internal error" not in report
    rendered, render_err = io.StringIO(), io.StringIO()
    with redirect_stdout(rendered):
        render_code = render_command(path, None, err=_console(render_err))
    checked = check_document(body)
    if checked.problems:
        problems = err.getvalue().splitlines()[1:]
        assert code == 1 and problems and all(_PROBLEM.match(line) for line in problems), report
        assert render_code == 1, "render must refuse what validate refuses"
        return
    assert code == 0, report
    if checked.unplanned is not None:
        assert render_code == 1 and "UnknownModel" in render_err.getvalue()
        return
    assert render_code == 0, render_err.getvalue()
    args = _serving_args(rendered.getvalue())
    assert args, rendered.getvalue()
    for item in args:
        ServingArgs.model_validate(item)


def _model_verdict(body: dict[str, Any]) -> bool | None:
    """True/False as the API models judge the body; None when only the API server's own checks object."""
    if _has_null_field(body.get("spec")):
        # The API server prunes null spec fields before validation (no spec field is nullable), so the CRD
        # accepts `maxReplicas: ~`; `tokenplane validate` refuses it on purpose, as the likely mistake it is.
        return None
    try:
        parse_inference_deployment(body)
    except InvalidSpecError as exc:
        paths = [p.path for p in exc.problems]
        # Namespaces, labels, annotations and a non-mapping metadata are the API server's checks, not the CRD's.
        if all(p.startswith("metadata") and p != "metadata.name" for p in paths):
            return None
        return False
    return True


def _has_null_field(value: object) -> bool:
    if isinstance(value, dict):
        return any(item is None or _has_null_field(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_null_field(item) for item in value)
    return False


@settings(_FAST, max_examples=500)
@given(st.one_of(deployment_bodies(), mutated_bodies()))
def test_models_and_crd_agree(body: dict[str, Any]) -> None:
    verdict = _model_verdict(body)
    if verdict is None:
        return
    errors = _ADMISSION.errors(body)
    assert verdict == (not errors), f"models say {'valid' if verdict else 'invalid'}, the CRD says {errors}"
