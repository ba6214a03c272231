"""The typed configuration of ``haloscope eval``: each field is one flag (``evaluate/cli.py``).

Defaults come from the modules that own them (operating points from ``metrics``, bin edges
from ``stratify.DEFAULT_STRATA``, the detectable subset from ``detectable``), so each is said
once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from haloscope.config import option
from haloscope.evaluate.detectable import DEFAULT_DETECTABLE, DetectableSpec, parse_detectable
from haloscope.evaluate.intervals import CI_METHODS
from haloscope.evaluate.metrics import FPR_TARGETS, TPR_TARGETS
from haloscope.evaluate.scores import RANK_BY
from haloscope.evaluate.stratify import DEFAULT_STRATA, StratumSpec

__all__ = ["EvalConfig"]

_EDGES = {s.column: tuple(map(float, s.edges or ())) for s in DEFAULT_STRATA}


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Inputs, outputs and statistics of one evaluation."""

    scores: str = option(metavar="SCORES.parquet")
    """Scores table to evaluate (`haloscope infer` output)."""
    out_csv: str = option(metavar="STRAT.csv")
    """Stratified table to write."""
    out_json: str | None = option(None, metavar="JSON")
    """Full results JSON; None: --out-csv with .json."""
    report_dir: str | None = option(None, metavar="DIR")
    """Write report.html/.md and PNGs here; None: no report."""
    stamps: str | None = option(None, metavar="ZARR")
    """stamps.zarr of the scored split, for galleries and the shortcut audit."""
    ci: str = option("wilson", choices=CI_METHODS)
    """Binomial interval method."""
    confidence: float = 0.95
    """Two-sided interval level."""
    rank_by: str = option("auto", choices=RANK_BY)
    """Value ranked: auto = logit when present (no fp32 sigmoid ties), else score."""
    reference_scores: str | None = option(None, metavar="REF.parquet")
    """Transfer check: completeness of --scores per arc-SNR and theta_E/PSF bin, and control
    pass rates per kind, at the FPR thresholds set on this table's controls (e.g. the mock
    test), as ratios to it; writes <out-csv>_transfer.csv."""
    compare: tuple[str, ...] = option((), nargs="*", metavar="OTHER.parquet")
    """Scores of other models on the same rows; the first is the baseline of the differences."""
    detectable: str = option(DEFAULT_DETECTABLE, metavar="SPEC")
    """The headline's lens subset: COLUMN OP NUMBER joined by commas (OP >= > <= <;
    theta_over_psf = theta_e_arcsec/psfsize_r, the original's proxy), thresholds from all
    controls; 'none' turns it off."""
    fpr_targets: tuple[float, ...] = FPR_TARGETS
    """FPR operating points."""
    tpr_targets: tuple[float, ...] = TPR_TARGETS
    """TPR operating points."""
    theta_bins: tuple[float, ...] = _EDGES["theta_e_arcsec"]
    """theta_E bin edges [arcsec]."""
    res_bins: tuple[float, ...] = _EDGES["theta_over_psf"]
    """theta_E/PSF bin edges."""

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"--confidence must be in (0, 1), got {self.confidence}")
        for flag, values in (
            ("--fpr-targets", self.fpr_targets),
            ("--tpr-targets", self.tpr_targets),
        ):
            if not values:
                raise ValueError(f"{flag}: empty list")
        for flag, edges in (("--theta-bins", self.theta_bins), ("--res-bins", self.res_bins)):
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"{flag}: need at least 2 increasing edges, got {edges}")
        parse_detectable(self.detectable)  # ConfigError naming the condition

    def detectable_spec(self) -> DetectableSpec | None:
        """The parsed --detectable definition (None: off)."""
        return parse_detectable(self.detectable)

    def strata(self) -> tuple[StratumSpec, ...]:
        """The default strata with the theta_E and theta_E/PSF edges of this config."""
        edges = {"theta_e_arcsec": self.theta_bins, "theta_over_psf": self.res_bins}
        return tuple(
            replace(s, edges=edges[s.column]) if s.column in edges else s for s in DEFAULT_STRATA
        )

    def json_path(self) -> Path:
        """--out-json, else --out-csv with .json."""
        return Path(self.out_json) if self.out_json else Path(self.out_csv).with_suffix(".json")
