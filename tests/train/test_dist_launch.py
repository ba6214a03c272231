"""Launch detection: torchrun's variables, plain srun ranks, single process; a 2-rank srun group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from haloscope.errors import ConfigError
from haloscope.train.dist import Launch, detect_launch, first_host

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("srun_rank_worker.py")
STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "gh[007-008]"}


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node01", "node01"),
        ("a1,b2", "a1"),
        ("gh[003-006,9]-ib,login1", "gh003-ib"),
        ("rack[1-2]-n[07-09]", "rack1-n07"),
        ("gpu[0012]", "gpu0012"),
    ],
)
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


def test_single_process_without_launcher_variables():
    assert detect_launch({}) == Launch()
    # a one-task srun step is a single process too
    assert detect_launch({**STEP, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Launch()


def test_torchrun_variables_win_over_slurm():
    env = {
        **STEP,
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
    }
    assert detect_launch(env) == Launch("torchrun", 5, 1, 8, None)


def test_srun_ranks_rendezvous_on_the_first_node():
    env = {**STEP, "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4"}
    assert detect_launch(env) == Launch("srun", 3, 1, 4, "tcp://gh007:24242")


def test_srun_step_size_and_explicit_rendezvous_take_precedence():
    env = {
        **STEP,
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "x[5-6]",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29400",
    }
    assert detect_launch(env) == Launch("srun", 0, 0, 2, "tcp://10.0.0.1:29400")
    del env["MASTER_ADDR"]
    assert detect_launch(env).init_method == "tcp://x5:29400"


def test_batch_script_with_several_tasks_is_refused_with_how_to_launch():
    env = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    with pytest.raises(ConfigError, match=r"not one of an srun step's tasks.*`srun`"):
        detect_launch(env)


def test_no_rendezvous_host_is_refused_in_one_line():
    env = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    with pytest.raises(ConfigError, match="no MASTER_ADDR and no SLURM_STEP_NODELIST") as exc:
        detect_launch(env)
    assert "\n" not in str(exc.value)


def test_bad_integer_names_the_variable():
    with pytest.raises(ConfigError, match="SLURM_NTASKS='four'"):
        detect_launch({**STEP, "SLURM_PROCID": "0", "SLURM_NTASKS": "four"})


def _free_port() -> int:
    """A free port that ``20000 + SLURM_JOB_ID % 40000`` can name (below 60000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 20000 <= port < 60000:
            return port


@pytest.mark.dist
def test_two_plain_srun_ranks_form_a_gloo_group(tmp_path: Path) -> None:
    """Two processes with only Slurm's per-task variables (as srun sets them, no torchrun):
    the rendezvous host comes from the node list and the port from the job id."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    base = {k: v for k, v in base.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base |= {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "SLURM_NTASKS": "2",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_ID": str(port - 20000 + 40000),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path)],
            env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    docs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, doc in enumerate(docs):
        assert doc["rank"] == r and doc["local_rank"] == r and doc["world_size"] == 2
        assert doc["launcher"] == "srun"
        assert doc["mean"] == 1.5  # (1 + 2) / 2
        assert doc["gathered"] == [0.0, 0.0, 1.0]  # rank order, unequal lengths
