"""The seed's Gen3 -> mine -> Gen4 experiment as a plan of resumable stages (``stages.py``).

``plan_experiment(cfg)`` lists the stages: simulate (unless ``--data``) -> shards -> train
Gen3 -> infer Gen3 on train -> mine -> Gen4 train shards -> reuse the val/test shards
(``reuse_eval_shards``, verified) -> train Gen4 -> infer both on test -> eval both -> the
side-by-side table (``write_comparison``). Training resumes from ``last.pt`` (``haloscope
train --resume``) unless a stage before it ran again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloscope.atomic import atomic_write_text
from haloscope.errors import DataError
from haloscope.evaluate.compare import compare_generations
from haloscope.experiments.config import Gen4Config
from haloscope.experiments.stages import STAGES_DIR, Stage, StageFailed, write_json
from haloscope.preprocess.hardneg import HardNegLookup, load_lookup
from haloscope.shards.manifest import check_compatible, load_manifest
from haloscope.shards.write import sha256_file

__all__ = ["Paths", "plan_experiment", "reuse_eval_shards", "write_comparison"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    """Where every stage of one experiment writes."""

    out: Path
    data: Path

    def shards(self, gen: str) -> Path:
        return self.out / "shards" / gen

    def run(self, gen: str) -> Path:
        return self.out / gen

    def scores(self, gen: str, split: str) -> Path:
        return self.run(gen) / f"scores_{split}.parquet"

    @property
    def lookup(self) -> Path:
        return self.out / "hard_neg_lookup.parquet"


def _train_finished(run_dir: Path, epochs: int) -> bool:
    """last.pt says the run ended: all epochs done, or early stopping fired."""
    # NOTE: lazy: the checkpoint loader imports torch, kept out of `gen4 --help`
    from haloscope.train.checkpoint import load_checkpoint

    path = run_dir / "last.pt"
    if not path.is_file():
        return False
    payload = load_checkpoint(path)
    progress, early = payload["progress"], payload.get("early_stopping") or {}
    patience = json.loads(payload["config"]).get("run", {}).get("early_stopping_patience", 0)
    stopped = patience > 0 and early.get("num_bad", 0) >= patience
    return progress.get("step_in_epoch", 0) == 0 and (progress["epoch"] >= epochs or stopped)


def _train_stage(cfg: Gen4Config, p: Paths, gen: str) -> Stage:
    run_dir = p.run(gen)
    stage = Stage(
        f"train_{gen}",
        (run_dir / "best.pt", run_dir / "last.pt"),
        distributed=True,
        finished=lambda: _train_finished(run_dir, cfg.epochs),
    )

    def argv() -> list[str]:
        mode = []
        if (run_dir / "last.pt").is_file():  # resume a killed run; restart one on new inputs
            mode = ["--overwrite"] if stage.upstream_ran else ["--resume"]
        return ["train", "--shards", str(p.shards(gen)), "--out-dir", str(run_dir),
                "--arch", cfg.arch, "--epochs", str(cfg.epochs), "--batch-size",
                str(cfg.batch_size), "--seed", str(cfg.seed), "--num-workers",
                str(cfg.num_workers), "--device", cfg.device, "--no-progress", *mode,
                *cfg.train_args]  # fmt: skip

    stage.argv = argv
    return stage


def _infer_stage(cfg: Gen4Config, p: Paths, gen: str, split: str) -> Stage:
    out = p.scores(gen, split)
    args = ["infer", "--ckpt", str(p.run(gen) / "best.pt"), "--shards", str(p.shards("gen3")),
            "--split", split, "--out", str(out), "--batch-size", str(cfg.infer_batch_size),
            "--model-name", gen, "--device", cfg.device, "--num-workers", str(cfg.num_workers),
            "--no-progress"]  # fmt: skip
    return Stage(f"infer_{gen}_{split}", (out,), argv=lambda: args, distributed=True)


def _eval_stage(p: Paths, gen: str, baseline: str | None) -> Stage:
    run_dir, stamps = p.run(gen), p.shards("gen3") / "test" / "stamps.zarr"

    def argv() -> list[str]:
        args = ["eval", "--scores", str(p.scores(gen, "test")), "--out-csv",
                str(run_dir / "stratified_fpr.csv"), "--report-dir", str(run_dir / "report")]  # fmt: skip
        if stamps.exists():  # galleries and the shortcut audit read the test stamps
            args += ["--stamps", str(stamps)]
        if baseline is not None:
            args += ["--compare", str(p.scores(baseline, "test"))]
        return args

    outputs = (run_dir / "stratified_fpr.csv", run_dir / "report" / "report.md")
    return Stage(f"eval_{gen}", outputs, argv=argv)


def plan_experiment(cfg: Gen4Config) -> list[Stage]:
    """Every stage of the experiment, in order."""
    p = Paths(cfg.out, cfg.data if cfg.data is not None else cfg.out / "data")
    stages: list[Stage] = []
    if cfg.data is None:
        over = ["--overwrite"] if p.data.exists() else []
        stages.append(Stage("simulate", (p.data / "region_split=test",), argv=lambda: [
            "simulate", "--out", str(p.data), "--rows", str(cfg.rows), "--seed", str(cfg.seed),
            "--workers", str(cfg.workers), "--no-progress", *over, *cfg.sim_args]))  # fmt: skip
    common = ["--data", str(p.data), "--workers", str(cfg.workers), "--seed", str(cfg.seed)]
    gen3_out = tuple(p.shards("gen3") / s / "manifest.json" for s in ("train", "val", "test"))
    stages += [
        Stage("shards_gen3", gen3_out, argv=lambda: ["shards", "--out", str(p.shards("gen3")), *common]),
        _train_stage(cfg, p, "gen3"),
        _infer_stage(cfg, p, "gen3", "train"),  # mining never touches test
        Stage("mine", (p.lookup,), argv=lambda: [
            "mine", "--scores", str(p.scores("gen3", "train")), "--out", str(p.lookup),
            "--min-score", str(cfg.min_score), "--top-k", str(cfg.top_k),
            "--min-count", str(cfg.min_count), "--split", "train"]),
        Stage("shards_gen4", (p.shards("gen4") / "train" / "manifest.json",), argv=lambda: [
            "shards", "--out", str(p.shards("gen4")), "--splits", "train", "--hard-neg-path",
            str(p.lookup), "--hard-neg-weight", str(cfg.hard_neg_weight), *common]),
        Stage("reuse_eval_shards", tuple(p.shards("gen4") / s / "manifest.json" for s in ("val", "test")),
              action=lambda: reuse_eval_shards(p.shards("gen3"), p.shards("gen4"), p.lookup)),
        _train_stage(cfg, p, "gen4"),
        _infer_stage(cfg, p, "gen3", "test"),
        _infer_stage(cfg, p, "gen4", "test"),
        _eval_stage(p, "gen3", None),
        _eval_stage(p, "gen4", "gen3"),
    ]  # fmt: skip
    names = ("gen3_vs_gen4.md", "gen3_vs_gen4.csv", "gen3_vs_gen4.json")
    scores = {gen: p.scores(gen, "test") for gen in ("gen3", "gen4")}
    stages.append(
        Stage(
            "compare",
            tuple(cfg.out / n for n in names),
            action=lambda: write_comparison(cfg, scores),
        )
    )
    return stages


def _split_positions(split_dir: Path) -> tuple:
    """(ra, dec, label) of every sample of a shard split, read through the shard reader."""
    # NOTE: lazy: the shard reader imports torch, kept out of `gen4 --help`
    from haloscope.shards.read import ShardReader

    reader = ShardReader(
        split_dir, batch_size=4096, shuffle=False, drop_last=False, with_table=True
    )
    ra, dec, label = [], [], []
    for batch in reader:
        table = batch["table"][np.asarray(batch["valid"], dtype=bool)]
        ra.append(table["ra"]), dec.append(table["dec"]), label.append(table["label"])
    return np.concatenate(ra), np.concatenate(dec), np.concatenate(label)


def _reuse_split(src: Path, dst: Path, keys: HardNegLookup, lookup: Path) -> dict:
    """Link ``dst`` to ``src``, check every shard's sha256 and that no control is in the lookup."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(src, dst.parent), dst)
    manifest = load_manifest(src)
    bad = [s["file"] for s in manifest.shards if sha256_file(dst / s["file"]) != s["sha256"]]
    if bad:
        raise StageFailed(f"{dst}: shard(s) {bad[:3]} differ from {src / 'manifest.json'}")
    ra, dec, label = _split_positions(dst)
    leaks = int((keys.match(ra, dec) & (label == 0)).sum())
    if leaks:
        raise StageFailed(
            f"{lookup}: {leaks} {src.name} controls are in the hard-negative "
            "lookup; mining must use the train split only"
        )
    return {
        "shards": len(manifest.shards),
        "samples": manifest.num_samples,
        "sha256_verified": True,
        "lookup_matches": 0,
    }


