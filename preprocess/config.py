"""The seed's preprocessing settings, declared once: fixed when shards are written.

``PreprocessConfig`` holds the five settings that the seed passed to its converter and again to
its trainer. ``ConvertConfig`` (``haloscope shards``) extends it, so each is one field and one
flag there; the shard manifest records them, and ``haloscope train`` only checks given values
against it (``train.config.DataConfig``, the same names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haloscope.config import option
from haloscope.errors import ConfigError
from haloscope.preprocess.normalize import NORM_METHODS
from haloscope.preprocess.schema import check_meta_columns

__all__ = ["PreprocessConfig"]


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """How stamps and rows become samples (recorded in every manifest and checkpoint)."""

    hard_neg_path: Path | None = None
    """Hard-negative lookup parquet; None = no hard negatives."""
    hard_neg_weight: int = 5
    """Copies of each matched control in the train split (1..255)."""
    min_theta_over_psf: float = 0.5
    """Resolvability cut on positives of every split."""
    norm_method: str = option("asinh", choices=NORM_METHODS)
    """Stamp stretch after sky-sigma scaling: asinh (3*asinh(z/3), never saturating; the
    default, twice the seed's detectable TPR at FPR 1e-4 in docs/results/recipe) or outer
    (the seed's clip at +-10)."""
    meta_cols: tuple[str, ...] = ("psfsize_r", "psfdepth_r")
    """Meta inputs, comma-separated, from the schema's allowed meta columns ('' for none)."""

    def __post_init__(self) -> None:
        if not 1 <= self.hard_neg_weight <= 255:
            raise ConfigError(f"--hard-neg-weight must be 1..255, got {self.hard_neg_weight}")
        if not self.min_theta_over_psf >= 0:
            raise ConfigError(f"--min-theta-over-psf must be >= 0, got {self.min_theta_over_psf}")
        if self.norm_method not in NORM_METHODS:
            raise ConfigError(
                f"--norm-method must be one of {NORM_METHODS}, got {self.norm_method!r}"
            )
        check_meta_columns(self.meta_cols)
