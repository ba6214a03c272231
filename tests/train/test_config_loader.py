"""The typed config loader (defaults < TOML < dotted overrides) and the train flags."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from haloscope.config import config_to_dict, load_config
from haloscope.errors import ConfigError
from haloscope.train.cli import parse_config
from haloscope.train.config import Monitor, TrainConfig
from haloscope.train.validate import MONITORS

SEED_COMMAND = """--data {data} --out_dir {out} --hard_neg_path /x/hard_neg_lookup.parquet
--hard_neg_weight 5 --arch convnext_tiny --epochs 50 --batch_size 256 --lr 3e-4
--weight_decay 1e-2 --dropout 0.1 --use_bf16 --augment --loss focal --focal_alpha 0.25
--focal_gamma 2.0 --min_theta_over_psf 0.5 --norm_method outer --meta_cols psfsize_r,psfdepth_r
--early_stopping_patience 5"""


def test_precedence_defaults_toml_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[optim]\nlr = 1e-3\nbetas = [0.9, 0.95]\n[run]\nepochs = 7\nprecision = "bf16"\n'
    )
    cfg = load_config(
        TrainConfig, toml_path=toml, overrides=["--run.epochs=9", "--model.meta-cols=psfsize_r"]
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.run.epochs == 9 and cfg.run.bf16 is True
    assert cfg.model.meta_cols == ("psfsize_r",)
    assert cfg.optim.weight_decay == 1e-2  # default untouched
    assert load_config(TrainConfig, layers=[config_to_dict(cfg)]) == cfg  # round trip


@pytest.mark.parametrize(
    "override,match",
    [
        ("--optim.lrr=1", "unknown config key optim.lrr"),
        ("--nope.x=1", "unknown config key nope"),
        ("--run.epochs=abc", "run.epochs must be of type int"),
        ("--run.precision=maybe", "run.precision must be one of auto, bf16, fp32"),
        ("--run.augment=maybe", "run.augment must be of type bool"),
        ("--loss.name=hinge", "loss.name must be one of"),
        ("--optim.lr=-1", "--lr must be > 0"),
        ("optim", "--section.field=value"),
    ],
)
def test_bad_keys_and_types_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, overrides=[override])


def test_toml_type_mismatch_and_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match="run.epochs"):
        load_config(TrainConfig, toml_path=bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\n")
    with pytest.raises(ConfigError, match="cannot read TOML"):
        load_config(TrainConfig, toml_path=broken)
    with pytest.raises(ConfigError, match="cannot read TOML"):
        load_config(TrainConfig, toml_path=tmp_path / "missing.toml")


def test_seed_command_parses_in_both_spellings() -> None:
    argv = SEED_COMMAND.format(data="D", out="O").split()
    cfg = parse_config(argv)
    dashed = parse_config([a.replace("_", "-") if a.startswith("--") else a for a in argv])
    assert cfg == dashed
    assert cfg.data.data_root == "D" and cfg.run.out_dir == "O" and cfg.data.batch_size == 256
    assert cfg.data.hard_neg_weight == 5 and cfg.data.norm_method == "outer"
    assert cfg.model.meta_cols == ("psfsize_r", "psfdepth_r") and cfg.run.bf16 is True
    assert cfg.loss.alpha == 0.25 and cfg.run.early_stopping_patience == 5 and cfg.run.augment


def test_switches_are_real_and_flags_beat_dotted_order() -> None:
    cfg = parse_config(["--no-bf16", "--no_augment", "--lr", "1e-3", "--optim.lr", "2e-3"])
    assert cfg.run.bf16 is False and cfg.run.augment is False
    assert cfg.optim.lr == 2e-3  # dotted overrides come last
    assert parse_config([]).run.bf16 is None  # auto: bf16 on CUDA only
    with pytest.raises(ConfigError, match="unrecognised argument"):
        parse_config(["--bogus", "1"])


def test_help_lists_every_seed_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    assert "--batch_size" in text  # the epilog says that underscores are accepted
    for flag in {a for a in SEED_COMMAND.split() if a.startswith("--")}:
        assert flag.replace("_", "-") in text, flag  # each seed flag: dashed in --help
    for flag in (
        "--no-bf16",
        "--no-augment",
        "--resume",
        "--shards",
        "--compile",
        "--tensorboard",
        "--warmup-steps",
        "--warmup-frac",
        "--num-workers",
        "--seed",
        "--samples-per-epoch",
        "--max-steps-per-epoch",
        "--val-every",
        "--device",
        "--ckpt-every-steps",
    ):
        assert flag in text, flag


def test_monitor_choices_are_the_validation_metrics() -> None:
    assert get_args(Monitor) == tuple(MONITORS)
