"""pyproject.toml states what the code needs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("haloscope", "preprocess", "shards", "train", "infer", "evaluate", "bench")
# stdlib modules and the first Python that has them
STDLIB_SINCE = {"tomllib": (3, 11)}


def _min_python() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    assert match, f"requires-python should be a plain lower bound, got {spec!r}"
    return int(match.group(1)), int(match.group(2))


def test_requires_python_covers_the_stdlib_modules_used():
    used = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for module in STDLIB_SINCE:
                if re.search(rf"^\s*(import|from) {module}\b", path.read_text(), re.M):
                    used.setdefault(module, path.relative_to(ROOT))
    assert "tomllib" in used, "the config loader reads TOML with tomllib"
    for module, where in used.items():
        assert _min_python() >= STDLIB_SINCE[module], f"{where} imports {module}"


def test_runtime_dependencies_cover_scipy_and_jinja2():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"scipy", "jinja2"} <= names  # intervals (scipy.stats) and the HTML report


def test_every_package_folder_is_installed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            package = ".".join([name, *rel.parts])
            assert package in listed, (
                f"{init.parent} is a package missing from pyproject's packages"
            )
