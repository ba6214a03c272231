"""Resumable stages of real ``haloscope`` calls: the runner behind ``haloscope gen4``.

A stage is either a subprocess ``python -m haloscope <verb> ...`` (or its ``torchrun``
launch with ``--nproc-per-node`` > 1), so an experiment exercises exactly the commands a user
types, each in a fresh process, or an in-process action (checks, tables). A stage is *done* when its marker
``DIR/stages/<name>.json`` exists (written atomically after the stage succeeded and its
outputs were checked) and its outputs still exist; done stages are skipped, so re-running
the same command continues a killed run. A stage that does run invalidates every later
stage.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from haloscope.atomic import atomic_write_text
from haloscope.errors import HaloscopeError

__all__ = [
    "STAGES_DIR",
    "LOGS_DIR",
    "StageFailed",
    "Stage",
    "haloscope_argv",
    "stage_done",
    "write_json",
    "run_stages",
]

log = logging.getLogger(__name__)
STAGES_DIR, LOGS_DIR = "stages", "logs"
_TAIL_LINES = 25


class StageFailed(HaloscopeError):
    """A stage's command exited non-zero or did not produce its outputs."""


@dataclass
class Stage:
    """One step of the experiment.

    Attributes:
        name: marker/log name, e.g. ``train_gen3``.
        outputs: files or folders that must exist once the stage has run.
        argv: builds the ``haloscope`` argv (verb first) when the stage runs; None for an
            in-process ``action``.
        action: in-process work (checks, the comparison table); None for a command.
        distributed: launched through torchrun when the experiment uses several processes.
        finished: optional check that the outputs are complete (not only present).
    """

    name: str
    outputs: tuple[Path, ...]
    argv: Callable[[], list[str]] | None = None
    action: Callable[[], dict] | None = None
    distributed: bool = False
    finished: Callable[[], bool] | None = None
    notes: dict = field(default_factory=dict)
    upstream_ran: bool = False  # set by run_stages: partial outputs are stale, do not resume


def haloscope_argv(args: Sequence[str], nproc_per_node: int = 1) -> list[str]:
    """The command line of one verb: this interpreter's ``-m haloscope``, or torchrun of it."""
    if nproc_per_node > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc_per_node}", "-m", "haloscope", *args]  # fmt: skip
    return [sys.executable, "-m", "haloscope", *args]


def _marker(out: Path, stage: Stage) -> Path:
    return out / STAGES_DIR / f"{stage.name}.json"


def stage_done(out: Path, stage: Stage) -> bool:
    """True when the stage's marker and all of its outputs exist (and it is finished)."""
    if not _marker(out, stage).is_file() or not all(p.exists() for p in stage.outputs):
        return False
    return stage.finished() if stage.finished is not None else True


def write_json(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, default=str) + "\n")


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _run_command(argv: list[str], log_path: Path, echo: bool) -> int:
    """Run ``argv``, copying its output to ``log_path`` (and to stderr when ``echo``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                sink.write(chunk)
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
        finally:
            code = proc.wait()
    return code


def _execute(out: Path, stage: Stage, nproc_per_node: int, echo: bool) -> dict:
    if stage.action is not None:
        return stage.action() or {}
    assert stage.argv is not None
    args = stage.argv()
    argv = haloscope_argv(args, nproc_per_node if stage.distributed else 1)
    log_path = out / LOGS_DIR / f"{stage.name}.log"
    log.info("stage %s: %s (log: %s)", stage.name, " ".join(["haloscope", *args]), log_path)
    code = _run_command(argv, log_path, echo)
    if code != 0:
        raise StageFailed(
            f"stage {stage.name} failed (exit {code}) running `haloscope {' '.join(args)}`; "
            f"fix the cause and re-run the same command to resume. Last lines of {log_path}:\n"
            f"{_tail(log_path)}"
        )
    return {"command": ["haloscope", *args], "log": str(log_path)}


def run_stages(
    out: Path, stages: Sequence[Stage], *, nproc_per_node: int = 1, echo: bool = True
) -> list[dict]:
    """Run the stages in order, skipping done ones; returns one timing record per stage.

    Args:
        out: experiment folder (markers in ``out/stages``, logs in ``out/logs``).
        stages: the plan, in dependency order.
        nproc_per_node: processes for ``distributed`` stages (torchrun when > 1).
        echo: copy each command's output to stderr as well as to its log.

    Raises:
        StageFailed: a command failed or left an output missing.
    """
    records, ran = [], False
    for index, stage in enumerate(stages):
        if not ran and stage_done(out, stage):
            prev = json.loads(_marker(out, stage).read_text())
            log.info("stage %s: done earlier (%.1f s), skipped", stage.name, prev.get("wall_s", 0))
            records.append({**prev, "skipped": True})
            continue
        if not ran:  # everything after the first stage that runs is stale
            for later in stages[index:]:
                _marker(out, later).unlink(missing_ok=True)
        stage.upstream_ran, ran = ran, True
        t0 = time.perf_counter()
        info = _execute(out, stage, nproc_per_node, echo)
        wall_s = time.perf_counter() - t0
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing or (stage.finished is not None and not stage.finished()):
            raise StageFailed(
                f"stage {stage.name} ended but its outputs are missing or "
                f"incomplete: {missing or [str(p) for p in stage.outputs]}"
            )
        record = {
            "stage": stage.name,
            "wall_s": round(wall_s, 3),
            **info,
            **stage.notes,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(_marker(out, stage), record)
        log.info("stage %s: done in %.1f s", stage.name, wall_s)
        records.append({**record, "skipped": False})
    return records
