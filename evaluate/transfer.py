"""Transfer check: completeness of one lens set at the operating thresholds of another.

A model's thresholds are set on the controls of its own test split (the *reference*, e.g.
the mock survey's test scores). Scoring a second set (the *target*, e.g. lenses and
confusers drawn by the independent renderer of ``haloscope transfer-sets``) at those same
thresholds says whether what the model learned carries over:

- per arc-SNR and theta_E/PSF bin: completeness of the target's lenses over completeness of
  the reference's lenses in the same bin (the *transfer ratio*; 1 = no loss);
- per control kind: the share of the target's controls passing each threshold next to the
  reference's controls of the same kind (confusers of another generator should not pass
  much more often than the mock's own).

Both tables must rank the same quantity (``logit`` or ``score``) from the same model.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from haloscope.atomic import atomic_open
from haloscope.errors import DataError
from haloscope.evaluate.intervals import binomial_interval
from haloscope.evaluate.metrics import tpr_at_fpr
from haloscope.evaluate.scores import ScoresFrame
from haloscope.evaluate.stratify import StratumSpec, column_values

__all__ = ["SNR_EDGES", "RES_EDGES", "summary_line", "transfer_check", "write_transfer_csv"]

INF = math.inf
SNR_EDGES: tuple[float, ...] = (5, 10, 20, INF)
"""arc-SNR bins of the transfer ratio (the issue's bins >= 5)."""
RES_EDGES: tuple[float, ...] = (0.8, 1.0, 1.5, 2.0, INF)
"""theta_E / PSF bins of the transfer ratio (resolved lenses)."""


def _rate(passed: np.ndarray, method: str, confidence: float) -> dict[str, Any]:
    k, n = int(passed.sum()), int(passed.size)
    if not n:
        return {"k": 0, "n": 0, "rate": math.nan, "ci_lo": math.nan, "ci_hi": math.nan}
    lo, hi = binomial_interval(k, n, method, confidence)
    return {"k": k, "n": n, "rate": k / n, "ci_lo": float(lo), "ci_hi": float(hi)}


def _binned(values: np.ndarray | None, edges: tuple[float, ...]) -> list[tuple[str, np.ndarray]]:
    if values is None:
        return []
    v = values.astype(float)
    return [
        (f"[{lo:g}, {hi:g})", (v >= lo) & (v < hi))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]


def _compare(
    group: tuple[str, str, str],
    target: np.ndarray,
    reference: np.ndarray,
    thresholds: dict[float, float],
    method: str,
    confidence: float,
) -> list[dict[str, Any]]:
    """One row per threshold: the pass rates of two sets of ranked values and their ratio.

    Args:
        group: ``(kind, column, bin)`` naming the compared sets.
        target: ranked values (logit or score) of the target's members of the group.
        reference: the same for the reference.
        thresholds: ``fpr -> threshold`` on the ranked values.
        method: binomial interval method.
        confidence: interval confidence.
    """
    kind, column, name = group
    rows = []
    for fpr, thr in thresholds.items():
        t = _rate(target >= thr, method, confidence)
        r = _rate(reference >= thr, method, confidence)
        ratio = t["rate"] / r["rate"] if r["rate"] > 0 else math.nan
        rows.append(
            {
                "kind": kind,
                "column": column,
                "bin": name,
                "fpr": fpr,
                "threshold": thr,
                "target": t,
                "reference": r,
                "ratio": ratio,
            }
        )
    return rows


Group = tuple[tuple[str, str, str], np.ndarray, np.ndarray]
"""``((kind, column, bin), target mask, reference mask)``: two sets to compare."""


def _lens_groups(target: ScoresFrame, reference: ScoresFrame) -> Iterator[Group]:
    """The lenses of each arc-SNR and theta_E/PSF bin present in both tables."""
    for column, edges in (("arc_snr", SNR_EDGES), ("theta_over_psf", RES_EDGES)):
        spec = StratumSpec(column, column)
        t_bins = dict(_binned(column_values(target, spec), edges))
        r_bins = dict(_binned(column_values(reference, spec), edges))
        for name in t_bins if t_bins and r_bins else ():
            yield (
                ("lenses", column, name),
                t_bins[name] & (target.labels == 1),
                r_bins[name] & (reference.labels == 1),
            )


def _kind_groups(target: ScoresFrame, reference: ScoresFrame) -> Iterator[Group]:
    """The controls of each ``control_kind`` of the target ("all" without that column)."""

    def kinds(frame: ScoresFrame) -> np.ndarray:
        col = frame.columns.get("control_kind")
        if col is None:
            return np.full(frame.num_rows, "all", dtype=object)
        return np.array([k or "ordinary" for k in col.tolist()], dtype=object)

    t_kind, r_kind = kinds(target), kinds(reference)
    for kind in sorted(set(t_kind[target.labels == 0].tolist())):
        yield (
            ("controls", "control_kind", kind),
            (target.labels == 0) & (t_kind == kind),
            (reference.labels == 0) & (r_kind == kind),
        )


def transfer_check(
    target: ScoresFrame,
    reference: ScoresFrame,
    fpr_targets: tuple[float, ...] = (1e-4, 1e-3),
    method: str = "wilson",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Completeness and control pass rates of ``target`` at ``reference``'s thresholds.

    Returns:
        ``{"reference", "rank_by", "thresholds": {fpr: t}, "rows": [...]}``; each row holds
        the bin, the threshold, ``target`` and ``reference`` rates (k, n, rate, CI) and
        their ``ratio``.

    Raises:
        DataError: the tables rank different quantities, or the reference has no lenses or
            no controls.
    """
    if target.rank_by != reference.rank_by:
        raise DataError(
            f"{target.source} ranks by {target.rank_by} but {reference.source} by "
            f"{reference.rank_by}; pass --rank-by score (or logit) so both rank the same"
        )
    num_pos = int(reference.labels.sum())
    if num_pos == 0 or num_pos == reference.num_rows:
        raise DataError(f"{reference.source}: the reference needs lenses and controls")
    thresholds = {
        f: tpr_at_fpr(reference.labels, reference.ranking, f).threshold for f in fpr_targets
    }
    rows = []
    for group, t_mask, r_mask in [
        *_lens_groups(target, reference),
        *_kind_groups(target, reference),
    ]:
        t, r = target.ranking[t_mask], reference.ranking[r_mask]
        rows += _compare(group, t, r, thresholds, method, confidence)
    return {
        "reference": reference.source,
        "rank_by": target.rank_by,
        "thresholds": {f"{f:g}": t for f, t in thresholds.items()},
        "rows": rows,
    }


def write_transfer_csv(check: dict[str, Any], path: str | Path) -> Path:
    """One line per (kind, column, bin, fpr): both rates with CIs and the ratio."""
    fields = ["kind", "column", "bin", "fpr", "threshold"]
    fields += [
        f"{side}_{k}"
        for side in ("target", "reference")
        for k in ("k", "n", "rate", "ci_lo", "ci_hi")
    ]
    fields.append("ratio")
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in check["rows"]:
            flat = {k: row[k] for k in ("kind", "column", "bin", "fpr", "threshold", "ratio")}
            for side in ("target", "reference"):
                flat |= {f"{side}_{k}": v for k, v in row[side].items()}
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in flat.items()})
    return Path(path)


def summary_line(check: dict[str, Any], fpr: float = 1e-3) -> str:
    """The arc-SNR transfer ratios at ``fpr``, one line (for the CLI)."""
    parts = [
        f"{r['bin']}: {r['ratio']:.2f}"
        for r in check["rows"]
        if r["kind"] == "lenses" and r["column"] == "arc_snr" and r["fpr"] == fpr
    ]
    return f"transfer ratio at FPR {fpr:g} by arc SNR " + (", ".join(parts) or "(no bins)")
