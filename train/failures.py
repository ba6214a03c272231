"""Failures of train and infer that reach the user as one line (``haloscope.cli`` prints them).

- Writes. The dispatcher prints an uncaught ``OSError`` from its ``filename``. Opening a file
  in a missing or read-only folder gives one, a full disk does not: ``write``/``flush`` on an
  open handle raise without a filename, pyarrow's writer too (``haloscope.atomic.naming``, which
  every atomic write applies, puts the path back), and ``torch.save`` replaces the error by a
  ``RuntimeError`` without the reason (``WriteErrors`` keeps it); infer calls
  ``haloscope.atomic.check_writable`` to fail a job before its work rather than after it.
- Loader workers. torch re-raises a worker's exception as ``type(exc)(text)`` whose text is
  the worker's whole traceback, and that re-raise leaves a reference cycle holding the
  DataLoader iterator, so its workers live on; train's workers block SIGTERM
  (``loop.start_batches``), so at exit ``multiprocessing`` waited for them forever.
  ``worker_batches`` re-raises the worker's own message and shuts the workers down first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, TypeVar

from haloscope.errors import HaloscopeError

__all__ = ["WriteErrors", "worker_batches"]

T = TypeVar("T")
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class WriteErrors:
    """A binary handle that keeps the ``OSError`` of a failed write (``torch.save`` hides it).

    Usage: ``sink = WriteErrors(handle)``; ``torch.save(obj, sink)``; on a ``RuntimeError``
    re-raise ``sink.error`` when it is set.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _from_worker(exc: Exception) -> Exception | None:
    """A fresh copy of a loader worker's error (no traceback, no context), or None."""
    text = str(exc)
    if not _WORKER.match(text):
        return None
    if not isinstance(exc, (HaloscopeError, OSError)):  # a bug: keep the worker's traceback
        return RuntimeError(text)
    message = text.rsplit(f"{type(exc).__name__}: ", 1)[-1]
    return type(exc)(" ".join(line.strip() for line in message.splitlines() if line.strip()))


def _stop_workers(exc: BaseException) -> None:
    """Shut down now the workers of the DataLoader iterators ``exc`` came through.

    NOTE: torch stops a loader's workers when its iterator is collected; after a worker's
    error the re-raise keeps the iterator in a reference cycle, and stopping the workers from
    the garbage collector took 5 s and, with SIGTERM blocked, left a worker alive.
    """
    tb = exc.__traceback__
    while tb is not None:
        shutdown = getattr(tb.tb_frame.f_locals.get("self"), "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        tb = tb.tb_next


def worker_batches(batches: Iterator[T]) -> Iterator[T]:
    """Yield from a loader's iterator; a worker's error comes out as its own message, after the
    workers are shut down (see the module docstring).

    Raises:
        HaloscopeError / OSError: the worker's, with its one-line message.
        RuntimeError: a worker's other exception (a bug), with the worker's traceback as text.
    """
    try:
        yield from batches
    except Exception as exc:  # noqa: BLE001 - only workers' errors are rewritten
        error = _from_worker(exc)
        if error is None:
            raise
        _stop_workers(exc)
        raise error from None
