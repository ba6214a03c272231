"""Stratified completeness and false-positive rates with binomial confidence intervals.

Thresholds always come from ALL controls: for each FPR target ``f`` the global operating
threshold ``t_f`` (see :mod:`haloscope.evaluate.metrics`) is computed once on the whole
table, then

- a *positive* stratum (lenses in a theta_E, theta_E/PSF, PSF, depth, arc-SNR or
  source-magnitude bin) reports completeness ``TPR@FPRf = #(score >= t_f) / P`` with a CI,
  and ``FPR@TPRt`` of (its positives together with all controls), as the seed's
  ``phase5_eval_stratified_fpr.py`` does (without its tie bug);
- a *control* stratum (controls in a PSF or depth bin, or of one ``control_kind``) reports
  its own false-positive rate at the same thresholds, ``FPRobs@FPRf``, with a CI;
- the *detectable subset* (:mod:`haloscope.evaluate.detectable`), the headline, is a
  positive stratum named ``detectable`` reported before all others.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from haloscope.atomic import atomic_open
from haloscope.evaluate.detectable import DetectableSpec, detectable_mask, subset_block
from haloscope.evaluate.intervals import binomial_interval
from haloscope.evaluate.metrics import (
    FPR_TARGETS,
    TPR_TARGETS,
    OperatingPoint,
    auroc,
    operating_points,
)
from haloscope.evaluate.scores import ScoresFrame
from haloscope.preprocess.gates import theta_psf_ratio

__all__ = [
    "DEFAULT_STRATA",
    "StratumSpec",
    "StratifiedResult",
    "column_values",
    "csv_columns",
    "stratify",
    "write_stratified_csv",
]

logger = logging.getLogger(__name__)
INF = math.inf
# PSF FWHM columns for theta_E / PSF when the table has no theta_over_psf, in order:
# infer's, the seed's (the PSF its simulation used), the survey's r-band PSF size
PSF_COLUMNS: tuple[str, ...] = ("psf_fwhm_r", "psf_fwhm_used_r", "psfsize_r")


@dataclass(frozen=True)
class StratumSpec:
    """How to cut one column into strata.

    Attributes:
        column: scores-table column.
        prefix: stratum name prefix (the seed used ``theta`` and ``res``).
        edges: bin edges ``[lo, hi)``; None for quantile bins or categories.
        num_quantiles: quantile bins computed from the data when ``edges`` is None.
        categorical: one stratum per distinct value (string columns).
        positives: make strata of lenses (completeness).
        controls: make strata of controls (false-positive rate).
    """

    column: str
    prefix: str
    edges: tuple[float, ...] | None = None
    num_quantiles: int = 4
    categorical: bool = False
    positives: bool = True
    controls: bool = False


DEFAULT_STRATA: tuple[StratumSpec, ...] = (
    StratumSpec("theta_e_arcsec", "theta", edges=(0, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, INF)),
    StratumSpec("theta_over_psf", "res", edges=(0, 0.4, 0.6, 0.8, 1, 1.5, 2, INF)),
    StratumSpec("psfsize_r", "psfsize_r", controls=True),
    StratumSpec("psfdepth_r", "psfdepth_r", controls=True),
    StratumSpec("arc_snr", "arc_snr", edges=(0, 0.8, 2, 5, 8, 20, INF)),
    StratumSpec("src_dmag", "src_dmag"),
    StratumSpec("arc_snr_sum", "arc_snr_sum", edges=(0, 3, 8, 20, 60, 200, INF)),
    StratumSpec("magnification", "magnification", edges=(0, 2, 3, 5, 10, 20, INF)),
    StratumSpec("arc_lens_flux_ratio", "arc_lens_flux_ratio", edges=(0, 0.03, 0.1, 0.3, 1, 3, INF)),
    StratumSpec("tangential_stretch", "tangential_stretch", edges=(0, 1.5, 2, 3, 5, 10, INF)),
    StratumSpec("radial_stretch", "radial_stretch"),
    StratumSpec("src_redshift", "src_redshift", edges=(0, 1, 1.5, 2, 2.5, 3, INF)),
    StratumSpec("control_kind", "control_kind", categorical=True, positives=False, controls=True),
)


@dataclass
class StratifiedResult:
    """Everything ``eval`` computes (JSON-able through :meth:`to_dict`).

    Attributes:
        global_points: global operating points (``tpr@fpr`` and ``fpr@tpr``).
        rows: one dict per stratum (long form, with CIs).
        skipped: column -> reason, for strata columns that were absent or all null.
        detectable: the detectable-subset block (see
            :func:`haloscope.evaluate.detectable.subset_block`); its operating points when
            ``status == "ok"``, else the reason.
        ci_method: ``wilson`` or ``clopper-pearson``.
        confidence: two-sided CI level.
        fpr_targets: FPR targets.
        tpr_targets: TPR targets.
    """

    global_points: dict[str, list[OperatingPoint]]
    rows: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    detectable: dict[str, Any] = field(default_factory=lambda: subset_block(None, 0))
    ci_method: str = "wilson"
    confidence: float = 0.95
    fpr_targets: tuple[float, ...] = FPR_TARGETS
    tpr_targets: tuple[float, ...] = TPR_TARGETS

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "detectable": self.detectable,
            "ci_method": self.ci_method,
            "confidence": self.confidence,
            "fpr_targets": list(self.fpr_targets),
            "tpr_targets": list(self.tpr_targets),
            "global": {k: [p.to_dict() for p in v] for k, v in self.global_points.items()},
            "strata": self.rows,
            "skipped": self.skipped,
        }


def _rate(k: int, n: int, threshold: float, target: float) -> dict[str, Any]:
    # ci_low / ci_high are filled for all strata at once by _fill_intervals
    return {
        "target": target,
        "value": k / n if n else None,
        "k": int(k),
        "n": int(n),
        "threshold": threshold if math.isfinite(threshold) else None,
        "ci_low": None,
        "ci_high": None,
    }


class _Counter:
    """Counts at the global thresholds, shared by every stratum."""

    def __init__(self, frame: ScoresFrame, points: dict[str, list[OperatingPoint]]) -> None:
        self.frame = frame
        self.points = points
        self.neg_sorted = np.sort(frame.ranking[frame.labels == 0])
        self.fpr_thresholds = np.array([p.threshold for p in points["tpr@fpr"]])

    def _score(self, threshold: float) -> float:
        return self.frame.to_score(threshold)

    def positive_row(self, pos: np.ndarray) -> dict[str, Any]:
        num_pos, num_neg = int(pos.size), int(self.neg_sorted.size)
        k_tp = (pos[None, :] >= self.fpr_thresholds[:, None]).sum(axis=1)
        tpr = [
            _rate(int(k), num_pos, self._score(t), p.target)
            for k, t, p in zip(k_tp, self.fpr_thresholds, self.points["tpr@fpr"], strict=True)
        ]
        pos_desc = np.sort(pos)[::-1]
        fpr = []
        for p in self.points["fpr@tpr"]:
            required = int(math.ceil(p.target * num_pos * (1 - 1e-9)))
            t = INF if required == 0 else float(pos_desc[required - 1])
            k = num_neg - int(np.searchsorted(self.neg_sorted, t, side="left"))
            fpr.append(_rate(k, num_neg, self._score(t), p.target))
        return {"n": num_pos + num_neg, "P": num_pos, "N": num_neg, "tpr@fpr": tpr, "fpr@tpr": fpr}

    def control_row(self, neg: np.ndarray) -> dict[str, Any]:
        k_fp = (neg[None, :] >= self.fpr_thresholds[:, None]).sum(axis=1)
        obs = [
            _rate(int(k), int(neg.size), self._score(t), p.target)
            for k, t, p in zip(k_fp, self.fpr_thresholds, self.points["tpr@fpr"], strict=True)
        ]
        return {"n": int(neg.size), "P": 0, "N": int(neg.size), "fpr_obs@fpr": obs}


def _fill_intervals(rows: list[dict[str, Any]], method: str, confidence: float) -> None:
    """One vectorised interval call for every rate of every stratum (Clopper-Pearson is slow
    per call, fast per element)."""
    entries = [
        e for r in rows for key in ("tpr@fpr", "fpr@tpr", "fpr_obs@fpr") for e in r.get(key, [])
    ]
    if not entries:
        return
    lo, hi = binomial_interval(
        [e["k"] for e in entries], [e["n"] for e in entries], method, confidence
    )
    for entry, a, b in zip(entries, lo.tolist(), hi.tolist(), strict=True):
        entry["ci_low"] = a if math.isfinite(a) else None
        entry["ci_high"] = b if math.isfinite(b) else None


def column_values(frame: ScoresFrame, spec: StratumSpec) -> np.ndarray | None:
    """The values of ``spec.column`` (``theta_over_psf`` derived from theta_E and the PSF
    column of ``PSF_COLUMNS``), or None when the table has no such column."""
    cols = frame.columns
    if spec.column in cols:
        return cols[spec.column]
    if spec.column == "theta_over_psf" and "theta_e_arcsec" in cols:
        psf = next((cols[c] for c in PSF_COLUMNS if c in cols), None)
        if psf is not None and psf.dtype != object:
            return theta_psf_ratio(cols["theta_e_arcsec"], psf)
    return None


def _quantile_edges(values: np.ndarray, num: int) -> tuple[float, ...]:
    qs = np.quantile(values, np.linspace(0, 1, num + 1)[1:-1])
    inner = sorted({float(f"{q:.4g}") for q in qs})
    return (-INF, *inner, INF)


def _bins(
    spec: StratumSpec, values: np.ndarray, member: np.ndarray
) -> list[tuple[str, Any, Any, np.ndarray]]:
    if spec.categorical:
        present = values[member]
        cats = sorted({v for v in present.tolist() if v is not None and v == v})
        return [(f"{spec.prefix}={c}", c, c, member & (values == c)) for c in cats]
    vals = values.astype(np.float64)
    finite = member & np.isfinite(vals)
    # quantiles over both classes, so lens and control strata share their bins
    edges = spec.edges or _quantile_edges(vals[np.isfinite(vals)], spec.num_quantiles)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out.append((f"{spec.prefix}[{lo:g},{hi:g})", lo, hi, finite & (vals >= lo) & (vals < hi)))
    return out


def _has_values(values: np.ndarray, member: np.ndarray) -> bool:
    sub = values[member]
    if sub.dtype == object:
        return any(v is not None and v == v for v in sub.tolist())
    return bool(np.isfinite(sub.astype(np.float64)).any())


def _spec_rows(
    counter: _Counter, spec: StratumSpec, skipped: dict[str, str]
) -> list[dict[str, Any]]:
    frame = counter.frame
    values = column_values(frame, spec)
    if values is None:
        skipped[spec.column] = "column absent"
        return []
    if not spec.categorical and values.dtype == object:
        skipped[spec.column] = f"not numeric ({type(next(iter(values), None)).__name__} values)"
        return []
    rows = []
    for kind, wanted, label in (("positives", spec.positives, 1), ("controls", spec.controls, 0)):
        member = frame.labels == label
        if not wanted:
            continue
        if not _has_values(values, member):
            skipped[f"{spec.column}:{kind}"] = f"all null for {kind}"
            continue
        for name, lo, hi, mask in _bins(spec, values, member):
            if not mask.any():
                continue
            sel = frame.ranking[mask]
            body = counter.positive_row(sel) if kind == "positives" else counter.control_row(sel)
            head = {
                "stratum": name if kind == "positives" else f"controls:{name}",
                "kind": kind,
                "column": spec.column,
                "lo": lo,
                "hi": hi,
            }
            rows.append(head | body)
    return rows


def stratify(
    frame: ScoresFrame,
    specs: tuple[StratumSpec, ...] = DEFAULT_STRATA,
    fpr_targets: tuple[float, ...] = FPR_TARGETS,
    tpr_targets: tuple[float, ...] = TPR_TARGETS,
    ci_method: str = "wilson",
    confidence: float = 0.95,
    detectable: DetectableSpec | None = None,
) -> StratifiedResult:
    """Global operating points and per-stratum completeness / FPR with CIs.

    Args:
        frame: validated scores (see :func:`haloscope.evaluate.scores.load_scores`).
        specs: strata definitions; absent or all-null columns are skipped and listed.
        fpr_targets: FPR operating points (their thresholds are shared by all strata).
        tpr_targets: TPR operating points.
        ci_method: ``wilson`` or ``clopper-pearson``.
        confidence: two-sided CI level.
        detectable: the headline subset of lenses (at the same thresholds), or None.

    Returns:
        A :class:`StratifiedResult`; ``rows[0]`` is the ``ALL`` stratum, the detectable
        subset is in ``detectable`` (and first in the CSV).
    """
    points = operating_points(frame.labels, frame.ranking, fpr_targets, tpr_targets)
    counter = _Counter(frame, points)
    all_row = {"stratum": "ALL", "kind": "positives", "column": None, "lo": None, "hi": None}
    all_row |= counter.positive_row(frame.ranking[frame.labels == 1])
    all_row["fpr_obs@fpr"] = counter.control_row(counter.neg_sorted)["fpr_obs@fpr"]
    rows, skipped = [all_row], {}
    for spec in specs:
        rows.extend(_spec_rows(counter, spec, skipped))
    subset, det_row = None, None
    if detectable is not None:
        subset = detectable_mask(frame, detectable)
        if subset.mask is not None and subset.mask.any():
            det_row = {
                "stratum": "detectable",
                "kind": "positives",
                "column": detectable.text,
                "lo": None,
                "hi": None,
            } | counter.positive_row(frame.ranking[subset.mask])
    _fill_intervals(rows + ([det_row] if det_row else []), ci_method, confidence)
    for column, reason in skipped.items():
        logger.info("strata %s skipped: %s", column, reason)
    block = subset_block(subset, all_row["P"], det_row)
    if det_row is not None:  # the demo's headline: the subset's lenses against all controls
        keep = (frame.labels == 0) | subset.mask
        block["auroc"] = auroc(frame.labels[keep], frame.ranking[keep])
    if block["status"] == "not evaluated":
        logger.info("detectable subset not evaluated: %s", block["reason"])
    return StratifiedResult(
        points, rows, skipped, block, ci_method, confidence, tuple(fpr_targets), tuple(tpr_targets)
    )


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if value == INF else ("-inf" if value == -INF else f"{value:.6g}")
    return str(value)


def csv_columns(result: StratifiedResult) -> list[str]:
    """CSV header: the seed's columns first, then the CI / count / control-FPR extras.

    Seed columns: ``stratum,n,P,N,FPR@TPR0.99,thr@TPR0.99,...,TPR@FPR1e-05,thr@FPR1e-05``.
    """
    tprs = [f"{t:.2f}" for t in result.tpr_targets]
    fprs = [f"{f:g}" for f in result.fpr_targets]
    cols = ["stratum", "n", "P", "N"]
    cols += [c for t in tprs for c in (f"FPR@TPR{t}", f"thr@TPR{t}")]
    cols += [c for f in fprs for c in (f"TPR@FPR{f}", f"thr@FPR{f}")]
    for t in tprs:
        cols += [f"FPR@TPR{t}_{s}" for s in ("k", "ci_low", "ci_high")]
    for f in fprs:
        cols += [f"TPR@FPR{f}_{s}" for s in ("k", "ci_low", "ci_high")]
    for f in fprs:
        cols += [f"FPRobs@FPR{f}"] + [f"FPRobs@FPR{f}_{s}" for s in ("k", "n", "ci_low", "ci_high")]
    return cols + ["kind", "column", "lo", "hi"]


def _thr(entry: dict[str, Any]) -> float:
    return INF if entry["threshold"] is None else entry["threshold"]


def _csv_row(row: dict[str, Any], result: StratifiedResult) -> dict[str, str]:
    out: dict[str, Any] = {
        k: row[k] for k in ("stratum", "n", "P", "N", "kind", "column", "lo", "hi")
    }
    for entry in row.get("fpr@tpr", []):
        name = f"FPR@TPR{entry['target']:.2f}"
        out |= {name: entry["value"], f"thr@TPR{entry['target']:.2f}": _thr(entry)}
        out |= {f"{name}_{s}": entry[s] for s in ("k", "ci_low", "ci_high")}
    for entry in row.get("tpr@fpr", []):
        name = f"TPR@FPR{entry['target']:g}"
        out |= {name: entry["value"], f"thr@FPR{entry['target']:g}": _thr(entry)}
        out |= {f"{name}_{s}": entry[s] for s in ("k", "ci_low", "ci_high")}
    for entry in row.get("fpr_obs@fpr", []):
        name = f"FPRobs@FPR{entry['target']:g}"
        out |= {name: entry["value"]} | {
            f"{name}_{s}": entry[s] for s in ("k", "n", "ci_low", "ci_high")
        }
    return {k: _fmt(v) for k, v in out.items()}


def write_stratified_csv(result: StratifiedResult, path: str | Path) -> Path:
    """Write the stratified table as CSV (``%.6g`` values, ``inf`` = nothing passes).

    Thresholds (``thr@...``) are in score units; a sample passes when ``score >= thr``.
    Empty cells mean "not defined for this stratum kind" (e.g. TPR of a control stratum).
    The first row is the detectable subset (stratum ``detectable``, its definition in
    ``column``) when there is one, then ``ALL``.

    Args:
        result: output of :func:`stratify`.
        path: destination CSV (parent folders are created; written atomically).

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns(result), restval="")
        writer.writeheader()
        head = [result.detectable] if result.detectable["status"] == "ok" else []
        for row in head + result.rows:
            writer.writerow(_csv_row(row, result))
    return path
