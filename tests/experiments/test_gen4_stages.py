"""The experiment stage runner: skip done stages, invalidate later ones, fail loudly and clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from haloscope.experiments.stages import Stage, StageFailed, haloscope_argv, run_stages, stage_done


def _writer(path: Path, calls: list[str], name: str):
    def action() -> dict:
        calls.append(name)
        path.write_text(name)
        return {"wrote": str(path)}

    return action


def _plan(tmp_path: Path, calls: list[str]) -> list[Stage]:
    return [Stage(n, (tmp_path / f"{n}.txt",), action=_writer(tmp_path / f"{n}.txt", calls, n))
            for n in ("a", "b", "c")]  # fmt: skip


def test_done_stages_are_skipped_and_later_ones_invalidated(tmp_path):
    calls: list[str] = []
    records = run_stages(tmp_path, _plan(tmp_path, calls), echo=False)
    assert calls == ["a", "b", "c"] and [r["skipped"] for r in records] == [False] * 3
    assert json.loads((tmp_path / "stages" / "b.json").read_text())["wrote"].endswith("b.txt")
    calls.clear()
    run_stages(tmp_path, _plan(tmp_path, calls), echo=False)
    assert calls == []
    (tmp_path / "b.txt").unlink()  # an output lost: b and everything after it run again
    run_stages(tmp_path, _plan(tmp_path, calls), echo=False)
    assert calls == ["b", "c"]


def test_unfinished_stage_is_not_done(tmp_path):
    calls: list[str] = []
    stage = _plan(tmp_path, calls)[0]
    run_stages(tmp_path, [stage], echo=False)
    assert stage_done(tmp_path, stage)
    stage.finished = lambda: False  # e.g. a training that stopped before its last epoch
    assert not stage_done(tmp_path, stage)


def test_failed_command_names_stage_command_and_log_tail(tmp_path):
    stage = Stage("infer_x", (tmp_path / "s.parquet",), argv=lambda: [
        "infer", "--ckpt", str(tmp_path / "missing.pt"), "--data", str(tmp_path),
        "--out", str(tmp_path / "s.parquet")])  # fmt: skip
    with pytest.raises(StageFailed) as err:
        run_stages(tmp_path, [stage], echo=False)
    text = str(err.value)
    assert "stage infer_x failed (exit 2)" in text and "haloscope infer" in text
    assert "missing.pt does not exist" in text and "re-run the same command" in text
    assert not (tmp_path / "stages" / "infer_x.json").exists()
    assert (tmp_path / "logs" / "infer_x.log").read_text().startswith("$ ")


def test_stage_without_its_outputs_fails(tmp_path):
    stage = Stage("noop", (tmp_path / "never.txt",), action=lambda: {})
    with pytest.raises(StageFailed, match="never.txt"):
        run_stages(tmp_path, [stage], echo=False)


def test_training_resumes_only_when_nothing_upstream_changed(tmp_path):
    from haloscope.experiments.config import Gen4Config
    from haloscope.experiments.gen4 import plan_experiment

    cfg = Gen4Config(out=tmp_path, data=tmp_path, epochs=3, train_args=("--lr", "1e-3"))
    stages = {s.name: s for s in plan_experiment(cfg)}
    assert "simulate" not in stages  # --data given
    train = stages["train_gen3"]
    argv = train.argv()
    assert "--resume" not in argv and "--overwrite" not in argv
    assert argv[-2:] == ["--lr", "1e-3"] and argv[argv.index("--epochs") + 1] == "3"
    (tmp_path / "gen3").mkdir()
    (tmp_path / "gen3" / "last.pt").write_bytes(b"")
    assert "--resume" in train.argv()  # a killed run continues
    train.upstream_ran = True
    assert "--overwrite" in train.argv() and "--resume" not in train.argv()  # stale inputs
    infer = stages["infer_gen3_train"].argv()
    assert infer[infer.index("--split") + 1] == "train"
    for name in ("infer_gen3_test", "infer_gen4_test"):  # both generations, the same test shards
        args = stages[name].argv()
        assert args[args.index("--shards") + 1] == str(tmp_path / "shards" / "gen3")


def test_torchrun_launch_when_several_processes():
    assert haloscope_argv(["infer"], 1)[1:] == ["-m", "haloscope", "infer"]
    argv = haloscope_argv(["train", "--x"], 4)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=4" in argv
    assert argv[-4:] == ["-m", "haloscope", "train", "--x"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--data", "no/such/dir"], "--data no/such/dir: no such directory"),
    (["--rows", "0"], "--rows must be >= 1"),
    (["--min-score", "1.5"], "--min-score must be in [0, 1)"),
])  # fmt: skip
def test_bad_flags_are_one_line_errors(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "haloscope", "gen4", "--out", str(tmp_path / "x"),
                           *flags], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr
