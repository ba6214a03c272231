"""Every verb's flags come from its config dataclass: one flag per field, --config/--print-config,
precedence, one-line errors, the unified flag names, and --help without torch."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from haloscope.argparse_util import META_FLAGS, ConfigCLI, config_flags
from haloscope.cli import VERBS
from haloscope.config import cli_meta, option, per_rank
from haloscope.errors import ConfigError
from haloscope.preprocess.config import PreprocessConfig
from haloscope.preprocess.convert.cli import parse_config as parse_shards_config
from haloscope.train.config import DataConfig

# NOTE: bench dispatches to benchmarks that parse their own options (no config yet)
CONFIG_VERBS = [v for v in VERBS if v != "bench"]
# the smallest valid command line of each verb (required settings only)
MINIMAL: dict[str, list[str]] = {
    "validate": ["--data", "d"],
    "simulate": ["--out", "o", "--rows", "100"],
    "transfer-sets": ["--out", "o"],
    "shards": ["--data", "d", "--out", "o"],
    "train": ["--shards", "s", "--out", "o"],
    "infer": ["--ckpt", "c.pt", "--data", "d", "--out", "s.parquet"],
    "search": ["--input", "i.parquet", "--ckpt", "c.pt", "--out", "o"],
    "eval": ["--scores", "s.parquet", "--out-csv", "x.csv"],
    "mine": ["--scores", "a.parquet", "b.parquet", "--out", "l.parquet"],
    "gen4": ["--out", "o"],
    "env": [],
}
# every flag each verb had before its flags were derived from its config (dashed spelling);
# all must keep working
OLD_FLAGS: dict[str, str] = {
    "validate": "--data --splits",
    "simulate": "--chunk-rows --compression --confuser-frac --control-frac --fail-frac "
    "--nan-frac --no-progress --out --overwrite --quantize --r-only-frac --rows --seed "
    "--selection-frac --split-fracs --workers",
    "transfer-sets": "--confusers --controls --lenses --no-progress --out --overwrite --seed "
    "--workers",
    "shards": "--batch-rows --data --hard-neg-path --hard-neg-weight --keep-work --meta-cols "
    "--min-theta-over-psf --norm-method --num-tasks --out --record-samples --seed "
    "--shard-samples --splits --stage --task-index --train-min-arc-snr --verify "
    "--wait-timeout-s --workers",
    "train": "--arch --augment --batch-size --channels-last --ckpt-every-steps --compile "
    "--config --cuda-graphs --data --deterministic --device --drop-path-rate --dropout "
    "--early-stopping-patience --epochs --focal-alpha --focal-gamma --grad-clip "
    "--hard-neg-path --hard-neg-weight --log-every --loss --lr --max-steps-per-epoch "
    "--meta-cols --min-lr --min-theta-over-psf --monitor --no-augment --no-bf16 "
    "--no-channels-last --no-compile --no-cuda-graphs --no-progress --norm-method "
    "--num-workers --out-dir --overwrite --preset --progress --resume --samples-per-epoch "
    "--seed --shards --tensorboard --use-bf16 --val-batch-size --val-every --warmup-frac "
    "--warmup-steps --weight-decay",
    "infer": "--batch-size --ckpt --data --device --model-name --no-progress --num-workers "
    "--out --precision --shards --split --step --tta",
    "eval": "--ci --compare --confidence --detectable --fpr-targets --out-csv --out-json "
    "--rank-by --reference-scores --report-dir --res-bins --scores --stamps --theta-bins "
    "--tpr-targets",
    "mine": "--min-count --min-score --out --scores --split --top-k",
    "gen4": "--arch --batch-size --data --device --epochs --hard-neg-weight --infer-batch-size "
    "--min-count --min-score --nproc-per-node --num-workers --out --quiet --rows --seed "
    "--sim-args --tiny --top-k --train-args --workers",
    "env": "--device --json",
    "search": "",  # born with its flags derived from SearchConfig
}


def _cli(verb: str) -> ConfigCLI:
    return importlib.import_module(VERBS[verb][0]).CLI


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every field of a config (sections flattened) that is set on the command line."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.init and cli_meta(f).get("cli", True):
            keys.append(prefix + f.name)
    return keys


def _run(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "haloscope", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_every_field_has_exactly_one_flag_and_every_flag_one_field(verb):
    cli = _cli(verb)
    keys = _leaf_keys(cli.cls)
    assert sorted(fl.key for fl in cli.flags) == sorted(keys)
    names = [fl.name for fl in cli.flags]
    assert len(set(names)) == len(names)
    parser = cli.build_parser()
    dest_of: dict[str, str] = {}
    for action in parser._actions:
        for spelling in action.option_strings:
            assert spelling not in dest_of, f"{verb}: {spelling} registered twice"
            dest_of[spelling] = action.dest
    meta = {*META_FLAGS, "-h", *cli.preset_switches}
    for spelling, dest in dest_of.items():
        if spelling.replace("_", "-") in meta or dest in (
            "help",
            "config",
            "print_config",
            "preset",
        ):
            continue
        assert dest.startswith("cfg:") and dest[4:] in keys, f"{verb}: {spelling} -> {dest}"
    for fl in cli.flags:  # the flag's name and every alias lead to the field
        for spelling in fl.spellings:
            assert dest_of[spelling] == "cfg:" + fl.key
            assert dest_of[spelling.replace("-", "_").replace("__", "--", 1)] == "cfg:" + fl.key
        assert fl.doc, f"{verb}: {fl.key} has no docstring (its --help text)"


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_every_old_flag_still_works(verb):
    spellings = {s for a in _cli(verb).build_parser()._actions for s in a.option_strings}
    for flag in OLD_FLAGS[verb].split():
        assert flag in spellings, f"{verb} {flag}"
        assert "--" + flag[2:].replace("-", "_") in spellings, f"{verb} {flag} (underscores)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SeedA:
    seed: int = 0
    """Seed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SeedB:
    seed: int = 1
    """Another seed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TwoSeeds:
    a: _SeedA = dataclasses.field(default_factory=_SeedA)
    b: _SeedB = dataclasses.field(default_factory=_SeedB)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TwoOuts:
    out: str = ""
    """Out."""
    other: str = option("", aliases=("--out",))
    """Also out."""


def test_a_setting_cannot_be_declared_twice():
    with pytest.raises(ValueError, match="--seed is claimed by a.seed and b.seed"):
        config_flags(_TwoSeeds)
    with pytest.raises(ValueError, match="--out is claimed"):
        config_flags(_TwoOuts)


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_print_config_round_trips(verb, tmp_path, capsys):
    cli = _cli(verb)
    argv = MINIMAL[verb]
    with pytest.raises(SystemExit) as stop:
        cli.parse([*argv, "--print-config"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    assert cli.parse(["--config", str(path)]) == cli.parse(argv)
    with pytest.raises(SystemExit):
        cli.parse(["--config", str(path), "--print-config"])
    assert capsys.readouterr().out == text


def test_precedence_defaults_preset_toml_flags_dotted(tmp_path):
    cli = _cli("train")
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\narch = "convnext_nano"\n[run]\nepochs = 7\nseed = 5\n')
    cfg = cli.parse(["--preset", "demo", "--config", str(toml), "--epochs", "9"])
    assert cfg.model.arch == "convnext_nano"  # TOML beats the preset
    assert cfg.data.max_steps_per_epoch == 60  # the preset beats the default
    assert cfg.run.epochs == 9 and cfg.run.seed == 5  # a flag beats TOML, TOML the default
    assert cfg.optim.weight_decay == 1e-2  # untouched default
    cfg = cli.parse(["--config", str(toml), "--seed", "1", "--run.seed=2"])
    assert cfg.run.seed == 2  # dotted overrides come last
    flat = tmp_path / "infer.toml"
    flat.write_text('ckpt = "a.pt"\ndata = "d"\nout = "x.parquet"\nbatch_size = 64\ntta = true\n')
    cfg = _cli("infer").parse(["--config", str(flat), "--batch-size", "32", "--no-tta"])
    assert (cfg.ckpt, cfg.batch_size, cfg.tta, cfg.num_workers) == ("a.pt", 32, False, 2)


@pytest.mark.parametrize("verb", ["train", "infer", "shards", "gen4"])
def test_unknown_toml_key_is_a_one_line_error(verb, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_sise = 3\n" if verb != "train" else "[data]\nbatch_sise = 3\n")
    proc = _run(verb, *MINIMAL[verb], "--config", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"haloscope {verb}: error: unknown config key ")
    assert "batch_sise" in lines[0] and str(bad) in lines[0]


def test_bad_values_are_one_line_errors_naming_the_flag(tmp_path):
    proc = _run("train", "--epochs", "ten")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "haloscope train: error: argument --epochs: --epochs must be of type int, got 'ten' "
        "(see haloscope train --help)"
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('rows = "many"\n')
    proc = _run("simulate", "--out", "o", "--config", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "rows must be of type int" in proc.stderr
    proc = _run("infer", "--data", "d", "--out", "s.parquet")
    assert proc.returncode == 2 and "--ckpt or ckpt (in --config) is required" in proc.stderr


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_help_does_not_import_torch(verb):
    proc = _run(verb, "--help", python_flags=("-X", "importtime"))
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: haloscope {verb}")
    imported = re.findall(r"\|\s*([\w.]+)\s*$", proc.stderr, re.M)
    assert "haloscope.cli" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")], verb


def test_unified_flags_mean_the_same_in_every_verb():
    clis = {verb: _cli(verb) for verb in CONFIG_VERBS}
    by_flag: dict[str, dict[str, object]] = {}
    for verb, cli in clis.items():
        for fl in cli.flags:
            for spelling in fl.spellings:
                by_flag.setdefault(spelling, {})[verb] = fl
    for verb, flags in ((v, by_flag.get("--out-dir", {})) for v in clis):
        if verb in flags:  # --out-dir is --out wherever it exists
            assert flags[verb].name == "--out"
    for verb, fl in by_flag["--out"].items():
        assert "--out-dir" in fl.spellings, verb
    for verb, fl in by_flag["--num-workers"].items():
        assert fl.name == "--num-workers"
        if verb != "gen4":  # gen4 has both: --workers for simulate/shards, documented
            assert "--workers" in fl.aliases, verb
    assert "--num-workers" not in by_flag["--workers"]["gen4"].spellings
    for verb in ("train", "infer", "gen4"):  # every batch size is all ranks together
        assert "Global" in by_flag["--batch-size"][verb].doc, verb
    assert "--no-progress" in by_flag and set(by_flag["--no-progress"]) >= {
        "train",
        "infer",
        "shards",
        "simulate",
        "transfer-sets",
    }
    for flag in (
        "--precision",
        "--step",
        "--device",
        "--use-bf16",
        "--compile",
        "--cuda-graphs",
        "--no-cuda-graphs",
    ):
        train, infer = by_flag[flag]["train"], by_flag[flag]["infer"]
        assert (train.name, train.type, train.doc, train.switches) == (
            infer.name,
            infer.type,
            infer.doc,
            infer.switches,
        )


def test_precision_and_step_switches():
    parse = _cli("train").parse
    assert parse(["--use-bf16"]).run.precision == "bf16" and parse([]).run.bf16 is None
    assert parse(["--no_bf16"]).run.bf16 is False
    assert parse(["--compile"]).run.step == "compile" and parse(["--compile"]).run.compile
    assert not parse(["--no-cuda-graphs"]).run.cuda_graphs
    assert parse(["--step", "graph"]).run.cuda_graphs
    infer = _cli("infer").parse([*MINIMAL["infer"], "--use-bf16", "--compile"])
    assert (infer.precision, infer.step) == ("bf16", "compile")


def test_infer_batch_is_global(tmp_path):
    cfg = _cli("infer").parse([*MINIMAL["infer"], "--batch-size", "96"])
    assert cfg.per_rank_batch(1) == 96 and cfg.per_rank_batch(4) == 24
    with pytest.raises(ConfigError, match="--batch-size 96 .* 5 ranks"):
        cfg.per_rank_batch(5)


def test_gen4_tiny_is_a_preset_under_flags():
    parse = _cli("gen4").parse
    full, tiny = parse(["--out", "o"]), parse(["--out", "o", "--tiny", "--epochs", "3"])
    assert full.rows == 60000 and full.train_args == ()
    assert tiny.rows == 3000 and tiny.epochs == 3 and "--max-steps-per-epoch" in tiny.train_args
    assert parse(["--out", "o", "--preset", "tiny"]) == parse(["--out", "o", "--tiny"])
    assert parse(["--out", "o", "--train-args", "--lr 1e-3"]).train_args == ("--lr", "1e-3")


def test_shards_verify_needs_no_data_and_slurm_defaults(tmp_path):
    assert parse_shards_config(["--out", "o", "--verify"]).data is None
    with pytest.raises(ConfigError, match="--data is required"):
        parse_shards_config(["--out", "o"])
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    cfg = parse_shards_config(["--out", "o", "--data", "d"], env=env)
    assert (cfg.task_index, cfg.num_tasks, cfg.data) == (3, 4, Path("d"))
    assert cfg.command == ("haloscope", "shards", "--out", "o", "--data", "d")


def test_train_checks_the_preprocessing_settings_under_the_shards_names():
    """The seed passes its preprocessing flags to train too: there they are optional checks
    against the manifest, with the flag names and value types of PreprocessConfig."""

    def base(tp):  # X | None -> X; a path is given as a string in train
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if typing.get_origin(tp) is types.UnionType and len(args) == 1 else tp
        return str if tp is Path else tp

    shards = {fl.key: fl for fl in _cli("shards").flags}
    train = {fl.key.split(".")[1]: fl for fl in _cli("train").flags}
    for f in dataclasses.fields(PreprocessConfig):
        assert train[f.name].name == shards[f.name].name, f.name
        assert train[f.name].default is None, f.name  # absent: not checked
        assert base(train[f.name].type) == base(shards[f.name].type), f.name


def test_train_resume_takes_an_optional_value(tmp_path):
    """--resume alone is yes, --resume auto continues only when last.pt exists, no flag is
    no; true/false (the field's values when it was a bool) still read as yes/no."""
    cli = _cli("train")
    argv = MINIMAL["train"]
    assert cli.parse(argv).run.resume == "no"
    assert cli.parse([*argv, "--resume"]).run.resume == "yes"
    assert cli.parse([*argv, "--resume", "--epochs", "3"]).run.resume == "yes"
    assert cli.parse([*argv, "--resume", "auto"]).run.resume == "auto"
    assert cli.parse([*argv, "--resume=auto"]).run.resume == "auto"
    assert cli.parse([*argv, "--resume", "auto", "--no-resume"]).run.resume == "no"
    assert cli.parse([*argv, "--run.resume=true"]).run.resume == "yes"
    toml = tmp_path / "old.toml"
    toml.write_text("[run]\nresume = false\n")
    assert cli.parse([*argv, "--config", str(toml)]).run.resume == "no"
    with pytest.raises(SystemExit):
        cli.parse([*argv, "--resume", "later"])


def test_every_verb_splits_its_global_batch_by_one_rule():
    assert per_rank(1024, 4) == 256
    with pytest.raises(ConfigError, match=r"--batch-size 10 \(the global batch\) does not divide"):
        per_rank(10, 4)
    data = DataConfig(batch_size=12, val_batch_size=10)
    assert data.per_rank_batch(3) == 4
    with pytest.raises(ConfigError, match=r"--val-batch-size 10 .* over 3 ranks"):
        data.per_rank_batch(3, val=True)
    for verb, module in (
        ("infer", "haloscope.infer.cli"),
        ("search", "haloscope.infer.search.cli"),
    ):
        cfg = importlib.import_module(module).parse_config([*MINIMAL[verb], "--batch-size", "10"])
        assert cfg.per_rank_batch(2) == 5
        with pytest.raises(ConfigError, match=r"--batch-size 10 .* over 4 ranks"):
            cfg.per_rank_batch(4)
