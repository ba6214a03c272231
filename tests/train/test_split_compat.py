"""One compatibility rule (``shards.manifest.check_compatible``) for train vs val, flags vs
shards and checkpoint vs split: a val split made otherwise than train is refused by `train`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from haloscope.errors import DataError
from haloscope.shards.manifest import check_compatible, load_manifest
from tests.train.train_fixtures import make_shards, tiny_argv

REPO = Path(__file__).resolve().parents[2]


def _edit_manifest(split_dir: Path, edit: Callable[[dict], None]) -> None:
    """What another conversion of this split would have written (the check reads only this)."""
    path = split_dir / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


_OTHER_CONVERSIONS = {
    "min_theta_over_psf": lambda doc: doc["preprocess"].update(min_theta_over_psf=0.8),
    "norm_method": lambda doc: doc["norm"].update(method="full"),
    "meta_mean": lambda doc: doc["meta"].update(mean=[1.1, 23.8]),  # another survey's statistics
}


@pytest.mark.parametrize("setting", list(_OTHER_CONVERSIONS))
def test_train_refuses_val_made_otherwise(tmp_path: Path, setting: str) -> None:
    root = make_shards(tmp_path / "shards", num_train=32, num_val=32)
    _edit_manifest(root / "val", _OTHER_CONVERSIONS[setting])
    run = tmp_path / "run"
    argv = tiny_argv(root, run, "--epochs", "1", "--max-steps-per-epoch", "1")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"haloscope train: error: {root / 'val' / 'manifest.json'}: "), line
    assert setting in line and "the train split" in line, line
    assert not (run / "last.pt").exists()


def test_one_rule_for_splits_flags_and_checkpoints(tmp_path: Path) -> None:
    root = make_shards(tmp_path / "shards", num_train=32, num_val=32)
    train = load_manifest(root / "train")
    check_compatible(load_manifest(root / "val"), train)
    # the whole normalisation is compared, not only its name
    _edit_manifest(root / "val", lambda doc: doc["norm"].update(clip=5.0))
    with pytest.raises(DataError, match=r"norm=\{.*'clip': 5\.0.*but the train split has"):
        check_compatible(load_manifest(root / "val"), train, against="the train split")
    # hard negatives belong to the train split: a val split without them is fine
    _edit_manifest(root / "train", lambda doc: doc["preprocess"].update(hard_neg_weight=5))
    _edit_manifest(root / "val", lambda doc: doc["norm"].update(clip=10.0))
    check_compatible(load_manifest(root / "val"), load_manifest(root / "train"))
    # numbers agree through float32 and JSON round trips, not beyond
    check_compatible(train, {"min_theta_over_psf": 0.5 + 1e-12, "stamp_px": 64})
    with pytest.raises(DataError, match="but checkpoint best.pt has min_theta_over_psf=0.5001"):
        check_compatible(train, {"min_theta_over_psf": 0.5001}, against="checkpoint best.pt")
