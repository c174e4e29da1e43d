"""The repository layout keeps the standard library's `operator` importable."""

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert (ROOT / "operator" / "tokenplane_operator" / "__init__.py").exists()
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_is_not_shadowed_from_the_repo_root() -> None:
    # A fresh interpreter with the repo root first on sys.path, as `python` run from the checkout would have.
    code = "import operator, sys; print(operator.__file__); print(operator.itemgetter(1)([0, 7]))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    origin, value = result.stdout.split()
    assert Path(origin).parent != ROOT / "operator"
    assert "site-packages" not in origin and origin.endswith("operator.py")
    assert value == "7"


def test_packages_import_by_their_own_names() -> None:
    assert importlib.import_module("tokenplane_operator").__version__
    importlib.import_module("tokenplane_serving")
