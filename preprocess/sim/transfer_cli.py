"""``haloscope transfer-sets``: independent lens and confuser sets for a transfer check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from haloscope.argparse_util import ConfigCLI
from haloscope.config import narrow, option
from haloscope.errors import ConfigError
from haloscope.log import setup_logging
from haloscope.preprocess.sim.transfer import TransferConfig, write_transfer_sets

__all__ = ["CLI", "TransferSetsOptions", "main"]

_DESCRIPTION = """\
Render lenses and confusers with a second, independent renderer (lenstronomy SIE + shear,
Sersic + clump sources, its own Moffat PSF and DR10 noise, its own population ranges) into
<out>/region_split=test/part-00000.parquet in the data contract's layout. Score them with
`haloscope infer --data OUT --split test` and compare with the mock test at the mock's
thresholds (`haloscope eval --scores THESE --reference-scores MOCK_TEST_SCORES`): the transfer check of
docs/mock_survey.md. Never train on these rows. Needs lenstronomy (`pip install haloscope[test]`;
`make` installs it)."""


@dataclass(frozen=True, kw_only=True)
class TransferSetsOptions(TransferConfig):
    """A ``TransferConfig`` and where and how to write it (the flags of ``transfer-sets``)."""

    out: str = option(metavar="DIR")
    """Output root (gets region_split=test/)."""
    num_workers: int = 1
    """Processes; the output does not depend on them."""
    overwrite: bool = False
    """Replace an existing set in --out."""
    progress: bool = True
    """Progress bar on stderr."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")


CLI = ConfigCLI("transfer-sets", TransferSetsOptions, _DESCRIPTION)


def main(argv: list[str]) -> int:
    """Run ``haloscope transfer-sets``; returns the exit status.

    Raises:
        ConfigError: a count is negative, lenstronomy is missing, or --out holds a set already.
    """
    cfg = CLI.parse(argv)
    setup_logging()
    # NOTE: probes the optional lenstronomy (a test extra) to refuse with the fix.
    try:
        import lenstronomy  # noqa: F401
    except ImportError:
        raise ConfigError(
            "transfer-sets needs lenstronomy: pip install 'haloscope[test]' (make installs it)"
        ) from None
    dest = Path(cfg.out) / "region_split=test" / "part-00000.parquet"
    if dest.exists() and not cfg.overwrite:
        raise ConfigError(f"{dest} exists; pass --overwrite to replace it")
    counts = write_transfer_sets(
        narrow(cfg, TransferConfig), Path(cfg.out), cfg.num_workers, cfg.progress
    )
    print(json.dumps({"out": str(dest), "rows": sum(counts.values()), "per_kind": counts}))
    return 0
