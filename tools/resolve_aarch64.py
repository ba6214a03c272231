"""Check that every pin of a lock file has a wheel for Linux aarch64 (GH200 / Grace nodes).

For each ``name==version`` line that applies on Linux aarch64 (its environment marker is
evaluated for that platform) and each Python version, runs::

    pip download --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 [...] --python-version 3.11 --no-deps -d TMP name==version

``[...]``: pip takes ``--platform`` tags literally (``manylinux_2_28`` does not admit a
``manylinux_2_27`` wheel), while pip on a real host with glibc 2.28 accepts every
``manylinux_2_17`` ... ``manylinux_2_28`` wheel. So the tags of every glibc from 2.17 to
``--glibc`` (default 2.28: RHEL/Rocky 8, the oldest GH200 host OS) are passed, and the
result records which tag the chosen wheel has. The records say the wheel that pip picked, or
that none exists (then whether the package index has
an sdist of that version, checked with ``pip download --no-binary=:all: --no-deps``, which
builds nothing but metadata). For torch it also reads the chosen wheel's
``torch/version.py`` to say which CUDA the aarch64 build targets. Downloads go to a temporary
folder that is removed afterwards. Needs network access to the package index.

Usage::

    python tools/resolve_aarch64.py [--lock requirements.lock] [--python 3.11 3.12]
        [--json docs/results/aarch64_resolution.json]

Exit status 0 when every applicable pin resolves to a wheel for every Python, else 1.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement


def platforms(glibc_minor: int) -> list[str]:
    """The manylinux aarch64 tags a host with glibc ``2.<glibc_minor>`` accepts, newest first."""
    tags = [f"manylinux_2_{m}_aarch64" for m in range(glibc_minor, 16, -1)]
    return tags + ["manylinux2014_aarch64"]


AARCH64_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "aarch64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def read_pins(lock: Path) -> list[Requirement]:
    """The ``name==version`` requirements of a lock file (comments and blanks skipped)."""
    pins = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins.append(Requirement(line))
    return pins


def applies(req: Requirement, python: str) -> bool:
    """Whether the pin's marker selects it on Linux aarch64 under ``python``."""
    if req.marker is None:
        return True
    env = {**AARCH64_ENV, "python_version": python, "python_full_version": f"{python}.0"}
    return req.marker.evaluate(env)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def _torch_cuda(wheel: Path) -> str | None:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read("torch/version.py").decode()
    match = re.search(r"^cuda(?:: Optional\[str\])? = (.+)$", text, re.M)
    return None if match is None else match.group(1).strip().strip("'\"")


def resolve(req: Requirement, python: str, tags: list[str], tmp: Path) -> dict[str, object]:
    """Try the aarch64 wheel of one pin; returns ``{"status": ..., ...}``."""
    pin = f"{req.name}{req.specifier}"
    dest = tmp / f"{python}-{req.name}"
    flags = [a for t in tags for a in ("--platform", t)]
    proc = _pip("--only-binary=:all:", *flags, "--python-version", python, "-d", str(dest),
                pin)  # fmt: skip
    if proc.returncode == 0:
        wheel = next(dest.glob("*.whl"))
        out: dict[str, object] = {"status": "wheel", "file": wheel.name}
        if req.name.lower() == "torch":
            out["torch_cuda"] = _torch_cuda(wheel)
        wheel.unlink()
        return out
    sdist = _pip("--no-binary=:all:", "-d", str(tmp / f"sdist-{req.name}"), pin)
    last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
    return {"status": "no aarch64 wheel", "sdist": sdist.returncode == 0, "pip": last}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--python", nargs="+", default=["3.11", "3.12"])
    parser.add_argument("--glibc", default="2.28", help="glibc of the target hosts (2.N)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    tags = platforms(int(args.glibc.split(".")[1]))
    pins = read_pins(args.lock)
    results: dict[str, dict[str, object]] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="resolve-aarch64-") as tmp:
        for python in args.python:
            rows: dict[str, object] = {}
            for req in pins:
                pin = f"{req.name}{req.specifier}"
                if not applies(req, python):
                    rows[pin] = {"status": "not needed on linux aarch64 (marker)"}
                    continue
                rows[pin] = res = resolve(req, python, tags, Path(tmp))
                ok &= res["status"] == "wheel"
                print(f"cp{python.replace('.', '')} {pin:<40} {res['status']:<18} "
                      f"{res.get('file', res.get('pip', ''))}", flush=True)  # fmt: skip
            results[f"cp{python.replace('.', '')}"] = rows
    summary = {"lock": args.lock.name, "glibc": args.glibc, "platforms": tags,
               "results": results}  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
