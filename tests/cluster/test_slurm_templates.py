"""The Slurm templates under slurm/ run as written, in a simulated Slurm on this CPU machine.

Each template is executed whole by bash, with test doubles of sbatch, srun and scontrol
first on PATH (``tests/cluster/fake_slurm``: sbatch runs a script at once, array tasks one by
one with Slurm's array variables; srun starts N copies of its command with an srun task's
variables; scontrol expands host lists and records requeues), so the command lines tested
are exactly the templates'. haloscope and torchrun are the real ones (from this venv), except
where a test double of torchrun records what the template passes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infer.infer_fixtures import make_checkpoint
from tests.shards.shard_fixtures import HN_WEIGHT, make_survey

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "slurm"
FAKES = Path(__file__).with_name("fake_slurm")
VENV_BIN = Path(sys.executable).parent
TEMPLATES = sorted(SLURM.glob("*.sbatch"))
# sbatch options the templates may use (a typo such as --gpus-per-nodes fails here)
KNOWN = {"--job-name", "--array", "--nodes", "--ntasks", "--ntasks-per-node", "--gpus-per-node",
         "--gpus-per-task", "--cpus-per-task", "--mem", "--time", "--requeue", "--signal",
         "--open-mode", "--output"}  # fmt: skip
SHARD_FLAGS = ("--shard-samples 64 --record-samples 16 --hard-neg-weight "
               f"{HN_WEIGHT} --hard-neg-path")  # fmt: skip


def _headers(path: Path) -> dict[str, str]:
    """``#SBATCH`` options of a template, checked to come before its first command."""
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/bash", path.name
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    opts = {}
    for i, line in enumerate(lines):
        if line.startswith("#SBATCH"):
            # sbatch stops reading #SBATCH lines at the first command
            assert i < first_command, f"{path.name}:{i + 1}: #SBATCH after a command"
            match = re.fullmatch(r"#SBATCH (--[a-z-]+)(?:=(\S+))?", line)
            assert match, f"{path.name}:{i + 1}: {line!r}"
            opts[match.group(1)] = match.group(2) or ""
    return opts


def _slurm_env(state: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus launcher variables, fakes first on PATH."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in drop}
    path = f"{FAKES}:{VENV_BIN}:{env.get('PATH', '')}"
    return {**env, "PATH": path, "FAKE_SLURM_DIR": str(state), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT), **extra}  # fmt: skip


def _run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _job_output(state: Path) -> str:
    return "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(state.glob("*.out")))


def _fingerprint(out: Path) -> dict[str, object]:
    """Per split: sample count and the sha256 of every shard, from the manifests."""
    got: dict[str, object] = {}
    for split in ("train", "val", "test"):
        doc = json.loads((out / split / "manifest.json").read_text())
        got[split] = (doc["num_samples"], {s["file"]: s["sha256"] for s in doc["shards"]})
    return got


def _free_port_for_job() -> tuple[int, int]:
    """(port, SLURM_JOB_ID) with ``20000 + job % 40000 == port`` and the port free now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 20000 <= port < 60000:
            return port, port - 20000 + 40000


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_headers_are_sane_and_scripts_parse(path: Path):
    opts = _headers(path)
    assert set(opts) <= KNOWN, set(opts) - KNOWN
    assert {"--job-name", "--time", "--output"} <= set(opts)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_train_header_asks_for_requeue_and_an_early_signal():
    opts = _headers(SLURM / "train.sbatch")
    assert "--requeue" in opts and opts["--ntasks-per-node"] == "1"
    assert re.fullmatch(r"B:USR1@(\d+)", opts["--signal"])
    assert _headers(SLURM / "shards.sbatch")["--array"].startswith("0-")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return make_survey(tmp_path_factory.mktemp("cluster"),
                       sizes={"train": 120, "val": 30, "test": 30})  # fmt: skip


@pytest.fixture(scope="module")
def one_task_shards(survey, tmp_path_factory) -> Path:
    """The reference: one `haloscope shards` process, no Slurm."""
    out = tmp_path_factory.mktemp("one") / "shards"
    flags = [*SHARD_FLAGS.split(), str(survey.lookup)]
    _run(["haloscope", "shards", "--data", str(survey.root), "--out", str(out), "--no-progress",
          *flags], _slurm_env(tmp_path_factory.mktemp("state")))  # fmt: skip
    return out


def test_array_conversion_with_merge_job_equals_one_task(survey, one_task_shards, tmp_path):
    """slurm/submit_shards.sh with 3 tasks: pass-1 array, pass-2 array, merge job, chained
    by afterok; the shards are byte-identical to a one-task conversion."""
    state, out = tmp_path / "state", tmp_path / "shards"
    state.mkdir()
    env = _slurm_env(state, DATA=str(survey.root), SHARDS=str(out), NUM_TASKS="3",
                     SHARDS_ARGS=f"{SHARD_FLAGS} {survey.lookup}")  # fmt: skip
    printed = _run(["bash", str(SLURM / "submit_shards.sh")], env).stdout
    jobs = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    assert [(j["args"], j["opts"].get("--array")) for j in jobs] == [
        (["pass1"], "0-2"), (["pass2"], "0-2"), ([], None)]  # fmt: skip
    assert jobs[1]["opts"]["--dependency"] == f"afterok:{jobs[0]['job']}"
    assert jobs[2]["opts"]["--dependency"] == f"afterok:{jobs[1]['job']}"
    assert Path(jobs[2]["script"]).name == "shards_merge.sbatch"
    assert f"merge: job {jobs[2]['job']}" in printed
    assert (state / "succeeded").read_text().split() == [str(j["job"]) for j in jobs], _job_output(
        state
    )
    assert len(list(state.glob("job-*_*.out"))) == 6  # 3 tasks x 2 passes
    assert _fingerprint(out) == _fingerprint(one_task_shards)
    merged = (state / f"job-{jobs[2]['job']}.out").read_text()
    for split in ("train", "val", "test"):  # the merge job's --verify
        assert f"{out / split}: OK (" in merged


FAKE_TORCHRUN = """#!/usr/bin/env python3
import json, os, signal, sys, time
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
keep = ("TORCHELASTIC_SIGNALS_TO_HANDLE", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "SLURM_PROCID")
(state / "torchrun.json").write_text(json.dumps(
    {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep}}))
