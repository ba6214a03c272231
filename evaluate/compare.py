"""Side-by-side metrics of several models scored on the same test set (Gen3 vs Gen4).

``compare_generations({"gen3": "gen3/scores_test.parquet", "gen4": table})`` returns a
:class:`Comparison`: first tpr@fpr 1e-4 and 1e-3 and fpr@tpr 0.9 on the detectable subset
of the lenses (:mod:`haloscope.evaluate.detectable`, thresholds from all controls), then the
same and AUROC on all injections, each with its confidence interval, plus the change of each
model against the first one and whether the two intervals are disjoint (a difference larger
than the intervals). Each row names the column its labels came from (``label``, ``y_true`` or
the seed's ``is_control``).
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
from haloscope.evaluate.detectable import (
    DEFAULT_DETECTABLE,
    DetectableSpec,
    detectable_mask,
    parse_detectable,
)
from haloscope.evaluate.intervals import auroc_interval, binomial_interval
from haloscope.evaluate.metrics import auroc, fpr_at_tpr, tpr_at_fpr
from haloscope.evaluate.scores import ScoresFrame, load_scores, scores_from_table

__all__ = [
    "COMPARE_METRICS",
    "DETECTABLE_METRICS",
    "Comparison",
    "compare_frames",
    "compare_generations",
]

# (key, header): the metrics every comparison reports on all injections
COMPARE_METRICS: tuple[tuple[str, str], ...] = (
    ("tpr@fpr1e-4", "TPR@FPR1e-4"),
    ("tpr@fpr1e-3", "TPR@FPR1e-3"),
    ("fpr@tpr0.9", "FPR@TPR0.9"),
    ("auroc", "AUROC"),
)
# the same rates on the detectable subset (in row["detectable"]), reported first
DETECTABLE_METRICS: tuple[tuple[str, str], ...] = COMPARE_METRICS[:3]


@dataclass
class Comparison:
    """Metrics per model: ``rows[i] = {"model", "label_column", "num_pos", "num_neg", key: {...},
    "detectable": {"status", "reason", "num_pos", key: {...}}}``.

    Each metric entry holds ``value, ci_low, ci_high`` (and ``k, n, threshold`` for rates);
    rows after the first also hold ``delta`` and ``disjoint`` (intervals do not overlap)
    against the first model. ``detectable`` is the subset's definition (None when off).
    """

    rows: list[dict[str, Any]]
    ci_method: str
    confidence: float
    detectable: DetectableSpec | None = None

    def _has_subset(self) -> bool:
        return any(r["detectable"]["status"] == "ok" for r in self.rows)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """One row per metric (detectable subset first, then all injections), one column per
        model, values as ``v [lo, hi]`` (and the Δ against the first model)."""
        heads = ["metric"] + [r["model"] for r in self.rows]
        rows = []
        if self._has_subset():
            rows.append(["detectable lenses"] + [_count(r["detectable"]) for r in self.rows])
            rows += [
                [f"detectable {head}"] + [_cell(r["detectable"], key) for r in self.rows]
                for key, head in DETECTABLE_METRICS
            ]
        rows.append(["lenses (all)"] + [str(r["num_pos"]) for r in self.rows])
        rows.append(["controls"] + [str(r["num_neg"]) for r in self.rows])
        rows += [[head] + [_cell(r, key) for r in self.rows] for key, head in COMPARE_METRICS]
        return heads, rows

    def subset_note(self) -> str:
        """The detectable subset's definition, and the models it could not be evaluated for."""
        if self.detectable is None:
            return "Detectable subset: off."
        text = (
            f"Detectable subset: {self.detectable.describe()} ({self.detectable.text}), "
            "thresholds from all controls"
        )
        missing = [
            f"{r['model']}: {r['detectable']['reason']}"
            for r in self.rows
            if r["detectable"]["status"] != "ok"
        ]
        return text + (f"; not evaluated for {'; '.join(missing)}." if missing else ".")

    def note(self) -> str:
        """The subset, what the intervals are, what Δ is against, and where labels came from."""
        labels = ", ".join(f"{r['model']} from `{r['label_column']}`" for r in self.rows)
        return (
            f"{self.subset_note()} Intervals: {self.confidence:.0%} {self.ci_method} "
            "(binomial for rates, Hanley-McNeil for AUROC); Δ is against the first model; "
            f"labels: {labels}."
        )

    def to_markdown(self) -> str:
        """A Markdown table, one row per metric, then :meth:`note`."""
        heads, rows = self.table()
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines) + "\n\n" + self.note()

    def to_csv(self, path: str | Path) -> Path:
        """Write one CSV row per model (atomically): the detectable subset's
        ``detectable_<metric>`` columns first, then all injections' ``<metric>``, each with
        ``_ci_low, _ci_high, _delta, _disjoint``; then ``label_column`` and the subset's
        definition (or why it was not evaluated)."""
        path = Path(path)
        det = [(key, f"detectable_{head}") for key, head in DETECTABLE_METRICS]
        cols = ["model", "detectable_num_pos", "num_pos", "num_neg"]
        for _, head in det + list(COMPARE_METRICS):
            cols += [head, f"{head}_ci_low", f"{head}_ci_high", f"{head}_delta", f"{head}_disjoint"]
        cols += ["label_column", "detectable", "detectable_reason"]
        with atomic_open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=cols, restval="")
            writer.writeheader()
            for row in self.rows:
                sub = row["detectable"]
                out = {k: row[k] for k in ("model", "num_pos", "num_neg", "label_column")}
                out |= {
                    "detectable_num_pos": sub.get("num_pos", ""),
                    "detectable": self.detectable.text if self.detectable else "none",
                    "detectable_reason": sub["reason"] or "",
                }
                if sub["status"] == "ok":
                    out |= _csv_metrics(sub, det)
                writer.writerow(out | _csv_metrics(row, list(COMPARE_METRICS)))
        return path


