"""Run outputs get the user's umask (a group can read a run), not tempfile.mkstemp's 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from haloscope.infer.cli import main as infer_main
from haloscope.train.cli import main as train_main
from tests.train.train_fixtures import tiny_argv


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints_and_scores_follow_the_umask(
    tiny_shards: Path, tmp_path: Path, umask_022: None
) -> None:
    run = tmp_path / "run"
    argv = tiny_argv(tiny_shards, run, "--epochs", "1", "--max-steps-per-epoch", "1")
    assert train_main(argv) == 0
    for name in ("best.pt", "last.pt", "config.resolved.json", "metrics.jsonl"):
        assert _mode(run / name) == 0o644, name
    out = tmp_path / "scores" / "val.parquet"
    assert infer_main(["--ckpt", str(run / "best.pt"), "--shards", str(tiny_shards),
                       "--split", "val", "--out", str(out), "--device", "cpu",
                       "--num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert _mode(out) == 0o644
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
