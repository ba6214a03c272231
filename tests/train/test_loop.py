"""The training loop end to end on tiny shards: outputs, early stopping, NaN stop, data checks."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from haloscope.errors import ConfigError, DataError
from haloscope.train import loop, run
from haloscope.train import step as tstep
from haloscope.train.cli import main
from haloscope.train.loss import build_loss
from haloscope.train.validate import EarlyStopping
from tests.train.train_fixtures import make_shards, tiny_argv


def test_run_writes_checkpoints_metrics_and_config(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(tiny_argv(tiny_shards, out, "--epochs", "1", "--num-workers", "0")) == 0
    for name in (
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "metrics.csv",
        "val_metrics.csv",
        "config.resolved.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    cfg = json.loads((out / "config.resolved.json").read_text())
    assert cfg["model"]["arch"] == "convnext_atto" and cfg["data"]["batch_size"] == 16
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["global_step"]) for r in rows] == list(range(1, 7))  # 96 samples / 16
    for key in (
        "train/loss",
        "train/lr",
        "perf/img_per_s",
        "perf/data_wait_frac",
        "train/grad_norm",
    ):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    val = list(csv.DictReader((out / "val_metrics.csv").open()))
    assert len(val) == 1 and float(val[0]["val/num"]) == 64  # the whole val split, once
    assert 0 <= float(val[0]["val/auroc"]) <= 1


def test_early_stopping_on_scripted_metrics(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tpr@1e-4: 0.1, 0.3, 0.3 (lower AUROC), 0.2 -> patience 2 stops after epoch 3, best 1."""
    script = iter([(0.1, 0.9), (0.3, 0.8), (0.3, 0.7), (0.2, 0.99), (0.9, 0.99)])

    def scripted(*_args, **_kwargs):
        tpr, auc = next(script)
        return {
            "val/num": 64.0,
            "val/tpr@fpr1e-4": tpr,
            "val/auroc": auc,
            "val/tpr@fpr1e-3": tpr,
            "val/fpr@tpr0.9": 0.5,
        }

    monkeypatch.setattr(loop, "validate", scripted)
    out = tmp_path / "r"
    argv = tiny_argv(tiny_shards, out, "--epochs", "10", "--early-stopping-patience", "2",
                     "--max-steps-per-epoch", "1", "--num-workers", "0")  # fmt: skip
    assert main(argv) == 0
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert last["progress"]["epoch"] == 4  # epochs 0..3 ran
    assert best["progress"]["epoch"] == 2 and best["val_metrics"]["epoch"] == 1
    assert last["early_stopping"] == {"best": [0.3, 0.8], "best_epoch": 1, "num_bad": 2}


