"""The one atomic-write helper: a temporary sibling, fsync, ``os.replace``, user's umask.

Every file haloscope writes for a user (checkpoints, shards, manifests, scores, reports,
lookups, plots) goes through here, so that

- a reader never sees a half-written file: the data land in a hidden temporary sibling
  (``.NAME.<random>.tmp``) that is renamed over the destination only when complete;
- a failure (disk full, read-only folder, Ctrl-C) leaves the destination as it was and
  removes the temporary file;
- the file gets the permissions of any other file the user creates (``0666 & ~umask``),
  not the ``0600`` of ``tempfile.mkstemp``, so a group can read a run.

Usage::

    with atomic_path(out) as tmp:          # a library writes to a path
        pq.write_table(table, tmp)
    with atomic_open(out, "w") as fh:      # we write to a handle
        json.dump(obj, fh)
    atomic_write_bytes(out, data)

A verb that works for minutes before it writes calls :func:`check_writable` on each output
first, so a read-only folder or a file in the way fails at once, creating nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_link",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "file_mode",
    "is_temp_name",
    "naming",
]

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``).

    ``os.umask`` can only be read by setting it; between the two calls another thread (the
    checkpoint writer, a loader's pin thread) would create files under umask 0. So it is set
    and restored once, at import, and ``/proc/self/status`` is preferred when it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


_IMPORT_UMASK = os.umask(0o022)
os.umask(_IMPORT_UMASK)


def file_mode() -> int:
    """Permission bits for a new regular file under the process umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def is_temp_name(name: str) -> bool:
    """True for a temporary sibling this module creates (``.NAME.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside the block ``path`` as its filename, if it has none.

    A full disk fails ``write``/``flush``/``fsync`` on an open handle (and pyarrow's writer)
    with no filename; the CLI prints an OSError by its filename, so the block's file is named.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Raise now the ``OSError`` that writing ``path`` would raise later; create nothing.

    The nearest existing folder is asked by the file system itself: an unnamed temporary file
    is opened in it and dropped at once (so read-only mounts, ACLs and root are judged as a
    real write would be). The error names what the write would fail on: ``path`` when its
    folder exists, else the first folder that would have to be created.

    Args:
        path: a file to be written (its folders may not exist yet), or with ``folder=True``
            a folder to be created or written into.
        folder: ``path`` is a folder, not a file.

    Returns:
        ``path``.

    Raises:
        IsADirectoryError: a folder stands where the file is to be written.
        NotADirectoryError: a regular file stands where a folder is needed.
        OSError: the folder cannot be written (``PermissionError``, read-only file system, ...).
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        code = errno.ENOTDIR if folder else errno.EISDIR
        raise OSError(code, os.strerror(code), str(path))  # the subclass of that errno
    named, probe = path, path if folder else path.parent
    while not probe.exists() and probe != probe.parent:  # exists() is False under a file too
        named, probe = probe, probe.parent
    if not probe.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(named))
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(named)) from None
    return path


def _fsync_dir(folder: Path) -> None:
    # NOTE: makes the rename itself durable; not every file system allows opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``.

    Args:
        path: the destination file. Its folder is created if missing.
        fsync: flush the file (and the folder entry) to disk before and after the rename.

    Raises:
        OSError: the folder cannot be created or written (the caller's CLI prints it as one
            line naming the path); the destination is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with naming(path):  # e.g. ENOSPC from a write() or fsync(): say which file it was
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(2, "the writer did not create its output", str(tmp))
            os.chmod(tmp, file_mode())
            if fsync:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
            if fsync:
                _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    Args:
        path: the destination file.
        mode: ``"w"``/``"wb"`` (``"x"`` and appends make no sense for a fresh temp file).
        **kwargs: passed to ``open`` (e.g. ``encoding``, ``newline``).
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, fsync=False) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_link(src: str | Path, path: str | Path) -> Path:
    """Make ``path`` hold the finished file ``src``'s bytes, atomically; returns ``path``.

    A hard link where the file system allows it (no second write: the bytes are shared, and
    since every write of this module replaces a folder entry rather than the bytes behind it,
    a later write of either path leaves the other as it was); a copy elsewhere.

    Raises:
        OSError: as ``atomic_path``; ``path`` is left untouched.
    """
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FUSE file systems)
            shutil.copyfile(src, tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)