if os.environ.get("FAKE_TORCHRUN_WAIT"):
    def saved(signum, frame):
        (state / "torchrun.signal").write_text(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, saved)
    signal.signal(signal.SIGTERM, saved)
    (state / "torchrun.started").write_text("")
    time.sleep(120)
    sys.exit(3)
"""


def _train_env(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    state, fakes = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    fakes.mkdir()
    (fakes / "torchrun").write_text(FAKE_TORCHRUN)
    (fakes / "torchrun").chmod(0o755)
    env = _slurm_env(state, SHARDS="/data/shards", RUN="/data/runs/r1", SLURM_JOB_ID="777",
                     SLURM_JOB_NODELIST="gh[07-08]", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4",
                     TRAIN_ARGS="--epochs 3", **extra)  # fmt: skip
    env["PATH"] = f"{fakes}:{env['PATH']}"
    return state, env


def test_train_template_runs_one_torchrun_per_node_with_c10d_on_the_first_node(tmp_path):
    state, env = _train_env(tmp_path)
    _run(["bash", str(SLURM / "train.sbatch")], env)
    seen = json.loads((state / "torchrun.json").read_text())
    assert seen["argv"] == [
        "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-id", "777", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "gh07:29500", "-m", "haloscope", "train", "--shards", "/data/shards",
        "--out-dir", "/data/runs/r1", "--resume", "auto", "--epochs", "3"]  # fmt: skip
    assert "SIGUSR1" in seen["env"]["TORCHELASTIC_SIGNALS_TO_HANDLE"].split(",")
    assert seen["env"]["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "150"  # < the 180 s of --signal
    assert seen["env"]["SLURM_PROCID"] == "0"  # started through srun
    assert not (state / "requeue.log").exists()


@pytest.mark.parametrize(("stop_signal", "received"), [(None, "SIGUSR1"), ("TERM", "SIGTERM")])
def test_usr1_before_the_time_limit_reaches_the_ranks_then_requeues(tmp_path, stop_signal,
                                                                   received):  # fmt: skip
    """--signal=B:USR1@180: Slurm signals the batch shell only; the template forwards USR1
    (or STOP_SIGNAL, for torch < 2.9) through srun to torchrun (which hands it to the
    ranks), waits for it to exit, and requeues the job."""
    extra = {"STOP_SIGNAL": stop_signal} if stop_signal else {}
    state, env = _train_env(tmp_path, FAKE_TORCHRUN_WAIT="1", **extra)
    proc = subprocess.Popen(["bash", str(SLURM / "train.sbatch")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (state / "torchrun.started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@180` does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (state / "torchrun.signal").read_text() == received
    assert (state / "requeue.log").read_text().split() == ["777"]
    assert "requeueing job 777" in err


@pytest.mark.dist
def test_train_template_trains_with_real_torchrun(one_task_shards, tmp_path):
    """The template end to end on one CPU node: fake srun, real torchrun and trainer."""
    state, run_dir = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    port, job = _free_port_for_job()
    flags = ("--arch convnext_atto --batch-size 16 --val-batch-size 32 --epochs 1 "
             "--max-steps-per-epoch 2 --num-workers 0 --device cpu --no-progress")  # fmt: skip
    env = _slurm_env(state, SHARDS=str(one_task_shards), RUN=str(run_dir), SLURM_JOB_ID=str(job),
                     SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", GPUS_PER_NODE="1",
                     RDZV_PORT=str(port), TRAIN_ARGS=flags)  # fmt: skip
    _run(["bash", str(SLURM / "train.sbatch")], env, timeout=900)
    assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()


@pytest.mark.dist
def test_infer_eval_template_scores_with_two_plain_srun_ranks(one_task_shards, tmp_path):
    """Inference as 2 srun ranks (no torchrun: the process group comes from SLURM_PROCID,
    SLURM_STEP_NUM_TASKS and the node list), then eval's report."""
    state, run_dir = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run_dir.mkdir()
    make_checkpoint(run_dir / "best.pt")
    _, job = _free_port_for_job()
    env = _slurm_env(state, SHARDS=str(one_task_shards), RUN=str(run_dir), SLURM_JOB_ID=str(job),
                     SLURM_JOB_NODELIST="localhost", FAKE_SRUN_TASKS="2",
                     INFER_ARGS="--device cpu --num-workers 0 --batch-size 16")  # fmt: skip
    proc = _run(["bash", str(SLURM / "infer_eval.sbatch")], env, timeout=900)
    assert "over 2 rank(s)" in proc.stderr
    import pyarrow.parquet as pq

    scores = pq.read_table(run_dir / "scores_test.parquet")
    manifest = json.loads((one_task_shards / "test" / "manifest.json").read_text())
    assert scores.num_rows == manifest["num_samples"]
    assert len(set(scores.column("task_id").to_pylist())) == scores.num_rows
    report = run_dir / "report_test"
    assert (report / "stratified_fpr.csv").exists() and (report / "report.html").exists()
