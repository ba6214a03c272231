"""A real `haloscope train` process, with a loader worker, stopped by signals to its group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.train_fixtures import tiny_argv

REPO = Path(__file__).resolve().parents[2]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "haloscope", "train", *argv]
    # its own process group, so the signal reaches the loader worker too (as a terminal's ^C)
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for_steps(run: Path, proc: subprocess.Popen, steps: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    metrics = run / "metrics.csv"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"run did not reach {steps} steps (rc={proc.poll()})")


@pytest.mark.parametrize(
    "signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 0), (signal.SIGUSR1, 0)]
)
def test_signal_to_process_group_saves_last_and_exits_cleanly(
    tiny_shards: Path, tmp_path: Path, signum: int, code: int
) -> None:
    run, log = tmp_path / "run", tmp_path / "log.txt"
    argv = tiny_argv(
        tiny_shards, run, "--epochs", "50", "--num-workers", "1", "--ckpt-every-steps", "0"
    )
    proc = _start(argv, log)
    try:
        _wait_for_steps(run, proc, 2)
        os.killpg(proc.pid, signum)
        assert proc.wait(timeout=120) == code, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text, text[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in text and "--resume" in text
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["progress"]["global_step"] >= 2


def test_an_inherited_sig_ign_is_handed_back(tiny_shards: Path, tmp_path: Path) -> None:
    """A job started in the background by a shell inherits SIGINT ignored: the run catches
    SIGINT while it trains (to save last.pt), then restores SIG_IGN, not Python's default."""
    argv = tiny_argv(tiny_shards, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "1")
    code = (
        "import signal\nfrom haloscope.train.cli import main\n"
        f"rc = main({argv!r})\nprint(rc, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def ignore_sigint() -> None:  # as a shell does for a background job
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=ignore_sigint,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "True"], proc.stdout


def test_usr1_saves_last_and_resume_auto_finishes_like_an_uninterrupted_run(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """Slurm's `--signal=B:USR1@180`, as torchrun hands it to a rank: last.pt and exit 0;
    `--resume auto` starts where there is no last.pt and continues where there is one, to
    the same final weights as a run that was never stopped."""
    extra = ("--epochs", "4", "--max-steps-per-epoch", "4", "--num-workers", "1",
             "--ckpt-every-steps", "0", "--resume", "auto")  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    for run in (full, part):
        log = tmp_path / f"{run.name}.txt"
        proc = _start(tiny_argv(tiny_shards, run, *extra), log)
        try:
            if run is part:
                _wait_for_steps(run, proc, 2)
                os.kill(proc.pid, signal.SIGUSR1)
            assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert "resumed from" not in log.read_text()  # nothing to resume: a fresh start
    assert "stopped by SIGUSR1" in (tmp_path / "part.txt").read_text()
    stopped = torch.load(part / "last.pt", weights_only=True)["progress"]["global_step"]
    assert 2 <= stopped < 16

    log = tmp_path / "resumed.txt"
    proc = _start(tiny_argv(tiny_shards, part, *extra), log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    assert "resumed from" in log.read_text()
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (full, part))
    assert a["progress"] == b["progress"] and a["progress"]["global_step"] == 16
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
