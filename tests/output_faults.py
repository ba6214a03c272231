"""Outputs that cannot be written, for the CLI tests of every verb (also as root)."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

from haloscope.atomic import is_temp_name

HALOSCOPE = Path(sys.executable).parent / "haloscope"


def unwritable_out(tmp_path: Path) -> Path:
    """An --out that cannot be created or written, also for root.

    A user gets a read-only folder (chmod 0o555). Root writes there regardless (it bypasses
    permission bits), so as root the out is put below a regular FILE: creating it fails with
    ENOTDIR for every user, which is the same kind of error (an OSError naming the path).
    """
    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    return blocker / "out"


def limit_file_size(max_bytes: int):
    """preexec_fn: files may grow to ``max_bytes`` only (EFBIG after), like a full disk.

    Works for root too. SIGXFSZ is ignored (Python also ignores it at start-up), so a write past
    the limit fails with EFBIG (an OSError) instead of killing the process.
    """

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def run_verb(*args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HALOSCOPE), *args], capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn
    )


def one_error_line(proc: subprocess.CompletedProcess, verb: str) -> str:
    """The one ``haloscope VERB: error`` line; exit 2 and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if f"haloscope {verb}: error" in ln]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def debris(out: Path) -> list[Path]:
    """Temporary files or folders left under ``out``."""
    return [p for p in out.rglob("*") if is_temp_name(p.name)]


def assert_umask_modes(root: Path) -> None:
    """Every file under ``root`` is 0o644 and every folder 0o755 (umask 0o022)."""
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
    assert modes
    wrong = {
        str(p.relative_to(root)): oct(mode)
        for p, mode in modes.items()
        if mode != (0o755 if p.is_dir() else 0o644)
    }
    assert wrong == {}
