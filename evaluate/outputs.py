"""Where the evaluate verbs write: checked before any work, and a report moved in whole.

``eval`` computes for seconds to minutes and writes several files (CSV, JSON, a report of
many PNGs). So that a read-only folder or a file in the way of a folder costs nothing and
leaves nothing half-written:

- :func:`haloscope.atomic.check_writable` raises, before anything is computed or created,
  the ``OSError`` that writing would raise, naming the path (the CLI prints it as one line);
- every file is written through :mod:`haloscope.atomic` (temporary sibling, then rename);
- the report is built in a hidden sibling folder (:func:`staged_folder`) and its files are
  moved into the report folder only once all of them exist, ``report.html`` last; on any
  error the staging folder is removed and the report folder is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_folder"]

# moved last, so a reader never finds a page whose images are missing
_PAGES = ("report.md", "report.html")


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
