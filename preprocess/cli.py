"""``haloscope validate``: check a parquet root against the input contract."""

from __future__ import annotations

from dataclasses import dataclass

from haloscope.argparse_util import ConfigCLI
from haloscope.config import option
from haloscope.preprocess.schema import REQUIRED_COLUMNS, SPLITS, validate_dataset

__all__ = ["CLI", "ValidateConfig", "main"]


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """What ``haloscope validate`` checks."""

    data: str = option(metavar="DIR")
    """Parquet root directory (hive layout)."""
    splits: tuple[str, ...] = SPLITS
    """Comma-separated splits that must be present."""


CLI = ConfigCLI(
    "validate",
    ValidateConfig,
    "Check the hive layout (<root>/region_split=train|val|test/*.parquet) and every "
    "file's required columns and types, reading only parquet footers. Required columns: "
    + ", ".join(REQUIRED_COLUMNS),
)


def main(argv: list[str]) -> int:
    """Run ``haloscope validate``; returns the exit status."""
    cfg = CLI.parse(argv)
    layout = validate_dataset(cfg.data, list(cfg.splits))
    for split, files in layout.files.items():
        print(f"{split:>5}: {len(files)} files, {layout.num_rows[split]:,} rows")
    print(f"{cfg.data}: OK (follows the haloscope input contract)")
    return 0
