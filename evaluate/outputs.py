"""Where the evaluate verbs write: checked before any work, and a report moved in whole.

``eval`` computes for seconds to minutes and writes several files (CSV, JSON, a report of
many PNGs). So that a read-only folder or a file in the way of a folder costs nothing and
leaves nothing half-written:

- :func:`check_writable` raises, before anything is computed or created, the ``OSError``
  that writing would raise, naming the folder (the CLI prints it as one line);
- every file is written through :mod:`haloscope.atomic` (temporary sibling, then rename);
- the report is built in a hidden sibling folder (:func:`staged_folder`) and its files are
  moved into the report folder only once all of them exist, ``report.html`` last; on any
  error the staging folder is removed and the report folder is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["check_writable", "staged_folder"]

# moved last, so a reader never finds a page whose images are missing
_PAGES = ("report.md", "report.html")


def _os_error(code: int, path: Path) -> OSError:
    cls = {errno.ENOTDIR: NotADirectoryError, errno.EISDIR: IsADirectoryError,
           errno.EACCES: PermissionError}[code]  # fmt: skip
    return cls(code, os.strerror(code), str(path))


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Raise the ``OSError`` that writing ``path`` would raise, without creating anything.

    Args:
        path: a file to be written (its folders may not exist yet), or with ``folder=True``
            a folder to be created or written into.
        folder: ``path`` is a folder, not a file.

    Returns:
        ``path``.

    Raises:
        NotADirectoryError: a regular file stands where a folder is needed (named).
        IsADirectoryError: a folder stands where the file is to be written.
        PermissionError: the nearest existing folder cannot be written.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise _os_error(errno.ENOTDIR if folder else errno.EISDIR, path)
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:  # exists() is False under a file too
        probe = probe.parent
    if not probe.is_dir():
        raise _os_error(errno.ENOTDIR, probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _os_error(errno.EACCES, probe)
    return path


def _move_into(staging: Path, final: Path) -> None:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    files.sort(key=lambda p: _PAGES.index(p.name) + 1 if p.name in _PAGES else 0)  # stable
    for src in files:
        dst = final / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


@contextlib.contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``final``; on success move its files into it.

    Files already in ``final`` that the new report does not replace are kept. On an error
    the temporary folder is removed and ``final`` is untouched.

    Args:
        final: the report folder (created when missing).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield staging
        final.mkdir(exist_ok=True)
        _move_into(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
