"""``haloscope shards`` command line: help, both flag spellings, Slurm defaults, clean errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from haloscope.preprocess.convert.cli import parse_config, slurm_task
from tests.shards.shard_fixtures import make_survey

HALOSCOPE = Path(sys.executable).parent / "haloscope"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HALOSCOPE), "shards", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_help_documents_every_flag_with_its_default():
    out = _run("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in (
        "--data",
        "--out",
        "--splits",
        "--hard-neg-path",
        "--hard-neg-weight",
        "--min-theta-over-psf",
        "--norm-method",
        "--meta-cols",
        "--record-samples",
        "--shard-samples",
        "--task-index",
        "--num-tasks",
        "--workers",
        "--seed",
        "--stage",
        "--verify",
    ):
        assert flag in text
    assert "(default: 0.5)" in text and "(default: psfsize_r,psfdepth_r)" in text


def test_underscore_spelling_and_slurm_defaults(monkeypatch):
    args = parse_config(["--out", "x", "--verify", "--hard_neg_weight", "7", "--meta_cols", ""])
    assert args.hard_neg_weight == 7 and args.meta_cols == ()
    assert slurm_task({}) == (0, 1)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert slurm_task(env) == (4, 8)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    args = parse_config(["--out", "x", "--data", "d"])
    assert (args.task_index, args.num_tasks) == (2, 4)
    assert parse_config(["--out", "x", "--data", "d", "--task-index", "3"]).task_index == 3


def test_end_to_end_and_user_errors_are_one_line(tmp_path):
    survey = make_survey(tmp_path, sizes={"train": 20, "val": 6, "test": 6})
    ok = _run(
        "--data",
        str(survey.root),
        "--out",
        str(tmp_path / "s"),
        "--workers",
        "2",
        "--hard-neg-path",
        str(survey.lookup),
        "--hard_neg_weight",
        "2",
    )
    assert ok.returncode == 0, ok.stderr
    assert "train:" in ok.stdout and (tmp_path / "s" / "test" / "stamps.zarr").is_dir()
    again = _run(
        "--data",
        str(survey.root),
        "--out",
        str(tmp_path / "s"),
        "--hard-neg-path",
        str(survey.lookup),
        "--hard_neg_weight",
        "2",
    )
    assert again.returncode == 0 and "up to date" in again.stderr
    verify = _run("--verify", "--out", str(tmp_path / "s"))
    assert verify.returncode == 0 and verify.stdout.count("OK") == 3
    for args, message in [
        (["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such directory"),
        (
            ["--data", str(survey.root), "--out", str(tmp_path / "o"), "--meta-cols", "arc_snr"],
            "leak",
        ),
        (["--out", str(tmp_path / "o")], "--data is required"),
        (
            [
                "--data",
                str(survey.root),
                "--out",
                str(tmp_path / "o"),
                "--hard-neg-path",
                str(tmp_path / "missing.parquet"),
            ],
            "not found",
        ),
    ]:
        bad = _run(*args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
