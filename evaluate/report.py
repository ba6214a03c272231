"""The evaluation report: Markdown + HTML with PNG plots, galleries and the shortcut audit.

The report is built as a list of blocks (heading, paragraph, table, image) rendered twice,
to ``report.md`` and ``report.html``, so the two always say the same thing.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from haloscope.evaluate import plots
from haloscope.evaluate.audit import shortcut_audit
from haloscope.evaluate.compare import Comparison
from haloscope.evaluate.gallery import StampStore
from haloscope.evaluate.intervals import auroc_interval
from haloscope.evaluate.metrics import auroc
from haloscope.evaluate.scores import ScoresFrame
from haloscope.evaluate.stratify import StratifiedResult

__all__ = ["GALLERY_SIZE", "build_report"]

logger = logging.getLogger(__name__)
GALLERY_SIZE = 12
Block = tuple[str, Any]


def _ci(entry: dict[str, Any]) -> str:
    return f"{entry['value']:.4g} [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}] ({entry['k']}/{entry['n']})"


def _thr(value: float | None) -> str:
    return "inf (nothing passes)" if value is None else f"{value:.6g}"


def _summary(frame: ScoresFrame, result: StratifiedResult, files: dict[str, str]) -> list[Block]:
    all_row = result.rows[0]
    auc = auroc(frame.labels, frame.ranking)
    lo, hi = auroc_interval(auc, all_row["P"], all_row["N"], result.confidence)
    lines = [f"- AUROC: {auc:.5f} [{lo:.5f}, {hi:.5f}] (Hanley-McNeil)"]
    for entry in all_row["tpr@fpr"]:
        if entry["target"] in (1e-4, 1e-3):
            allowed = int(entry["target"] * all_row["N"] * (1 + 1e-9))
            lines.append(f"- TPR@FPR{entry['target']:g}: {_ci(entry)}, threshold {_thr(entry['threshold'])}, "
                         f"{allowed} false positive(s) allowed")  # fmt: skip
    for entry in all_row["fpr@tpr"]:
        if abs(entry["target"] - 0.9) < 1e-12:
            lines.append(f"- FPR@TPR0.90: {_ci(entry)}, threshold {_thr(entry['threshold'])}")
    counts = f"{frame.num_rows} rows: {all_row['P']} lenses, {all_row['N']} controls"
    level = f"{result.confidence:.0%} {result.ci_method}"
    files = files | {"this report (same content)": "report.md, report.html",
                     "plots and galleries (this folder)": "*.png"}  # fmt: skip
    where = "\n".join(f"- {k}: `{v}`" for k, v in files.items())
    return [
        ("h1", "haloscope evaluation report"),
        ("p", f"Scores: `{frame.source}` ({counts}); ranked by `{frame.rank_by}`. A sample passes a "
              f"threshold t when score >= t; thresholds come from all controls; intervals are {level}."),
        ("h2", "Key numbers"), ("p", "\n".join(lines)),
        ("h2", "Files"), ("p", where),
    ]  # fmt: skip


def _operating_table(result: StratifiedResult) -> list[Block]:
    row = result.rows[0]
    body = [[f"TPR@FPR{e['target']:g}", _ci(e), _thr(e["threshold"])] for e in row["tpr@fpr"]]
    body += [[f"FPR@TPR{e['target']:.2f}", _ci(e), _thr(e["threshold"])] for e in row["fpr@tpr"]]
    note = ("An FPR target below 1/controls allows no false positive: it is the completeness "
            "before the first false positive (TPR0).")  # fmt: skip
    return [("h2", "Operating points"), ("table", (["metric", "value [CI] (k/n)", "threshold"], body)),
            ("p", note)]  # fmt: skip


def _strata_tables(result: StratifiedResult, targets: tuple[float, ...]) -> list[Block]:
    pos = [r for r in result.rows if r["kind"] == "positives"]
    heads = ["stratum", "lenses"] + [f"TPR@FPR{t:g}" for t in targets]
    body = [[r["stratum"], str(r["P"])] + [_ci(e) for e in r["tpr@fpr"] if e["target"] in targets]
            for r in pos]  # fmt: skip
    blocks: list[Block] = [("h2", "Completeness by stratum"), ("table", (heads, body))]
    ctl = [r for r in result.rows if r["kind"] == "controls"]
    if ctl:
        heads = ["stratum", "controls"] + [f"FPR at the FPR{t:g} threshold" for t in targets]
        body = [[r["stratum"], str(r["N"])] + [_ci(e) for e in r["fpr_obs@fpr"] if e["target"] in targets]
                for r in ctl]  # fmt: skip
        blocks += [("h2", "False-positive rate by control stratum"), ("table", (heads, body))]
    if result.skipped:
        skipped = "; ".join(f"{k}: {v}" for k, v in result.skipped.items())
        blocks.append(("p", f"Strata skipped: {skipped}."))
    return blocks


def _plots(frame: ScoresFrame, result: StratifiedResult, out: Path, others: Mapping[str, ScoresFrame],
           targets: tuple[float, ...]) -> list[Block]:  # fmt: skip
    blocks: list[Block] = [("h2", "Plots")]
    plots.plot_roc({"this model": frame, **others}, result.fpr_targets, out / "roc.png")
    blocks.append(("img", ("roc.png", "ROC on a log-FPR axis (exact ties, step function)")))
    for column, label in (("theta_over_psf", "theta_E / PSF FWHM"), ("theta_e_arcsec", "theta_E [arcsec]"),
                          ("arc_snr", "arc SNR")):  # fmt: skip
        name = f"completeness_{column}.png"
        if plots.plot_completeness(result.rows, column, targets, out / name, label):
            blocks.append(("img", (name, f"completeness vs {label}")))
        else:
            blocks.append(
                ("p", f"No completeness plot vs {label}: column `{column}` absent or empty.")
            )
    plots.plot_score_hist(frame, out / "score_hist.png")
    blocks.append(("img", ("score_hist.png", f"{frame.rank_by} per class, log counts")))
    return blocks


def _caption(frame: ScoresFrame, i: int) -> str:
    tid = str(frame.columns["task_id"][i])
    parts = [tid if len(tid) <= 14 else tid[:12] + "..", f"{frame.rank_by}={frame.ranking[i]:.3g}"]
    for column, fmt in (
        ("control_kind", "{}"),
        ("theta_e_arcsec", "θE={:.2f}"),
        ("arc_snr", "snr={:.1f}"),
    ):
        value = frame.columns.get(column, [None] * (i + 1))[i]
        if value is not None and value == value:  # skips None and NaN
            parts.append(fmt.format(value))
    return "\n".join([parts[0], " ".join(parts[1:])])


def _gallery(frame: ScoresFrame, store: StampStore | None, out: Path) -> list[Block]:
    blocks: list[Block] = [("h2", "Galleries")]
    if store is None or "task_id" not in frame.columns:
        why = "no --stamps store was given" if store is None else "the scores have no task_id"
        return blocks + [("p", f"No galleries: {why}.")]
    ids = frame.columns["task_id"]
    for cls, order, fname, title in (
        (0, -1, "gallery_top_controls.png", "highest-scoring controls"),
        (1, 1, "gallery_missed_lenses.png", "missed lenses (lowest-scoring positives)"),
    ):
        idx = np.flatnonzero(frame.labels == cls)
        idx = idx[np.argsort(order * frame.ranking[idx], kind="stable")]
        rows, found = store.rows_for(ids[idx].tolist())
        idx = idx[found][:GALLERY_SIZE]
        if idx.size == 0:
            blocks.append(("p", f"No {title}: none of their task_ids is in the store."))
            continue
        caps = [_caption(frame, int(i)) for i in idx]
        plots.plot_gallery(store.read(rows[:GALLERY_SIZE]), caps, out / fname, title)
        blocks.append(("img", (fname, f"{title} (bands z,r,g as RGB)")))
    return blocks


def _audit(audit: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [("h2", "Shortcut audit: central pixels only")]
    if audit["status"] != "ok":
        return blocks + [("p", f"Skipped: {audit['note']}.")]
    lo, hi = audit["auroc_ci"]
    return blocks + [("p", (
        f"A logistic regression on {len(audit['features'])} central-aperture fluxes (per band: "
        f"disc r<4 px and ring 4-8 px), fitted on {audit['num_fit']} stamps, reaches AUROC "
        f"**{audit['auroc']:.3f}** [{lo:.3f}, {hi:.3f}] on {audit['num_eval']} held-out stamps. "
        f"0.5 means no information in the core. Interpretation: {audit['note']}."))]  # fmt: skip


def _render_md(blocks: list[Block]) -> str:
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + body)
        elif kind == "p":
            out.append(body)
        elif kind == "img":
            out.append(f"![{body[1]}]({body[0]})\n\n*{body[1]}* (`{body[0]}`)")
        elif kind == "table":
            heads, rows = body
            lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            out.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]))
        elif kind == "md":
            out.append(body)
    return "\n\n".join(out) + "\n"


def _render_html(blocks: list[Block]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>haloscope report</title>",
           "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:"
           "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"]  # fmt: skip
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(body)}</{kind}>")
        elif kind in ("p", "md"):
            out.append("<pre>" + html.escape(body) + "</pre>" if kind == "md" else
                       "<p>" + html.escape(body).replace("\n", "<br>") + "</p>")  # fmt: skip
        elif kind == "img":
            out.append(f"<figure><img src='{html.escape(body[0])}'><figcaption>"
                       f"{html.escape(body[1])}</figcaption></figure>")  # fmt: skip
        elif kind == "table":
            heads, rows = body
            out.append(
                "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
            )
            out += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
            ]
            out.append("</table>")
    return "\n".join(out + ["</body></html>"]) + "\n"


def build_report(
    frame: ScoresFrame,
    result: StratifiedResult,
    report_dir: str | Path,
    files: dict[str, str],
    store: StampStore | None = None,
    comparison: Comparison | None = None,
    others: Mapping[str, ScoresFrame] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNGs into ``report_dir``.

    Args:
        frame: the evaluated scores.
        result: output of :func:`haloscope.evaluate.stratify.stratify`.
        report_dir: output folder (created).
        files: label -> file name of the other outputs (CSV, JSON), listed in the report.
        store: stamps for galleries and the shortcut audit, or None (noted in the report).
        comparison: optional side-by-side table of other models on the same test set.
        others: their scores, drawn on the ROC plot.

    Returns:
        ``{"report_md", "report_html", "pngs", "shortcut_audit"}``.
    """
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = tuple(t for t in result.fpr_targets if t in (1e-4, 1e-3)) or result.fpr_targets[:2]
    audit = shortcut_audit(frame, store)
    blocks = _summary(frame, result, files) + _operating_table(result)
    if comparison is not None:
        blocks += [("h2", "Comparison on the same test set"), ("md", comparison.to_markdown())]
    blocks += _plots(frame, result, out, others or {}, targets) + _strata_tables(result, targets)
    blocks += _gallery(frame, store, out) + _audit(audit)
    (out / "report.md").write_text(_render_md(blocks))
    (out / "report.html").write_text(_render_html(blocks))
    pngs = sorted(p.name for p in out.glob("*.png"))
    logger.info("report written to %s (%d plots)", out / "report.md", len(pngs))
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "pngs": pngs, "shortcut_audit": audit}  # fmt: skip
