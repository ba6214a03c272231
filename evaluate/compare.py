"""Side-by-side metrics of several models scored on the same test set (Gen3 vs Gen4).

``compare_generations({"gen3": "gen3/scores_test.parquet", "gen4": table})`` returns a
:class:`Comparison` with AUROC, tpr@fpr 1e-4 and 1e-3, and fpr@tpr 0.9, each with its
confidence interval, plus the change of each model against the first one and whether the
two intervals are disjoint (a difference larger than the intervals). Each row names the
column its labels came from (``label``, ``y_true`` or the seed's ``is_control``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from haloscope.atomic import atomic_open
from haloscope.errors import DataError
from haloscope.evaluate.intervals import auroc_interval, binomial_interval
from haloscope.evaluate.metrics import auroc, fpr_at_tpr, tpr_at_fpr
from haloscope.evaluate.scores import ScoresFrame, load_scores, scores_from_table

__all__ = ["COMPARE_METRICS", "Comparison", "compare_frames", "compare_generations"]

# (key, header): the metrics every comparison reports
COMPARE_METRICS: tuple[tuple[str, str], ...] = (
    ("tpr@fpr1e-4", "TPR@FPR1e-4"),
    ("tpr@fpr1e-3", "TPR@FPR1e-3"),
    ("fpr@tpr0.9", "FPR@TPR0.9"),
    ("auroc", "AUROC"),
)


@dataclass
class Comparison:
    """Metrics per model: ``rows[i] = {"model", "label_column", "num_pos", "num_neg", key: {...}}``.

    Each metric entry holds ``value, ci_low, ci_high`` (and ``k, n, threshold`` for rates);
    rows after the first also hold ``delta`` and ``disjoint`` (intervals do not overlap)
    against the first model.
    """

    rows: list[dict[str, Any]]
    ci_method: str
    confidence: float

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and one row of cells per model, values as ``v [lo, hi]`` (and the Δ)."""
        heads = ["model", "lenses", "controls"] + [h for _, h in COMPARE_METRICS]
        rows = []
        for row in self.rows:
            cells = [row["model"], str(row["num_pos"]), str(row["num_neg"])]
            for key, _ in COMPARE_METRICS:
                m = row[key]
                cell = f"{m['value']:.4g} [{m['ci_low']:.4g}, {m['ci_high']:.4g}]"
                if "delta" in m:
                    cell += f" (Δ {m['delta']:+.4g}{', CIs disjoint' if m['disjoint'] else ''})"
                cells.append(cell)
            rows.append(cells)
        return heads, rows

    def note(self) -> str:
        """What the intervals are, what Δ is against, and where each model's labels came from."""
        labels = ", ".join(f"{r['model']} from `{r['label_column']}`" for r in self.rows)
        return (f"Intervals: {self.confidence:.0%} {self.ci_method} (binomial for rates, "
                f"Hanley-McNeil for AUROC); Δ is against the first model; labels: {labels}.")  # fmt: skip

    def to_markdown(self) -> str:
        """A Markdown table, one row per model, values as ``v [lo, hi]``, then :meth:`note`."""
        heads, rows = self.table()
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines) + "\n\n" + self.note()

    def to_csv(self, path: str | Path) -> Path:
        """Write one CSV row per model with ``<metric>, _ci_low, _ci_high, _delta`` columns
        (atomically), then ``label_column``."""
        path = Path(path)
        cols = ["model", "num_pos", "num_neg"]
        for _, head in COMPARE_METRICS:
            cols += [head, f"{head}_ci_low", f"{head}_ci_high", f"{head}_delta", f"{head}_disjoint"]
        cols.append("label_column")
        with atomic_open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=cols, restval="")
            writer.writeheader()
            for row in self.rows:
                out = {k: row[k] for k in ("model", "num_pos", "num_neg", "label_column")}
                for key, head in COMPARE_METRICS:
                    m = row[key]
                    out |= {head: f"{m['value']:.6g}", f"{head}_ci_low": f"{m['ci_low']:.6g}",
                            f"{head}_ci_high": f"{m['ci_high']:.6g}"}  # fmt: skip
                    if "delta" in m:
                        out |= {
                            f"{head}_delta": f"{m['delta']:.6g}",
                            f"{head}_disjoint": m["disjoint"],
                        }
                writer.writerow(out)
        return path


def _rate_entry(k: int, n: int, threshold: float, frame: ScoresFrame, method: str,
                confidence: float) -> dict[str, Any]:  # fmt: skip
    lo, hi = binomial_interval(k, n, method, confidence)
    thr = frame.to_score(threshold)
    return {"value": k / n, "ci_low": float(lo), "ci_high": float(hi), "k": k, "n": n,
            "threshold": thr if math.isfinite(thr) else None}  # fmt: skip


def _model_metrics(frame: ScoresFrame, method: str, confidence: float) -> dict[str, Any]:
    y, s = frame.labels, frame.ranking
    num_pos, num_neg = int(y.sum()), int((y == 0).sum())
    row: dict[str, Any] = {"num_pos": num_pos, "num_neg": num_neg}
    for key, target in (("tpr@fpr1e-4", 1e-4), ("tpr@fpr1e-3", 1e-3)):
        p = tpr_at_fpr(y, s, target)
        row[key] = _rate_entry(p.num_tp, num_pos, p.threshold, frame, method, confidence)
    p = fpr_at_tpr(y, s, 0.9)
    row["fpr@tpr0.9"] = _rate_entry(p.num_fp, num_neg, p.threshold, frame, method, confidence)
    auc = auroc(y, s)
    lo, hi = auroc_interval(auc, num_pos, num_neg, confidence)
    row["auroc"] = {"value": auc, "ci_low": lo, "ci_high": hi}
    return row


def _check_same_rows(frames: Mapping[str, ScoresFrame]) -> None:
    items = list(frames.items())
    name0, first = items[0]
    for name, frame in items[1:]:
        same = first.num_rows == frame.num_rows and first.labels.sum() == frame.labels.sum()
        if same and "task_id" in first.columns and "task_id" in frame.columns:
            a = dict(zip(first.columns["task_id"].tolist(), first.labels.tolist(), strict=True))
            b = dict(zip(frame.columns["task_id"].tolist(), frame.labels.tolist(), strict=True))
            same = a == b
        if not same:
            raise DataError(
                f"{frame.source} ({name}) and {first.source} ({name0}) are not the same test set "
                "(rows, labels or task_ids differ); score every model on the same split"
            )


def compare_frames(frames: Mapping[str, ScoresFrame], ci_method: str = "wilson",
                   confidence: float = 0.95, require_same_rows: bool = True) -> Comparison:  # fmt: skip
    """Compare validated scores frames (see :func:`compare_generations`)."""
    if not frames:
        raise DataError("compare needs at least one scores table")
    if require_same_rows:
        _check_same_rows(frames)
    rows = []
    for name, frame in frames.items():
        head = {"model": name, "label_column": frame.label_column}
        rows.append(head | _model_metrics(frame, ci_method, confidence))
    base = rows[0]
    for row in rows[1:]:
        for key, _ in COMPARE_METRICS:
            m, b = row[key], base[key]
            m["delta"] = m["value"] - b["value"]
            m["disjoint"] = bool(m["ci_low"] > b["ci_high"] or m["ci_high"] < b["ci_low"])
    return Comparison(rows, ci_method, confidence)


def compare_generations(
    tables: Mapping[str, pa.Table | str | Path],
    ci_method: str = "wilson",
    confidence: float = 0.95,
    rank_by: str = "auto",
    require_same_rows: bool = True,
) -> Comparison:
    """Side-by-side tpr@fpr 1e-4 / 1e-3, fpr@tpr 0.9 and AUROC with CIs for several models.

    Args:
        tables: model name -> scores table or parquet path, baseline first (e.g. Gen3).
        ci_method: ``wilson`` or ``clopper-pearson``.
        confidence: two-sided CI level.
        rank_by: ``auto`` (logit when present), ``logit`` or ``score``.
        require_same_rows: refuse tables that are not the same test set (task_ids/labels).

    Returns:
        A :class:`Comparison` (``to_markdown()``, ``to_csv(path)``, ``rows``).

    Raises:
        DataError: unreadable/invalid tables or different test sets.
    """
    frames = {}
    for name, table in tables.items():
        if isinstance(table, pa.Table):
            frames[name] = scores_from_table(table, f"<{name}>", rank_by)
        else:
            frames[name] = load_scores(table, rank_by)
    return compare_frames(frames, ci_method, confidence, require_same_rows)
