"""Any bytes in any file: validate, render and plan answer with one line naming the file, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.unit.api.cases import BASE
from tokenplane_cli import app
from tokenplane_cli.files import MAX_FILE_BYTES

GOOD_YAML = yaml.safe_dump(BASE)

FILES: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)) * 4, "not UTF-8 text (byte 0x80 at offset 128)"),
    "UTF-16": ("apiVersion: x\n".encode("utf-16"), "not UTF-8 text"),
    "Latin-1": ("metadata: {name: caf\xe9}\n".encode("latin-1"), "not UTF-8 text"),
    "control character": (b"spec: \x01\n", "invalid YAML: unacceptable character"),
    "NUL byte": (GOOD_YAML.encode() + b"\x00", "invalid YAML"),
    "duplicate key": (GOOD_YAML.replace("spec:", "spec: {}\nspec:", 1).encode(), "duplicate key 'spec'"),
    "duplicate nested key": (
        b"apiVersion: tokenplane.io/v1alpha1\nkind: InferenceDeployment\nmetadata: {name: m}\n"
        b"spec:\n  model: {source: hf://a/b}\n  scaling:\n    maxReplicas: 2\n    maxReplicas: 8\n",
        ":8:5: invalid YAML: duplicate key 'maxReplicas' (first at line 7)",
    ),
    "deeply nested": (b"[" * 20000, "invalid YAML"),
    "a list": (b"- a\n- b\n", "document 0 is a list, expected a mapping"),
    "a scalar": (b"hello\n", "document 0 is a str value, expected a mapping"),
    "empty": (b"", "no YAML document found"),
    "tab indentation": (b"spec:\n\tmodel: x\n", "invalid YAML"),
    "unhashable key": (b"? [a]\n: 1\n", "found unhashable key"),
    "binary tag": (b"apiVersion: !!binary aGVsbG8=\nkind: InferenceDeployment\n", "apiVersion"),
    "python tag": (b"spec: !!python/object:os.system {}\n", "invalid YAML"),
    "too large": (b"a: " + b"x" * (MAX_FILE_BYTES + 1), f"the API server accepts at most {MAX_FILE_BYTES:,}"),
    # 300 bytes of aliases, ten levels of ten: a billion values, hours of walking before (a million: seconds).
    "billion laughs": (
        b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n".encode() for n in range(1, 6))
        + b"spec: {x: *a5}\n",
        "invalid YAML: its aliases (*name) expand to more than 1,000,000 values",
    ),
    "recursive alias": (b"spec: &x {model: *x}\n", ":1:7: invalid YAML: found unconstructable recursive node"),
}


@pytest.mark.parametrize("command", ["validate", "render", "plan"])
@pytest.mark.parametrize("name", FILES)
def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, command: str, name: str) -> None:
    content, fragment = FILES[name]
    path = tmp_path / "cr.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "internal error" not in result.output
    problem_lines = [line for line in result.output.splitlines() if str(path) in line]
    assert problem_lines and any(fragment in line for line in result.output.splitlines()), result.output


@pytest.mark.parametrize("command", ["render", "plan"])
def test_a_folder_says_to_pass_one_of_its_files(tmp_path: Path, command: str) -> None:
    # "cannot read: Is a directory" before; these commands take one document (validate takes the folder).
    result = CliRunner().invoke(app, [command, str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"a folder, not a file; pass one of its files, e.g. {tmp_path}/name.yaml" in result.output


def test_validate_takes_a_folder_as_kubectl_apply_does(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD_YAML)
    (tmp_path / "b.json").write_text(yaml.safe_dump({**BASE, "metadata": {"name": "bad"}, "spec": {}}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"{tmp_path}/a.yaml: m is valid" in result.output and f"✗ {tmp_path}/b.json" in result.output
    assert "notes.txt" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["validate", str(empty), str(tmp_path / "a.yaml")])
    assert "a folder with no .yaml, .yml or .json file" in result.output and "a.yaml: m is valid" in result.output


@pytest.mark.parametrize("command", ["validate", "render", "plan"])
def test_the_file_may_be_given_with_dash_f_or_on_stdin(tmp_path: Path, command: str) -> None:
    # kubectl's habit (and simulate's option): `No such option: -f` before.
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    by_option = CliRunner().invoke(app, [command, "-f", str(path)])
    assert by_option.exit_code == 0, by_option.output
    by_argument = CliRunner().invoke(app, [command, str(path)])
    assert by_option.output == by_argument.output
    piped = CliRunner().invoke(app, [command, "-f", "-"], input=GOOD_YAML)
    assert piped.exit_code == 0 and piped.output == by_argument.output.replace(str(path), "stdin"), piped.output
    broken = CliRunner().invoke(app, [command, "-"], input="spec: [")
    assert broken.exit_code == 1 and "stdin:1:8: invalid YAML" in broken.output, broken.output


@pytest.mark.parametrize("command", ["render", "up"])
def test_one_file_commands_say_what_they_miss(tmp_path: Path, command: str) -> None:
    missing = CliRunner().invoke(app, [command])
    assert missing.exit_code == 2 and f"tokenplane {command} FILE (or -f FILE" in missing.output
    two = CliRunner().invoke(app, [command, str(tmp_path / "a.yaml"), "-f", str(tmp_path / "b.yaml")])
    assert two.exit_code == 2 and "takes one file" in two.output


def test_timestamps_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML.replace("name: m", "name: m\n  annotations: {built: 2026-11-26T12:00:00Z}"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("command", "code"), [(["plan"], 1), (["simulate", "--trace", "steady", "-f"], 2)])
def test_commands_of_one_deployment_take_one_document(tmp_path: Path, command: list[str], code: int) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(GOOD_YAML + "---\n" + GOOD_YAML)
    result = CliRunner().invoke(app, [*command, str(path)])
    assert result.exit_code == code
    assert f"holds 2 documents; {command[0]} takes one InferenceDeployment" in result.output
    assert "Traceback" not in result.output and "expected a single document" not in result.output


def test_plan_reports_field_paths(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML.replace("maxReplicas: 2", "maxReplicas: '8'"))
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 1
    assert "spec.scaling.maxReplicas: expected an integer, got the string '8'" in result.output


def test_render_never_writes_names_with_a_slash(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML.replace("name: m", "name: team/llama"))
    result = CliRunner().invoke(app, ["render", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "metadata.name: 'team/llama' is not a valid name" in result.output
    assert not (tmp_path / "out").exists()


def test_render_out_never_overwrites_what_an_earlier_document_wrote(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    first = yaml.safe_load(GOOD_YAML) | {"metadata": {"name": "m", "namespace": "team-a"}}
    second = yaml.safe_load(GOOD_YAML) | {"metadata": {"name": "m", "namespace": "team-b"}}
    path.write_text(yaml.safe_dump_all([first, second]))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "would overwrite" in result.output and "separate directories" in result.output
    rendered = [yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")]
    assert rendered and {doc["metadata"].get("namespace") for doc in rendered} == {"team-a"}


def test_a_document_without_api_version_or_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    body = yaml.safe_load(GOOD_YAML)
    del body["apiVersion"], body["kind"]
    path.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "apiVersion: missing: add `apiVersion: tokenplane.io/v1alpha1`" in result.output
    assert "kind: missing: add `kind: InferenceDeployment`" in result.output


def test_plan_names_the_prices_file_when_it_priced_the_vm(tmp_path: Path) -> None:
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    vm_size = BASE["spec"]["hardware"]["vmSize"]
    values = tmp_path / "values.yaml"
    values.write_text(f"prices:\n  {vm_size}: 1.25\n")
    priced = CliRunner().invoke(app, ["plan", str(path), "--prices", str(values)])
    assert "/h at the price in" in priced.output and "at list price" not in priced.output
    listed = CliRunner().invoke(app, ["plan", str(path)])
    assert "/h at list price" in listed.output


def test_render_uses_the_operators_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenplane_cli.render import render_text
    from tokenplane_operator.api.validation import parse_inference_deployment
    from tokenplane_operator.desired.bundle import build_desired_state
    from tokenplane_operator.settings import OperatorSettings

    monkeypatch.setenv("TOKENPLANE_HEAD_CPU", "1500m")
    monkeypatch.setenv("TOKENPLANE_SYSTEM_NODE_VM_SIZE", "Standard_D4ds_v5")  # 1.5 + 0.5 CPUs: more than a D2s_v3
    monkeypatch.setenv("TOKENPLANE_SERVING_IMAGE", "registry.example/serving:9")
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    result = CliRunner().invoke(app, ["render", str(path)])
    assert result.exit_code == 0, result.output
    operator = build_desired_state(
        parse_inference_deployment(yaml.safe_load(GOOD_YAML)), OperatorSettings().render_config()
    )
    assert result.stdout == render_text(operator)
    assert "1500m" in result.stdout and "registry.example/serving:9" in result.stdout


@pytest.mark.parametrize("command", ["validate", "render"])
def test_bad_operator_settings_give_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv("TOKENPLANE_HEAD_CPU", "lots")
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 1
    assert "TOKENPLANE_HEAD_CPU:" in str(result.exception) and "Traceback" not in result.output


def test_validate_reports_a_head_too_big_for_a_system_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPLANE_HEAD_CPU", "8")
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "headGroupSpec.template.spec.containers[ray-head].resources" in result.output
    assert "cpu 8" in result.output and "lower TOKENPLANE_HEAD_CPU" in result.output


def test_validate_checks_the_head_against_the_system_node_size_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENPLANE_HEAD_CPU", "2")
    path = tmp_path / "cr.yaml"
    path.write_text(GOOD_YAML)
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0  # the default, a D4ds_v5: 2.5 <= 2.86
    monkeypatch.setenv("TOKENPLANE_SYSTEM_NODE_VM_SIZE", "Standard_D2s_v3")
    assert "Standard_D2s_v3" in CliRunner().invoke(app, ["validate", str(path)]).output  # 2.5 CPUs > 0.9
    monkeypatch.setenv("TOKENPLANE_SYSTEM_NODE_VM_SIZE", "Standard_Z9")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "TOKENPLANE_SYSTEM_NODE_VM_SIZE: Value error, unknown VM size 'Standard_Z9'" in str(result.exception)
