"""Who may write a shard output root at a time: ``fcntl.flock`` on hidden lock files in it.

Two conversions into one ``--out`` would interleave their temporary files, part records,
shards and the zarr store. The rules, from what each mode writes:

- ``.haloscope-shards.lock``: held *exclusively* by a whole conversion (``--num-tasks 1``,
  every stage) and *shared* by the tasks of an array job. Tasks of one array run at the same
  time by design and write disjoint units (task t of T: pass-1 files and pass-2 buckets
  ``i % T == t``), so they share the root, while a whole conversion excludes all of them.
- ``.haloscope-shards.task-<t>.lock``: exclusive per task index, so a second copy of task t
  (an array re-submitted while the first still runs) never writes t's units twice.
- ``.haloscope-shards.merge.lock``: exclusive around the manifest step, which any task may
  reach once every bucket exists; a task that finds it taken leaves the manifests to the
  holder (``try_lock``).

Locks are taken without waiting: a busy one raises ``OutputBusyError`` naming the folder and
the holder (exclusive holders write ``pid N on HOST`` into their lock file and clear it on
release). The kernel releases a lock when its process dies, so a killed conversion never
leaves a stale lock; the files themselves stay (removing a lock file that another process
has open would let two writers each hold "the" lock). On NFS, Linux maps ``flock`` to POSIX
locks that the server shares between clients; Lustre needs the ``flock`` mount option.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from haloscope.errors import OutputBusyError

__all__ = [
    "LOCK_NAME",
    "MERGE_LOCK_NAME",
    "lock_output",
    "try_lock",
]

LOCK_NAME = ".haloscope-shards.lock"
MERGE_LOCK_NAME = ".haloscope-shards.merge.lock"
_TASK_LOCK = ".haloscope-shards.task-{:05d}.lock"


def _holders(out: Path, path: Path) -> str:
    """Who holds ``path``: its recorded owner, or the array tasks sharing the root lock."""
    owners = [_read(path)]
    if path.name == LOCK_NAME and not owners[0]:  # shared: each task records itself
        owners = [_read(p) for p in sorted(out.glob(_TASK_LOCK.replace("{:05d}", "*")))]
    return "; ".join(o for o in owners if o) or "owner not recorded"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _owner(task_index: int, num_tasks: int) -> str:
    task = f" (task {task_index} of {num_tasks})" if num_tasks > 1 else ""
    return f"pid {os.getpid()} on {socket.gethostname()}{task}"


def _acquire(path: Path, *, shared: bool) -> IO[str] | None:
    """The open, locked lock file, or None when another process holds the lock."""
    handle = open(path, "a+")  # closing it releases the lock
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def _hold(path: Path, *, shared: bool, owner: str | None) -> Iterator[bool]:
    """Hold ``path`` locked (yield True), or yield False when it is busy."""
    handle = _acquire(path, shared=shared)
    if handle is None:
        yield False
        return
    try:
        handle.truncate(0)  # no exclusive holder can exist now: any recorded owner is stale
        if owner is not None:
            handle.write(owner + "\n")
            handle.flush()
        yield True
    finally:
        if owner is not None:
            handle.truncate(0)
        handle.close()


@contextlib.contextmanager
def lock_output(out: Path, *, task_index: int, num_tasks: int) -> Iterator[None]:
    """Hold the locks a conversion (or one array task of it) needs on ``out``.

    Args:
        out: the output root; created if missing.
        task_index: this task's index (0 for a whole conversion).
        num_tasks: tasks of the array (1: a whole conversion, which excludes every other).

    Raises:
        OutputBusyError: another conversion, or another copy of this task, holds ``out``.
        OSError: ``out`` cannot be created or written (names the path).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    whole = num_tasks == 1
    owner = _owner(task_index, num_tasks)
    paths = [(out / LOCK_NAME, not whole, owner if whole else None)]
    if not whole:
        paths.append((out / _TASK_LOCK.format(task_index), False, owner))
    with contextlib.ExitStack() as stack:
        for path, shared, recorded in paths:
            if not stack.enter_context(_hold(path, shared=shared, owner=recorded)):
                what = "another conversion" if path.name == LOCK_NAME else "another copy of it"
                raise OutputBusyError(
                    f"{out}: output folder in use by {what} ({_holders(out, path)}); "
                    "wait for it to finish or choose another --out"
                )
        yield


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold ``path`` exclusively if free: yields True, or False when another process has it."""
    with _hold(Path(path), shared=False, owner=_owner(0, 1)) as held:
        yield held
