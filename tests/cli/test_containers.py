"""The container definitions copy every package, and installing into an existing torch keeps it.

Nothing under containers/ can be built here (no docker or apptainer on the CI machine); these
tests check what can be checked without building: the files name every package directory
of pyproject.toml, the base image is a build argument, and the install step they run
(``pip install -c <pins of the installed torch...> .``) resolves offline against the
locked environment without replacing torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
PIN = CONTAINERS / "pin_installed.py"


def _package_dirs() -> set[str]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["package-dir"].values())


def test_dockerfile_copies_every_package_and_takes_the_base_image_as_argument():
    text = (CONTAINERS / "Dockerfile").read_text()
    copied = set()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        copied |= {src.rstrip("/") for src in line.split()[:-1]}
    assert (
        _package_dirs() | {"pyproject.toml", "README.md", "containers/pin_installed.py"} <= copied
    )
    assert re.search(r"^ARG BASE_IMAGE$", text, re.M) and "FROM ${BASE_IMAGE}" in text
    ignore = (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][0] == "*"  # deny by default: no .venv in the context
    for entry in _package_dirs():
        assert f"!{entry}/" in ignore


def test_apptainer_definition_copies_every_package():
    text = (CONTAINERS / "haloscope.def").read_text()
    files = text.split("\n%files\n", 1)[1].split("\n%", 1)[0]
    sources = {line.split()[0] for line in files.strip().splitlines()}
    assert _package_dirs() | {"pyproject.toml", "containers/pin_installed.py"} <= sources
    assert "From: {{ BASE_IMAGE }}" in text and "%arguments" in text


def test_both_install_the_same_way():
    docker = (CONTAINERS / "Dockerfile").read_text()
    apptainer = (CONTAINERS / "haloscope.def").read_text()
    step = "pip install --no-cache-dir -c keep.txt ."
    pins = "python containers/pin_installed.py torch torchvision triton numpy > keep.txt"
    assert step in docker and step in apptainer and pins in docker and pins in apptainer


def test_pin_installed_names_the_installed_versions():
    out = subprocess.run(
        [sys.executable, str(PIN), "torch", "no-such-distribution"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = out.splitlines()
    assert line.startswith("torch==") and torch.__version__.startswith(line.split("==")[1])


def test_install_into_an_existing_torch_keeps_it(tmp_path):
    """`pip install -c keep.txt .` as in the containers, offline, into this venv: the
    pyproject ranges are met by what is installed and only haloscope would change."""
    keep = tmp_path / "keep.txt"
    pins = subprocess.run(
        [sys.executable, str(PIN), "torch", "torchvision", "triton", "numpy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keep.write_text(pins)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
           "--no-build-isolation", "--disable-pip-version-check", "-c", str(keep), str(ROOT)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    would = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    assert would == ["Would install haloscope-0.1.0"], proc.stdout[-2000:]
