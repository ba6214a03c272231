"""The pre-registered *detectable subset* of the lenses, where the headline is measured.

A definition is a list of conditions joined by commas, ``COLUMN OP NUMBER`` with ``OP`` one
of ``>= > <= <``, e.g. the default (the original's proxy)::

    arc_snr>=5,theta_over_psf>=0.8

``theta_over_psf`` here is ``theta_e_arcsec / psfsize_r`` (the survey's r-band PSF size), as
the original defines the proxy and as ``preprocess/sim/realism.py`` counts the detectable
fraction. It is *not* the table's ``theta_over_psf`` column nor the strata's theta_E/PSF,
which prefer the PSF the simulation used (``stratify.PSF_COLUMNS``). The subset only selects
lenses: thresholds still come from all controls.

A lens whose value is missing (NULL/NaN) for a condition is outside the subset (counted as
``num_undefined``). A table without a column of the definition, or with none of its lenses
defined, has no subset; :func:`detectable_mask` says why and the caller reports all
injections only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from haloscope.errors import ConfigError
from haloscope.evaluate.scores import ScoresFrame
from haloscope.preprocess.gates import theta_psf_ratio

__all__ = [
    "DEFAULT_DETECTABLE",
    "DETECTABLE_COLUMNS",
    "Condition",
    "DetectableSpec",
    "DetectableSubset",
    "detectable_mask",
    "parse_detectable",
]

DEFAULT_DETECTABLE = "arc_snr>=5,theta_over_psf>=0.8"
PSF_COLUMN = "psfsize_r"
"""The PSF of ``theta_over_psf`` in a definition (the original's proxy uses psfsize_r)."""
DETECTABLE_COLUMNS: tuple[str, ...] = (
    "arc_snr",
    "arc_snr_sum",
    "theta_over_psf",
    "theta_e_arcsec",
    "magnification",
    "arc_lens_flux_ratio",
    "tangential_stretch",
    "radial_stretch",
    "src_redshift",
    "src_dmag",
    "psfsize_r",
    "psfdepth_r",
)
"""Names a definition may use (scores-table columns, plus the derived ``theta_over_psf``)."""
_OPS = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}
_CONDITION = re.compile(
    r"\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)


@dataclass(frozen=True)
class Condition:
    """One condition ``column op value`` of a definition."""

    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value:g}"


@dataclass(frozen=True)
class DetectableSpec:
    """A parsed definition: every condition must hold (logical and)."""

    conditions: tuple[Condition, ...]

    @property
    def text(self) -> str:
        """The canonical ``--detectable`` form, e.g. ``arc_snr>=5,theta_over_psf>=0.8``."""
        return ",".join(str(c) for c in self.conditions)

    def describe(self) -> str:
        """For people: ``arc_snr >= 5 and theta_E/psfsize_r >= 0.8``."""
        names = {"theta_over_psf": f"theta_E/{PSF_COLUMN}"}
        return " and ".join(
            f"{names.get(c.column, c.column)} {c.op} {c.value:g}" for c in self.conditions
        )


@dataclass(frozen=True)
class DetectableSubset:
    """The subset's lenses in a table, or why there is none.

    Attributes:
        spec: the definition.
        mask: bool (N,) over all rows, True for lenses in the subset; None when the table
            cannot say (``reason``).
        num_undefined: lenses with a missing value in a condition's column (not in the subset).
        reason: why there is no subset (a column absent, or no lens with values).
    """

    spec: DetectableSpec
    mask: np.ndarray | None
    num_undefined: int = 0
    reason: str | None = None


def parse_detectable(text: str) -> DetectableSpec | None:
    """Parse a ``--detectable`` definition; ``none`` turns the subset off (returns None).

    Raises:
        ConfigError: naming the condition that cannot be read and the grammar.
    """
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    conditions = []
    for i, part in enumerate(parts, 1):
        match = _CONDITION.fullmatch(part)
        problem = None
        if match is None:
            problem = "expected COLUMN OP NUMBER with OP one of >=, >, <=, <"
        elif match.group(1) not in DETECTABLE_COLUMNS:
            problem = f"unknown column {match.group(1)!r}"
        if problem is not None:
            raise ConfigError(
                f"--detectable: cannot read {part.strip()!r} (condition {i} of {len(parts)}): "
                f"{problem}; write conditions joined by commas, e.g. {DEFAULT_DETECTABLE!r}, "
                f"with a column of {', '.join(DETECTABLE_COLUMNS)}, or 'none'"
            )
        conditions.append(Condition(match.group(1), match.group(2), float(match.group(3))))
    return DetectableSpec(tuple(conditions))


def _values(frame: ScoresFrame, column: str) -> tuple[np.ndarray | None, str | None]:
    cols = frame.columns
    needed = ("theta_e_arcsec", PSF_COLUMN) if column == "theta_over_psf" else (column,)
    for name in needed:
        if name not in cols:
            return None, f"column {name!r} absent"
        if cols[name].dtype == object:
            return None, f"column {name!r} is not numeric"
    if column != "theta_over_psf":
        return cols[column].astype(np.float64), None
    return theta_psf_ratio(cols["theta_e_arcsec"], cols[PSF_COLUMN]), None


def detectable_mask(frame: ScoresFrame, spec: DetectableSpec) -> DetectableSubset:
    """The lenses of ``frame`` that meet ``spec`` (see :class:`DetectableSubset`)."""
    lenses = frame.labels == 1
    mask, defined = lenses.copy(), lenses.copy()
    for cond in spec.conditions:
        values, reason = _values(frame, cond.column)
        if values is None:
            return DetectableSubset(spec, None, reason=reason)
        finite = np.isfinite(values)
        if not finite[lenses].any():
            label = "theta_e_arcsec/psfsize_r" if cond.column == "theta_over_psf" else cond.column
            return DetectableSubset(spec, None, reason=f"{label} is null for every lens")
        defined &= finite
        with np.errstate(invalid="ignore"):
            mask &= finite & _OPS[cond.op](values, cond.value)
    return DetectableSubset(spec, mask, num_undefined=int((lenses & ~defined).sum()))


def subset_block(subset: DetectableSubset | None, num_lenses: int, row: dict | None = None) -> dict:
    """The JSON ``detectable`` block: definition, size, and the operating points in ``row``.

    Args:
        subset: the subset (None when ``--detectable none``).
        num_lenses: all lenses of the table (for the share).
        row: the subset's stratum row (``tpr@fpr``, ``fpr@tpr`` with CIs, thresholds from
            all controls), or None when there is no subset.

    Returns:
        ``{"status": "ok" | "not evaluated" | "off", "reason", "definition", "spec", ...}``.
    """
    if subset is None:
        return {"status": "off", "reason": "--detectable none", "definition": None}
    spec = subset.spec
    block = {
        "definition": spec.describe(),
        "spec": spec.text,
        "theta_over_psf": (
            f"theta_e_arcsec / {PSF_COLUMN} (the original's proxy; the strata's "
            "theta_E/PSF uses psf_fwhm_r first)"
        ),
        "thresholds_from": "all controls",
    }
    if subset.mask is None or row is None:
        reason = subset.reason or "no lens meets the definition"
        return {"status": "not evaluated", "reason": reason} | block
    num_in = int(row["P"])
    return (
        {"status": "ok", "reason": None}
        | block
        | {
            "num_lenses": num_in,
            "num_all_lenses": int(num_lenses),
            "share_of_lenses": num_in / num_lenses if num_lenses else None,
            "num_undefined": subset.num_undefined,
        }
        | row
    )
