"""Every verb answers --help with its flags and defaults, through the real console script."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from haloscope.cli import VERBS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", *args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_every_verb():
    proc = _run("--help")
    assert proc.returncode == 0
    for verb in VERBS:
        assert re.search(rf"^\s+{verb}\s+\S", proc.stdout, re.M), verb


@pytest.mark.parametrize("verb", list(VERBS))
def test_verb_help_documents_every_flag(verb):
    proc = _run(verb, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"usage: haloscope {verb}")
    # argparse help lists each option as "  --flag ..." followed by its help text; a flag
    # without help text would be followed directly by the next option line.
    options = re.findall(r"^  (-{1,2}[\w-]+)", proc.stdout, re.M)
    assert options, proc.stdout
    body = proc.stdout.split("options:", 1)[-1]
    blocks = re.split(r"\n  (?=-)", body)
    for block in blocks[1:]:
        lines = block.rstrip().splitlines()
        has_help = len(lines) > 1 or re.search(r"\S\s{2,}\S", lines[0]) is not None
        assert has_help, f"{verb}: flag without help text: {lines[0]!r}"


def test_unknown_verb_is_an_error():
    proc = _run("frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_version():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("haloscope ")
