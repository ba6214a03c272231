"""``haloscope env`` through the real CLI on this machine (text and --json), and its report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import torch

from haloscope.env import format_text

SCRUB = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in SCRUB}
    return {**env, **extra}


def _run(*args: str, **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "haloscope", "env", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(**extra))


def test_text_report_on_this_machine():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"torch      {torch.__version__}" in out
    assert f"cpu        {platform.machine()}, {os.cpu_count()} cores" in out
    assert "launch     single process (rank 0 of 1)" in out
    if not torch.cuda.is_available():
        assert "trainer    device cpu, precision fp32, step eager" in out


def test_json_report_sees_slurm_ranks():
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "gh[01-02]",
    }
    proc = _run("--json", "--device", "cpu", **slurm)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["cpu"]["arch"] == platform.machine()
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda"] == torch.version.cuda
    assert info["nvidia"]["cuda_available"] == torch.cuda.is_available()
    launch = info["launch"]
    assert (launch["launcher"], launch["rank"], launch["world_size"]) == ("srun", 1, 2)
    assert launch["init_method"] == "tcp://gh01:20007"
    assert launch["variables"]["SLURM_NTASKS"] == "2"
    assert info["trainer"] == {"device": "cpu", "precision": "fp32", "step": "eager"}


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom haloscope.cli import main\ntry:\n    main(['env', '--help'])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: haloscope env" in proc.stdout and "--json" in proc.stdout


def _info(**changes) -> dict:
    info = {
        "haloscope": "0.1.0",
        "python": {"version": "3.12.3", "executable": "/usr/bin/python"},
        "os": {"system": "Linux", "release": "5.14", "libc": "glibc 2.34"},
        "cpu": {"arch": "aarch64", "count": 72, "usable": 72},
        "torch": {"version": "2.14.1", "cuda": "13.0", "cudnn": "9.24.0", "nccl": "2.30.7"},
        "nvidia": {
            "driver": "580.82.07",
            "driver_needed": "580.65.06",
            "device_nodes": [],
            "nvidia_smi": None,
            "cuda_visible_devices": "0",
            "cuda_available": True,
            "arch_list": ["sm_90"],
            "problem": None,
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA GH200 480GB",
                    "memory_gib": 94.5,
                    "capability": "9.0",
                    "supported": True,
                }
            ],
        },
        "launch": {
            "launcher": "torchrun",
            "rank": 0,
            "local_rank": 0,
            "world_size": 8,
            "init_method": None,
            "error": None,
            "variables": {"RANK": "0"},
        },
        "trainer": {"device": "cuda:0", "precision": "bf16", "step": "graph"},
    }
    for key, value in changes.items():
        info[key] = {**info[key], **value}
    return info


def test_report_lists_gpus_launch_and_trainer_choice():
    text = format_text(_info())
    assert "cpu        aarch64, 72 cores" in text
    assert "gpu 0    NVIDIA GH200 480GB, 94.5 GiB, capability 9.0 (ok)" in text
    assert "launch     torchrun: rank 0 of 8, local rank 0" in text
    assert "  RANK=0" in text
    assert "trainer    device cuda:0, precision bf16, step graph" in text
    assert "WARNING" not in text


def test_report_warns_about_an_unusable_gpu():
    text = format_text(
        _info(
            nvidia={"problem": "driver 470.1 is too old", "gpus": []},
            trainer={"device": "cpu", "precision": "fp32", "step": "eager"},
        )
    )
    assert text.splitlines()[-1] == "WARNING    GPU PRESENT BUT UNUSABLE: driver 470.1 is too old"