def test_nonfinite_loss_stops_without_saving_nan(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = build_loss()

    def poisoned(cfg):
        def fn(logits, labels, reduction="mean"):
            calls["n"] += 1
            loss = real(logits, labels, reduction=reduction)
            return loss * float("nan") if calls["n"] == 3 else loss

        return fn

    monkeypatch.setattr(run, "build_loss", poisoned)
    out = tmp_path / "r"
    argv = tiny_argv(tiny_shards, out, "--ckpt-every-steps", "2", "--num-workers", "0")
    with pytest.raises(
        DataError, match=r"non-finite training loss at epoch 0, step 2 .*global step 2"
    ):
        main(argv)
    assert not (out / "best.pt").exists()
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["progress"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_seed_data_flag_and_preprocessing_checks(tiny_shards: Path, tmp_path: Path) -> None:
    parquet_root = tmp_path / "parquet"
    (parquet_root / "region_split=train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="run `haloscope shards --data DATA --out SHARDS` first"):
        main(tiny_argv(tiny_shards, tmp_path / "a", "--data", str(parquet_root))[2:])
    with pytest.raises(ConfigError, match="--shards is required"):
        main(["--out-dir", str(tmp_path / "b")])
    # --data pointing at a shard root is accepted (the seed's spelling)
    ok = tiny_argv(tiny_shards, tmp_path / "c", "--epochs", "1", "--max-steps-per-epoch", "1",
                   "--num-workers", "0", "--norm_method", "outer", "--min_theta_over_psf", "0.5",
                   "--meta_cols", "psfsize_r,psfdepth_r")[2:] + ["--data", str(tiny_shards)]  # fmt: skip
    assert main(ok) == 0
    lookup = str(tmp_path / "lookup.parquet")
    for flag, value, key in [
        ("--norm-method", "full", "norm_method"),
        ("--min-theta-over-psf", "0.7", "min_theta_over_psf"),
        ("--meta-cols", "psfsize_r", "meta_columns"),
        ("--hard-neg-weight", "5", "hard_neg_weight"),
        ("--hard-neg-path", lookup, "hard_neg_lookup"),
    ]:
        with pytest.raises(
            DataError,
            match=f"train/manifest.json: .*{key}=.* but the command "
            f"line has {key}=.*haloscope shards",
        ):
            main(tiny_argv(tiny_shards, tmp_path / "d", flag, value))


def test_leaky_meta_in_shards_is_refused(tmp_path: Path) -> None:
    root = make_shards(tmp_path / "s", num_train=32, num_val=32)
    manifest = root / "train" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["meta"]["columns"] = ["psfsize_r", "psf_fwhm_used_r"]
    manifest.write_text(json.dumps(doc))
    (root / "val" / "manifest.json").write_text(
        (root / "val" / "manifest.json").read_text().replace('"psfdepth_r"', '"psf_fwhm_used_r"')
    )
    with pytest.raises(ConfigError, match="psf_fwhm_used_r.* leaks the label"):
        main(tiny_argv(root, tmp_path / "r"))


def test_bf16_switch_on_cpu_and_epoch_caps(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--use-bf16 really autocasts on CPU (the seed's flag was a no-op); caps bound the epoch."""
    seen: list[torch.dtype | None] = []
    real = tstep.train_step

    def spy(*args, **kwargs):
        seen.append(kwargs["options"].amp_dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(tstep, "train_step", spy)
    out = tmp_path / "bf16"
    argv = tiny_argv(tiny_shards, out, "--use_bf16", "--epochs", "1", "--samples-per-epoch", "32",
                     "--num-workers", "0")  # fmt: skip
    assert main(argv) == 0
    assert seen == [torch.bfloat16, torch.bfloat16]  # 32 samples / batch 16 = 2 steps
    seen.clear()
    argv = tiny_argv(tiny_shards, tmp_path / "fp32", "--epochs", "1", "--max-steps-per-epoch", "1",
                     "--num-workers", "0")  # fmt: skip
    assert main(argv) == 0
    assert seen == [None]  # CPU default: fp32


def test_monitor_choice_changes_the_best_epoch(caplog: pytest.LogCaptureFixture) -> None:
    """Same validations, three monitors, three different best epochs; the noise warning."""
    seq = [  # (tpr@1e-4, tpr@1e-3, auroc)
        (0.08, 0.10, 0.90),
        (0.05, 0.17, 0.91),
        (0.06, 0.15, 0.93),
    ]

    def best(monitor: str) -> int:
        early = EarlyStopping(0, monitor)
        for epoch, (t4, t3, auc) in enumerate(seq):
            early.update(
                {
                    "val/tpr@fpr1e-4": t4,
                    "val/tpr@fpr1e-3": t3,
                    "val/auroc": auc,
                    "val/num_neg": 44564.0,
                },
                epoch,
            )
        return early.best_epoch

    with caplog.at_level("WARNING"):
        assert best("tpr@fpr1e-4") == 0
    assert "rests on 4.5 false positives (44564 val controls)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert best("tpr@fpr1e-3") == 1  # 44.6 expected false positives: no warning
    assert "false positives" not in caplog.text
    assert best("auroc") == 2
    with pytest.raises(ValueError, match="unknown monitor"):
        EarlyStopping(1, "loss")


def test_unknown_monitor_flag_is_a_one_line_error(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = tiny_argv(tiny_shards, tmp_path / "r", "--monitor", "val_loss")
    with pytest.raises(SystemExit) as exc:  # the flag parser's usage error (exit 2)
        main(argv)
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        "--monitor must be one of tpr@fpr1e-4, tpr@fpr1e-3, auroc, det_tpr@fpr1e-4, det_tpr@fpr1e-3, got 'val_loss'"
        in line
    )