def reuse_eval_shards(gen3: Path, gen4: Path, lookup: Path) -> dict:
    """Give Gen4 the Gen3 val/test shards unchanged and prove it.

    ``gen4/<split>`` becomes a relative symlink to ``gen3/<split>``; then every shard's
    sha256 is checked against the Gen3 manifest (the bytes Gen3 was validated/tested on),
    the lookup must match no val/test control (mining saw the train split only), and the
    Gen4 train shards must share the Gen3 preprocessing (seed, and everything
    ``shards.manifest.check_compatible`` compares: normalisation, meta columns and
    statistics, cut, stamp size), differing only in hard negatives.

    Returns:
        What was verified (stored in the stage marker).

    Raises:
        StageFailed: any check fails.
    """
    keys = load_lookup(lookup)
    notes = {
        split: _reuse_split(gen3 / split, gen4 / split, keys, lookup) for split in ("val", "test")
    }
    t3, t4 = load_manifest(gen3 / "train"), load_manifest(gen4 / "train")
    if t3.preprocess.get("seed") != t4.preprocess.get("seed"):
        raise StageFailed(
            f"{gen4 / 'train'}: seed={t4.preprocess.get('seed')!r} differs from "
            f"Gen3's {t3.preprocess.get('seed')!r}"
        )
    try:  # the rule `train` applies to its val split, checked here before training starts
        check_compatible(t4, t3, against=f"Gen3's {gen3 / 'train'}")
    except DataError as exc:
        raise StageFailed(
            f"the Gen4 train shards cannot use Gen3's val/test shards: {exc}"
        ) from None
    notes["train"] = {
        "gen3_samples": t3.num_samples,
        "gen4_samples": t4.num_samples,
        "gen4_counts": t4.counts,
    }
    log.info(
        "val/test shards reused unchanged (sha256 verified, no lookup match); Gen4 train "
        "%d samples vs Gen3 %d",
        t4.num_samples,
        t3.num_samples,
    )
    return notes


