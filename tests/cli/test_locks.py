"""The two lock files stay exact: runtime = closure of pyproject's dependencies, test = the rest.

`make` installs both with ``pip install --no-deps``, so a lock that misses a dependency
would install a broken environment (``pip check`` in the Makefile catches it at install
time; these tests catch it at commit time). The closures are computed from the metadata of
the installed distributions, which are the locked versions in a `make` venv.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements.lock"
TEST = ROOT / "requirements-test.lock"
# the editable install's build backend; torch also imports setuptools at run time
BUILD = ("setuptools", "wheel")


def _pins(path: Path) -> dict[str, Requirement]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def _closure(roots: list[str]) -> set[str]:
    """Names of ``roots`` and everything they require here (markers evaluated on this host)."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here (not a `make` venv)")
        for text in requires:
            dep = Requirement(text)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": e}) for e in ("", *seen[name])
            ):
                todo.append(dep)
    return set(seen)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_line_is_an_exact_pin_and_the_locks_are_disjoint():
    runtime, test = _pins(RUNTIME), _pins(TEST)
    for req in [*runtime.values(), *test.values()]:
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req} is not pinned with =="
    assert not runtime.keys() & test.keys()


def test_runtime_lock_is_the_closure_of_the_runtime_dependencies():
    assert set(_pins(RUNTIME)) == _closure([*_project()["dependencies"], *BUILD])


def test_test_lock_is_the_closure_of_the_test_extra_minus_runtime():
    runtime = set(_pins(RUNTIME))
    test_extra = _project()["optional-dependencies"]["test"]
    assert set(_pins(TEST)) == _closure(test_extra) - runtime


def test_cuda_wheels_and_triton_are_linux_only():
    for name, req in _pins(RUNTIME).items():
        is_linux_only = name.startswith(("nvidia-", "cuda-")) or name == "triton"
        marker = str(req.marker) if req.marker else ""
        assert (marker == 'sys_platform == "linux"') == is_linux_only, f"{name}: {marker!r}"


def test_installed_versions_match_the_locks():
    for name, req in {**_pins(RUNTIME), **_pins(TEST)}.items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here (not a `make` venv)")
        assert req.specifier.contains(version, prereleases=True), f"{name} {version} vs {req}"
