"""``haloscope transfer-sets``: independent lens and confuser sets for a transfer check."""

from __future__ import annotations

import json
from pathlib import Path

from haloscope.argparse_util import VerbParser
from haloscope.errors import ConfigError
from haloscope.log import setup_logging

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
Render lenses and confusers with a second, independent renderer (lenstronomy SIE + shear,
Sersic + clump sources, its own Moffat PSF and DR10 noise, its own population ranges) into
<out>/region_split=test/part-00000.parquet in the data contract's layout. Score them with
`haloscope infer --data OUT --split test` and compare with the mock test at the mock's
thresholds (`haloscope eval --scores THESE --reference-scores MOCK_TEST_SCORES`): the transfer check of
docs/mock_survey.md. Never train on these rows. Needs lenstronomy (`pip install haloscope[test]`;
`make` installs it)."""


def build_parser() -> VerbParser:
    """The argument parser of ``haloscope transfer-sets`` (every default shown in --help)."""
    p = VerbParser("transfer-sets", _DESCRIPTION)
    p.add_argument("--out", required=True, help="output root (gets region_split=test/)")
    p.add_argument("--lenses", type=int, default=2000, help="injected lenses")
    p.add_argument("--controls", type=int, default=1000, help="plain LRG controls")
    p.add_argument(
        "--confusers", type=int, default=1000,
        help="confusers, evenly blue_companion / edge_on / merger / star_blend",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed; output is a pure function of it")
    p.add_argument(
        "--workers", type=int, default=1, help="processes (output does not depend on it)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing set in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    """Run ``haloscope transfer-sets``; returns the exit status.

    Raises:
        ConfigError: a count is negative, lenstronomy is missing, or --out holds a set already.
    """
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        import lenstronomy  # noqa: F401
    except ImportError:
        raise ConfigError(
            "transfer-sets needs lenstronomy: pip install 'haloscope[test]' (make installs it)"
        ) from None
    from haloscope.preprocess.transfer_sets import TransferConfig, write_transfer_sets

    try:
        cfg = TransferConfig(
            lenses=args.lenses, controls=args.controls, confusers=args.confusers, seed=args.seed
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    dest = Path(args.out) / "region_split=test" / "part-00000.parquet"
    if dest.exists() and not args.overwrite:
        raise ConfigError(f"{dest} exists; pass --overwrite to replace it")
    counts = write_transfer_sets(cfg, Path(args.out), args.workers, not args.no_progress)
    print(json.dumps({"out": str(dest), "rows": sum(counts.values()), "per_kind": counts}))
    return 0