def _count(sub: dict[str, Any]) -> str:
    return str(sub["num_pos"]) if sub["status"] == "ok" else f"n/a ({sub['reason']})"


def _cell(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "n/a"
    m = metrics[key]
    cell = f"{m['value']:.4g} [{m['ci_low']:.4g}, {m['ci_high']:.4g}]"
    if "delta" in m:
        cell += f" (Δ {m['delta']:+.4g}{', CIs disjoint' if m['disjoint'] else ''})"
    return cell


def _csv_metrics(metrics: dict[str, Any], keys: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, head in keys:
        m = metrics[key]
        out |= {
            head: f"{m['value']:.6g}",
            f"{head}_ci_low": f"{m['ci_low']:.6g}",
            f"{head}_ci_high": f"{m['ci_high']:.6g}",
        }
        if "delta" in m:
            out |= {f"{head}_delta": f"{m['delta']:.6g}", f"{head}_disjoint": m["disjoint"]}
    return out


def _rate_entry(
    k: int, n: int, threshold: float, frame: ScoresFrame, method: str, confidence: float
) -> dict[str, Any]:
    lo, hi = binomial_interval(k, n, method, confidence)
    thr = frame.to_score(threshold)
    return {
        "value": k / n,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "k": k,
        "n": n,
        "threshold": thr if math.isfinite(thr) else None,
    }


def _subset_metrics(
    frame: ScoresFrame, spec: DetectableSpec | None, method: str, confidence: float
) -> dict[str, Any]:
    """The detectable subset's rates; TPR thresholds and FPRs over all controls."""
    if spec is None:
        return {"status": "off", "reason": "--detectable none"}
    subset = detectable_mask(frame, spec)
    if subset.mask is None or not subset.mask.any():
        return {"status": "not evaluated", "reason": subset.reason or "no lens in the subset"}
    y, s, mask = frame.labels, frame.ranking, subset.mask
    num_in, num_neg = int(mask.sum()), int((y == 0).sum())
    row: dict[str, Any] = {"status": "ok", "reason": None, "num_pos": num_in}
    for key, target in (("tpr@fpr1e-4", 1e-4), ("tpr@fpr1e-3", 1e-3)):
        thr = tpr_at_fpr(y, s, target).threshold
        row[key] = _rate_entry(int((s[mask] >= thr).sum()), num_in, thr, frame, method, confidence)
    union = mask | (y == 0)
    p = fpr_at_tpr(y[union], s[union], 0.9)
    row["fpr@tpr0.9"] = _rate_entry(p.num_fp, num_neg, p.threshold, frame, method, confidence)
    return row


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


def _add_deltas(rows: list[dict[str, Any]], keys: tuple[tuple[str, str], ...]) -> None:
    base = rows[0]
    for row in rows[1:]:
        for key, _ in keys:
            if key not in row or key not in base:
                continue
            m, b = row[key], base[key]
            m["delta"] = m["value"] - b["value"]
            m["disjoint"] = bool(m["ci_low"] > b["ci_high"] or m["ci_high"] < b["ci_low"])


def compare_frames(
    frames: Mapping[str, ScoresFrame],
    ci_method: str = "wilson",
    confidence: float = 0.95,
    require_same_rows: bool = True,
    detectable: DetectableSpec | None = None,
) -> Comparison:
    """Compare validated scores frames (see :func:`compare_generations`)."""
    if not frames:
        raise DataError("compare needs at least one scores table")
    if require_same_rows:
        _check_same_rows(frames)
    rows = []
    for name, frame in frames.items():
        head = {"model": name, "label_column": frame.label_column}
        metrics = _model_metrics(frame, ci_method, confidence)
        subset = _subset_metrics(frame, detectable, ci_method, confidence)
        rows.append(head | {"detectable": subset} | metrics)
    _add_deltas(rows, COMPARE_METRICS)
    _add_deltas([r["detectable"] for r in rows], DETECTABLE_METRICS)
    return Comparison(rows, ci_method, confidence, detectable)


def compare_generations(
    tables: Mapping[str, pa.Table | str | Path],
    ci_method: str = "wilson",
    confidence: float = 0.95,
    rank_by: str = "auto",
    require_same_rows: bool = True,
    detectable: str = DEFAULT_DETECTABLE,
) -> Comparison:
    """Side-by-side tpr@fpr 1e-4 / 1e-3 and fpr@tpr 0.9 on the detectable subset, then the
    same and AUROC on all injections, with CIs, for several models.

    Args:
        tables: model name -> scores table or parquet path, baseline first (e.g. Gen3).
        ci_method: ``wilson`` or ``clopper-pearson``.
        confidence: two-sided CI level.
        rank_by: ``auto`` (logit when present), ``logit`` or ``score``.
        require_same_rows: refuse tables that are not the same test set (task_ids/labels).
        detectable: the subset's definition (``--detectable`` syntax; ``none`` = off).

    Returns:
        A :class:`Comparison` (``to_markdown()``, ``to_csv(path)``, ``rows``).

    Raises:
        DataError: unreadable/invalid tables or different test sets.
        ConfigError: an unreadable ``detectable`` definition.
    """
    spec = parse_detectable(detectable)
    frames = {}
    for name, table in tables.items():
        if isinstance(table, pa.Table):
            frames[name] = scores_from_table(table, f"<{name}>", rank_by)
        else:
            frames[name] = load_scores(table, rank_by)
    return compare_frames(frames, ci_method, confidence, require_same_rows, spec)
