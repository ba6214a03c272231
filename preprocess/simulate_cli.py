"""``haloscope simulate``: write a mock DR10 survey in the real hive-parquet layout."""

from __future__ import annotations

import argparse
import json
import logging

from haloscope.argparse_util import VerbParser
from haloscope.errors import ConfigError
from haloscope.log import setup_logging
from haloscope.preprocess.sim_config import CHUNK_ROWS, SimConfig
from haloscope.preprocess.simulate import simulate

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Write a mock DESI Legacy Survey DR10 cutout table: <out>/region_split={train,val,test}/part-*.parquet
with 64x64 g/r/z nanomaggy stamps (np.load-able npz in `stamp_npz`), controls (is_control=1,
a tunable share of them lens-like confusers) and SIE+shear lenses (is_control=0), about 9 rows per
galaxy, brick-sorted files, and the real tables' defects (cutout_ok=0 rows, NaN stamps, r-only rows).
The output is a pure function of --seed (and the fractions), whatever --workers is.
Physics and column dictionary: docs/mock_survey.md."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _split_fracs(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.7,0.15,0.15, got {text!r}"
        ) from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative numbers summing to 1, got {text!r}"
        )
    return parts  # type: ignore[return-value]


def build_parser() -> VerbParser:
    """The argument parser of ``haloscope simulate`` (every default shown in --help)."""
    p = VerbParser("simulate", _DESCRIPTION)
    p.add_argument("--out", required=True, help="output root directory (hive layout)")
    p.add_argument("--rows", type=_positive_int, required=True, help="total number of table rows")
    p.add_argument("--seed", type=int, default=0, help="master random seed")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="processes (output does not depend on it)"
    )
    p.add_argument(
        "--compression",
        choices=["zstd", "gzip", "snappy", "none"],
        default="zstd",
        help="parquet codec; gzip reproduces the real DR10 files but is ~10x slower to write",
    )
    p.add_argument(
        "--control-frac", type=_fraction, default=0.5, help="fraction of galaxies that are controls"
    )
    p.add_argument(
        "--confuser-frac",
        type=_fraction,
        default=0.25,
        help="fraction of controls drawn as confusers (ring, spiral, edge_on, merger, blue_companion)",
    )
    p.add_argument(
        "--split-fracs",
        type=_split_fracs,
        default=(0.7, 0.15, 0.15),
        help="train,val,test fractions of sky regions",
    )
    p.add_argument(
        "--fail-frac",
        type=_fraction,
        default=0.005,
        help="fraction of galaxies with cutout_ok=0 (r-only zero stamps)",
    )
    p.add_argument(
        "--nan-frac",
        type=_fraction,
        default=0.0005,
        help="fraction of galaxies with a NaN patch and cutout_ok=1",
    )
    p.add_argument(
        "--r-only-frac",
        type=_fraction,
        default=0.002,
        help="fraction of galaxies stored with bandset='r'",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=CHUNK_ROWS,
        help="rows per work unit and part file group (changes the output; keep the default)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing survey under --out"
    )
    p.add_argument(
        "--selection-frac",
        type=float,
        default=0.32,
        help="chance that each of 11 further selection sets repeats a galaxy (about 9 rows per "
        "galaxy at 0.32, as the real tables; 0 gives 2 rows per galaxy, for large runs)",
    )
    p.add_argument(
        "--quantize",
        type=float,
        default=0.0,
        help="round pixels to a power-of-two step <= sky sigma / Q, as lossy tile compression "
        "does (about 3x smaller files at Q=4; 0 keeps exact float32)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str]) -> int:
    """Run ``haloscope simulate``; returns the exit status.

    Raises:
        ConfigError: a flag value is inconsistent or --out already holds a survey.
    """
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.chunk_rows < 64:
        raise ConfigError(f"--chunk-rows must be >= 64, got {args.chunk_rows}")
    cfg = SimConfig(
        out=args.out,
        rows=args.rows,
        seed=args.seed,
        workers=args.workers,
        compression=args.compression,
        control_frac=args.control_frac,
        confuser_frac=args.confuser_frac,
        split_fracs=args.split_fracs,
        fail_frac=args.fail_frac,
        nan_frac=args.nan_frac,
        r_only_frac=args.r_only_frac,
        selection_frac=args.selection_frac,
        quantize=args.quantize,
        chunk_rows=args.chunk_rows,
    )
    summary = simulate(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("rows", "rows_per_split", "seconds", "rows_per_s")}))
    return 0
