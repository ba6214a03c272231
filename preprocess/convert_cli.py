"""``haloscope shards``: convert parquet splits into WebDataset shards (or verify shards)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from haloscope.argparse_util import VerbParser, parse_csv
from haloscope.errors import ConfigError
from haloscope.log import setup_logging
from haloscope.preprocess.convert import ConvertConfig
from haloscope.preprocess.normalize import NORM_METHODS
from haloscope.preprocess.schema import META_ALLOWED, SPLITS

__all__ = ["main", "build_parser", "slurm_task"]

log = logging.getLogger(__name__)


def slurm_task(env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(task_index, num_tasks)`` from a Slurm array job's variables, else ``(0, 1)``."""
    env = dict(os.environ if env is None else env)
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return 0, 1
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return task, int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        raise ConfigError("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not integers") from None


def build_parser() -> VerbParser:
    task, tasks = slurm_task()
    p = VerbParser(
        "shards",
        "Convert <data>/region_split=<split>/*.parquet into WebDataset shards under "
        "<out>/<split>/ (packed records of normalised float16 stamps, meta, labels and ids), "
        "with quality gates, de-duplication, hard-negative duplication and a global shuffle. "
        "manifest.json per split is written last; val/test also get stamps.zarr. Re-running "
        "resumes. See docs/shards.md.",
    )
    p.add_argument("--data", help="parquet root (hive layout); required unless --verify")
    p.add_argument("--out", required=True, help="output root for <split>/ shard directories")
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to convert")
    p.add_argument(
        "--hard-neg-path",
        default=None,
        help="hard-negative lookup parquet (ra_key,dec_key or ra,dec); none if unset",
    )
    p.add_argument(
        "--hard-neg-weight",
        type=int,
        default=5,
        help="copies of each control that matches the lookup",
    )
    p.add_argument(
        "--min-theta-over-psf",
        type=float,
        default=0.5,
        help="resolvability cut theta_E/PSF-FWHM on positives of every split",
    )
    p.add_argument("--norm-method", default="outer", choices=NORM_METHODS,
                   help="stamp stretch after sky-sigma scaling: outer (the seed's clip at +-10) "
                   "or asinh (3*asinh(z/3): linear in the noise, never saturating)")  # fmt: skip
    p.add_argument("--train-min-arc-snr", type=float, default=0.0,
                   help="drop lenses with arc_snr below this from the train split only; val and "
                   "test keep every lens (default 0 = keep all)")  # fmt: skip
    p.add_argument(
        "--meta-cols",
        default="psfsize_r,psfdepth_r",
        help="meta inputs, from: " + ",".join(META_ALLOWED) + " ('' for none)",
    )
    p.add_argument("--record-samples", type=int, default=256, help="samples per packed record")
    p.add_argument(
        "--shard-samples",
        type=int,
        default=4096,
        help="target samples per shard (also the pass-2 memory unit)",
    )
    p.add_argument(
        "--task-index",
        type=int,
        default=task,
        help="this task's index (default from SLURM_ARRAY_TASK_ID)",
    )
    p.add_argument(
        "--num-tasks",
        type=int,
        default=tasks,
        help="tasks sharing the work (default from SLURM_ARRAY_TASK_COUNT)",
    )
    p.add_argument(
        "--stage",
        default="all",
        choices=["all", "pass1", "pass2", "manifest"],
        help="run one stage only (cluster pipelines); 'all' waits for other tasks",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes of this task")
    p.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
    p.add_argument("--batch-rows", type=int, default=1024, help="parquet rows per read batch")
    p.add_argument(
        "--wait-timeout-s",
        type=float,
        default=86400.0,
        help="how long --stage all waits for other tasks' parts",
    )
    p.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the pass-1 bucket files in <out>/_work after success",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="do not convert: check every shard of <out> against its manifest "
        "(sha256, structure, counts)",
    )
    return p


def _config(args, argv: list[str]) -> ConvertConfig:
    if not args.data:
        raise ConfigError("--data is required (the parquet root) unless --verify is given")
    return ConvertConfig(
        data=Path(args.data),
        out=Path(args.out),
        splits=tuple(parse_csv(args.splits)),
        hard_neg_path=Path(args.hard_neg_path) if args.hard_neg_path else None,
        hard_neg_weight=args.hard_neg_weight,
        min_theta_over_psf=args.min_theta_over_psf,
        norm_method=args.norm_method,
        train_min_arc_snr=args.train_min_arc_snr,
        meta_cols=tuple(parse_csv(args.meta_cols)),
        record_samples=args.record_samples,
        shard_samples=args.shard_samples,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
        workers=args.workers,
        seed=args.seed,
        batch_rows=args.batch_rows,
        stage=args.stage,
        wait_timeout_s=args.wait_timeout_s,
        keep_work=args.keep_work,
        command=("haloscope", "shards", *argv),
    )


def main(argv: list[str]) -> int:
    """Entry point of ``haloscope shards``."""
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.verify:
        from haloscope.shards.verify import verify_shards

        for line in verify_shards(Path(args.out), parse_csv(args.splits)):
            print(line)
        return 0
    from haloscope.preprocess.convert_run import convert

    cfg = _config(args, argv)
    written = convert(cfg)
    for split, path in written.items():
        print(f"{split}: {path}", file=sys.stdout)
    return 0
