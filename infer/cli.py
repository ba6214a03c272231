"""``haloscope infer``: score shards or raw parquet with a checkpoint into a scores parquet.

Single process::

    haloscope infer --ckpt RUN/best.pt --shards SHARDS --split test --out RUN/scores_test.parquet

Several GPUs (or several CPU processes with gloo), each rank scoring a disjoint part::

    torchrun --nproc-per-node 8 -m haloscope infer --ckpt RUN/best.pt --shards SHARDS ...
"""

from __future__ import annotations

from haloscope.argparse_util import VerbParser
from haloscope.errors import ConfigError

__all__ = ["build_parser", "config_from_args", "main"]

_DESCRIPTION = """\
Score one split with a checkpoint into a parquet table (docs/inference.md): task_id, ra, dec,
label, the strata columns, fp32 logit and score (= sigmoid(logit)), model. Preprocessing is
the checkpoint's own (outer normalisation, its meta columns, its resolvability cut): data made
with other settings is refused. bf16 autocast on CUDA with an fp32 logit layer, so bf16 adds
no ties. Under torchrun every rank scores a disjoint part and rank 0 writes the file."""


def build_parser() -> VerbParser:
    """The argument parser of ``haloscope infer``."""
    p = VerbParser("infer", _DESCRIPTION)
    p.add_argument("--ckpt", required=True, help="checkpoint from `haloscope train` (best.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", default=None, help="shard root with <split>/manifest.json")
    src.add_argument("--data", default=None, help="hive parquet root, region_split=<split>/")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split to score")  # fmt: skip
    p.add_argument("--out", required=True, help="scores parquet to write (atomically)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per model call per rank")
    p.add_argument(
        "--tta",
        action="store_true",
        help="mean logit over the 8 D4 rotations/flips (8x the compute)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK if available, else cpu), cpu or cuda",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU; the logit layer is always fp32",
    )
    p.add_argument(
        "--step",
        default="auto",
        choices=["auto", "graph", "compile", "eager"],
        help="auto: one CUDA graph per batch on CUDA (last batch padded), eager on CPU",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="shard-reader worker processes per rank (shards only)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="value of the `model` column; None: the checkpoint's folder name",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def config_from_args(args) -> InferConfig:  # noqa: F821 - imported lazily (torch-free --help)
    """Build the validated ``InferConfig`` from parsed flags.

    Raises:
        ConfigError: an invalid flag or combination, naming the flag.
    """
    from haloscope.infer.config import InferConfig

    try:
        return InferConfig(
            ckpt=args.ckpt, out=args.out, shards=args.shards, data=args.data, split=args.split,
            batch_size=args.batch_size, tta=args.tta, device=args.device,
            precision=args.precision, step=args.step, num_workers=args.num_workers,
            model_name=args.model_name,
            progress=not args.no_progress,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: list[str]) -> int:
    """Run ``haloscope infer``; returns the exit status."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from haloscope.infer.run import run_inference

    run_inference(cfg)
    return 0
