"""Test tiers and flags (--update-golden, --benchmark, e2e needs a cluster) and session-wide peers (Azurite)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.support.azurite import Azurite, AzuriteError


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the current output.")
    parser.addoption("--benchmark", action="store_true", help="Run benchmarks (they report numbers, assert little).")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_benchmark = pytest.mark.skip(reason="benchmark: run with --benchmark (make benchmark)")
    skip_e2e = pytest.mark.skip(reason="e2e: set TOKENPLANE_E2E_KUBECONFIG to a cluster with KubeRay (make test-e2e)")
    for item in items:
        if "benchmark" in item.keywords and not config.getoption("--benchmark"):
            item.add_marker(skip_benchmark)
        if "e2e" in item.keywords and not os.environ.get("TOKENPLANE_E2E_KUBECONFIG"):
            item.add_marker(skip_e2e)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's exit status, skipping the interpreter's teardown.

    Once every test has run and every report is written, the interpreter's own teardown of Ray's, torch's and
    vLLM's native extensions crashed once in a clean-clone run (a segmentation fault after "1127 passed"),
    turning a passing suite into a failed `make test`. Nothing of the suite runs in that teardown.
    """
    status = getattr(config, "_tokenplane_exitstatus", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._tokenplane_exitstatus = exitstatus  # type: ignore[attr-defined]


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether golden files should be rewritten instead of compared."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite Blob service for the session (free port; `connection_string`, `blob_endpoint`, `upload_dir`).

    Containers are shared across tests: use a container or prefix of your own.
    """
    try:
        instance = Azurite(tmp_path_factory.mktemp("azurite")).start()
    except AzuriteError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield instance
    finally:
        instance.stop()