def _stage_times(out: Path) -> list[tuple[str, float]]:
    times = []
    for path in sorted((out / STAGES_DIR).glob("*.json"), key=lambda q: q.stat().st_mtime):
        doc = json.loads(path.read_text())
        times.append((doc["stage"], float(doc.get("wall_s", 0.0))))
    return times


def write_comparison(cfg: Gen4Config, scores: dict[str, Path]) -> dict:
    """DIR/gen3_vs_gen4.{md,csv,json}: side-by-side metrics with confidence intervals.

    Args:
        cfg: the experiment's settings (written into the table's header and JSON).
        scores: generation -> test scores parquet, baseline (Gen3) first.
    """
    comparison = compare_generations(scores)
    reuse = json.loads((cfg.out / STAGES_DIR / "reuse_eval_shards.json").read_text())
    times = _stage_times(cfg.out)
    hard = reuse["train"].get("gen4_counts", {})
    lines = [
        "# Gen3 vs Gen4 (hard negatives) on the same held-out test split",
        "",
        comparison.to_markdown(),
        "",
        f"Gen4 = Gen3 + hard negatives mined from Gen3's train-split scores (controls with "
        f"score > {cfg.min_score}, top {cfg.top_k}, at least {min(cfg.top_k, cfg.min_count)} "
        f"by score when fewer pass), each repeated {cfg.hard_neg_weight}x; "
        "same seed, architecture, epochs and val/test shards (sha256-verified).",
        "",
        f"Train samples: Gen3 {reuse['train']['gen3_samples']}, Gen4 "
        f"{reuse['train']['gen4_samples']} ({hard.get('hard_neg_rows', 0)} controls matched "
        f"the lookup, {hard.get('hard_neg_samples', 0)} hard-negative samples). Test: "
        f"{reuse['test']['samples']} samples.",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in cfg.scale().items()),
        "",
        "Per-generation reports: gen3/report/report.md, gen4/report/report.md.",
        "",
        "| stage | wall time (s) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {wall:.1f} |" for name, wall in times]
    atomic_write_text(cfg.out / "gen3_vs_gen4.md", "\n".join(lines) + "\n")
    comparison.to_csv(cfg.out / "gen3_vs_gen4.csv")
    doc = {
        "settings": cfg.scale(),
        "ci_method": comparison.ci_method,
        "confidence": comparison.confidence,
        "rows": comparison.rows,
        "eval_shards": reuse,
        "stage_wall_s": dict(times),
    }
    write_json(cfg.out / "gen3_vs_gen4.json", doc)
    log.info("wrote %s", cfg.out / "gen3_vs_gen4.md")
    return {}
