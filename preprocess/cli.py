"""``haloscope validate``: check a parquet root against the input contract."""

from __future__ import annotations

from haloscope.argparse_util import VerbParser, parse_csv
from haloscope.preprocess.schema import REQUIRED_COLUMNS, SPLITS, validate_dataset

__all__ = ["main", "build_parser"]


def build_parser() -> VerbParser:
    parser = VerbParser(
        "validate",
        "Check the hive layout (<root>/region_split=train|val|test/*.parquet) and every "
        "file's required columns and types, reading only parquet footers. Required columns: "
        + ", ".join(REQUIRED_COLUMNS),
    )
    parser.add_argument("--data", required=True, help="parquet root directory")
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated splits that must be present"
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    layout = validate_dataset(args.data, parse_csv(args.splits))
    for split, files in layout.files.items():
        print(f"{split:>5}: {len(files)} files, {layout.num_rows[split]:,} rows")
    print(f"{args.data}: OK (follows the haloscope input contract)")
    return 0
