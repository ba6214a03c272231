"""The evaluation report: Markdown + HTML with PNG plots, galleries and the shortcut audit.

The report is built as a list of blocks (heading, paragraph, list, table, image, gallery;
see :mod:`haloscope.evaluate.report_render`) rendered by Jinja2 templates to ``report.md``
and ``report.html``, so the two always say the same thing. Galleries are one small PNG per
stamp under ``gallery/``, each captioned with ra, dec, score and a Legacy Survey viewer
link. The whole folder is staged and moved in at the end
(:func:`haloscope.evaluate.outputs.staged_folder`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from haloscope.atomic import atomic_path, atomic_write_text
from haloscope.errors import DataError
from haloscope.evaluate import plots
from haloscope.evaluate.audit import shortcut_audit
from haloscope.evaluate.compare import Comparison
from haloscope.evaluate.gallery import StampStore
from haloscope.evaluate.intervals import auroc_interval
from haloscope.evaluate.metrics import auroc
from haloscope.evaluate.outputs import staged_folder
from haloscope.evaluate.report_render import Block, code, render_html, render_markdown, spans
from haloscope.evaluate.scores import ScoresFrame, describe_label_column
from haloscope.evaluate.stratify import StratifiedResult
from haloscope.infer.gallery import viewer_url  # the one viewer link (search gallery, report)

__all__ = ["GALLERY_SIZE", "build_report", "find_run_curves", "viewer_url"]

logger = logging.getLogger(__name__)
GALLERY_SIZE = 12
CURVES_NAME = "curves.png"  # written by the trainer next to best.pt / last.pt
# (file stem, class, order, title): highest-scoring controls, lowest-scoring lenses
GALLERIES = (
    ("top_controls", 0, -1, "Highest-scoring controls"),
    ("missed_lenses", 1, 1, "Missed lenses (lowest-scoring positives)"),
)


def _h(level: int, text: str) -> Block:
    return {"kind": f"h{level}", "text": text}


def _p(*parts: Any) -> Block:
    return {"kind": "p", "spans": spans(*parts)}


def _ci(entry: dict[str, Any]) -> str:
    return f"{entry['value']:.4g} [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}] ({entry['k']}/{entry['n']})"


def _thr(value: float | None) -> str:
    return "inf (nothing passes)" if value is None else f"{value:.6g}"


def _key_numbers(frame: ScoresFrame, result: StratifiedResult) -> list[list[dict]]:
    all_row = result.rows[0]
    auc = auroc(frame.labels, frame.ranking)
    lo, hi = auroc_interval(auc, all_row["P"], all_row["N"], result.confidence)
    items = [spans(f"AUROC: {auc:.5f} [{lo:.5f}, {hi:.5f}] (Hanley-McNeil)")]
    for entry in all_row["tpr@fpr"]:
        if entry["target"] in (1e-4, 1e-3):
            allowed = int(entry["target"] * all_row["N"] * (1 + 1e-9))
            items.append(
                spans(
                    f"TPR@FPR{entry['target']:g}: {_ci(entry)}, threshold "
                    f"{_thr(entry['threshold'])}, {allowed} false positive(s) allowed"
                )
            )
    for entry in all_row["fpr@tpr"]:
        if abs(entry["target"] - 0.9) < 1e-12:
            items.append(spans(f"FPR@TPR0.90: {_ci(entry)}, threshold {_thr(entry['threshold'])}"))
    return items


def _headline_entries(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """TPR@FPR 1e-4 and 1e-3, FPR@TPR 0.5 and 0.9 of a stratum row (those computed)."""
    out = [(f"TPR@FPR{e['target']:g}", e) for e in row["tpr@fpr"] if e["target"] in (1e-4, 1e-3)]
    return out + [
        (f"FPR@TPR{e['target']:.2f}", e)
        for e in row["fpr@tpr"]
        if round(e["target"], 6) in (0.5, 0.9)
    ]


def _detectable(result: StratifiedResult) -> list[Block]:
    block = result.detectable
    blocks = [_h(2, "Headline: detectable lenses")]
    if block["status"] == "off":
        return blocks + [_p("Off (", code("--detectable none"), "): all injections only.")]
    definition = _p(
        "Pre-registered subset: ",
        {"text": block["definition"], "style": "b"},
        " (",
        code(block["spec"]),
        "; theta_E/PSF here is ",
        code(block["theta_over_psf"]),
        "). Thresholds from all controls.",
    )
    if block["status"] != "ok":
        return blocks + [
            definition,
            _p(f"Not evaluated: {block['reason']}. The numbers below are on all injections only."),
        ]
    size = (
        f"{block['num_lenses']} of {block['num_all_lenses']} lenses "
        f"({block['share_of_lenses']:.1%}) are in the subset"
        + (f"; {block['num_undefined']} lacked a value" if block["num_undefined"] else "")
        + "."
    )
    items = []
    if "auroc" in block:
        lo, hi = auroc_interval(block["auroc"], block["P"], block["N"], result.confidence)
        items.append(
            spans(
                f"AUROC against all controls: {block['auroc']:.5f} [{lo:.5f}, "
                f"{hi:.5f}] (Hanley-McNeil)"
            )
        )
    for name, e in _headline_entries(block):
        allowed = (
            f", {int(e['target'] * block['N'] * (1 + 1e-9))} false positive(s) allowed"
            if name.startswith("TPR")
            else ""
        )
        items.append(spans(f"{name}: {_ci(e)}, threshold {_thr(e['threshold'])}{allowed}"))
    return blocks + [definition, _p(size), {"kind": "list", "items": items}]


def _summary(frame: ScoresFrame, result: StratifiedResult, files: dict[str, str]) -> list[Block]:
    all_row = result.rows[0]
    counts = f"{frame.num_rows} rows: {all_row['P']} lenses, {all_row['N']} controls"
    level = f"{result.confidence:.0%} {result.ci_method}"
    files = files | {
        "this report (same content)": "report.md, report.html",
        "plots (this folder) and galleries": "*.png, gallery/*.png",
    }
    return [
        _h(1, "haloscope evaluation report"),
        _p(
            "Scores: ",
            code(frame.source),
            f" ({counts}); labels from ",
            code(frame.label_column),
            f" ({describe_label_column(frame.label_column)}); ranked by ",
            code(frame.rank_by),
            ". A sample passes a threshold t when score >= t; thresholds come from all "
            f"controls; intervals are {level}.",
        ),
        *_detectable(result),
        _h(2, "All injections: key numbers"),
        {"kind": "list", "items": _key_numbers(frame, result)},
        _h(2, "Files"),
        {"kind": "list", "items": [spans(f"{k}: ", code(v)) for k, v in files.items()]},
    ]


def _table(heads: list[str], rows: list[list[str]]) -> Block:
    return {"kind": "table", "heads": heads, "rows": rows}


def _operating_table(result: StratifiedResult) -> list[Block]:
    row = result.rows[0]
    body = [[f"TPR@FPR{e['target']:g}", _ci(e), _thr(e["threshold"])] for e in row["tpr@fpr"]]
    body += [[f"FPR@TPR{e['target']:.2f}", _ci(e), _thr(e["threshold"])] for e in row["fpr@tpr"]]
    note = (
        "An FPR target below 1/controls allows no false positive: it is the completeness "
        "before the first false positive (TPR0)."
    )
    return [
        _h(2, "Operating points (all injections)"),
        _table(["metric", "value [CI] (k/n)", "threshold"], body),
        _p(note),
    ]


def _comparison(comparison: Comparison) -> list[Block]:
    heads, rows = comparison.table()
    labels: list[Any] = ["Labels: "]
    for i, row in enumerate(comparison.rows):
        labels += [", " if i else "", f"{row['model']} from ", code(row["label_column"])]
    note = (
        f"Intervals: {comparison.confidence:.0%} {comparison.ci_method} (binomial for rates, "
        "Hanley-McNeil for AUROC); Δ is against the first model. "
    )
    return [
        _h(2, "Comparison on the same test set"),
        _table(heads, rows),
        _p(comparison.subset_note(), " ", note, *labels, "."),
    ]


def _strata_tables(result: StratifiedResult, targets: tuple[float, ...]) -> list[Block]:
    pos = [r for r in result.rows if r["kind"] == "positives"]
    heads = ["stratum", "lenses"] + [f"TPR@FPR{t:g}" for t in targets]
    body = [
        [r["stratum"], str(r["P"])] + [_ci(e) for e in r["tpr@fpr"] if e["target"] in targets]
        for r in pos
    ]
    blocks: list[Block] = [_h(2, "Completeness by stratum"), _table(heads, body)]
    ctl = [r for r in result.rows if r["kind"] == "controls"]
    if ctl:
        heads = ["stratum", "controls"] + [f"FPR at the FPR{t:g} threshold" for t in targets]
        body = [
            [r["stratum"], str(r["N"])]
            + [_ci(e) for e in r["fpr_obs@fpr"] if e["target"] in targets]
            for r in ctl
        ]
        blocks += [_h(2, "False-positive rate by control stratum"), _table(heads, body)]
    if result.skipped:
        blocks.append(
            _p("Strata skipped: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()) + ".")
        )
    return blocks


def _img(src: str, caption: str) -> Block:
    return {"kind": "img", "src": src, "caption": caption}


def _curve_plots(curves: dict[str, Any] | None, out: Path) -> list[Block]:
    """Completeness curves with CI bands (:mod:`haloscope.evaluate.curves`)."""
    if curves is None:
        return []
    blocks: list[Block] = []
    for column, curve in curves["curves"].items():
        name = f"completeness_curve_{column}.png"
        plots.plot_completeness_curve(curve, curves["thresholds"], out / name)
        blocks.append(
            _img(
                name,
                f"completeness vs {curve['label']} at the FPR "
                f"{' and '.join(curve['fpr'])} thresholds, CI bands",
            )
        )
    for column, reason in curves["skipped"].items():
        blocks.append(_p("No completeness curve vs ", code(column), f": {reason}."))
    return blocks


def _plots(
    frame: ScoresFrame,
    result: StratifiedResult,
    out: Path,
    others: Mapping[str, ScoresFrame],
    targets: tuple[float, ...],
    curves: dict[str, Any] | None,
) -> list[Block]:
    blocks: list[Block] = [_h(2, "Plots")]
    plots.plot_roc({"this model": frame, **others}, result.fpr_targets, out / "roc.png")
    blocks.append(_img("roc.png", "ROC on a log-FPR axis (exact ties, step function)"))
    for column, label in (
        ("theta_over_psf", "theta_E / PSF FWHM"),
        ("theta_e_arcsec", "theta_E [arcsec]"),
        ("arc_snr", "arc SNR"),
    ):
        name = f"completeness_{column}.png"
        if plots.plot_completeness(result.rows, column, targets, out / name, label):
            blocks.append(_img(name, f"completeness vs {label}"))
        else:
            blocks.append(
                _p(f"No completeness plot vs {label}: column ", code(column), " absent or empty.")
            )
    blocks += _curve_plots(curves, out)
    plots.plot_score_hist(frame, out / "score_hist.png")
    blocks.append(_img("score_hist.png", f"{frame.rank_by} per class, log counts"))
    return blocks


def find_run_curves(frame: ScoresFrame) -> tuple[Path | None, Path | None]:
    """The run folder of the checkpoint that scored ``frame``, and its ``curves.png``.

    ``infer`` records the checkpoint path (as given on its command line) in the scores
    parquet metadata under ``checkpoint``. A relative path is tried against the current
    folder, then against the scores file's folder.

    Returns:
        ``(run folder, curves.png)``; ``(None, None)`` when the scores do not come from a
        run, ``(run folder, None)`` when the run has no curves.
    """
    recorded = frame.metadata.get("checkpoint")
    if not recorded:
        return None, None
    checkpoint = Path(recorded)
    tries = (
        [checkpoint]
        if checkpoint.is_absolute()
        else [checkpoint, Path(frame.source).parent / checkpoint]
    )
    for candidate in tries:
        if (candidate.parent / CURVES_NAME).is_file():
            return candidate.parent, (candidate.parent / CURVES_NAME).absolute()
    return checkpoint.parent, None


def _curves(frame: ScoresFrame, out: Path) -> tuple[list[Block], Path | None]:
    run, curves = find_run_curves(frame)
    if run is None:
        return [], None
    blocks = [_h(2, "Training")]
    if curves is None:
        return blocks + [
            _p(
                "No training curves: no ",
                code(CURVES_NAME),
                " next to the checkpoint ",
                code(frame.metadata["checkpoint"]),
                ".",
            )
        ], None
    with atomic_path(out / CURVES_NAME) as tmp:
        shutil.copyfile(curves, tmp)
    caption = (
        f"training curves of the run {run} (checkpoint {frame.metadata['checkpoint']}): "
        "train loss, learning rate, validation metrics and loader wait per epoch"
    )
    return blocks + [_img(CURVES_NAME, caption)], curves


def _caption(frame: ScoresFrame, i: int) -> tuple[list[str], str | None]:
    """Caption lines of stamp row ``i`` and its viewer URL (None without ra/dec)."""
    cols = frame.columns
    tid = str(cols["task_id"][i])
    lines = [tid if len(tid) <= 18 else tid[:16] + ".."]
    ra, dec = (cols.get(c, [None] * (i + 1))[i] for c in ("ra", "dec"))
    url = None
    if ra is not None and dec is not None and np.isfinite(ra) and np.isfinite(dec):
        lines.append(f"ra {ra:.6f}, dec {dec:.6f}")
        url = viewer_url(float(ra), float(dec))
    score = f"score {float(cols['score'][i]):.5g}"
    lines.append(score + (f", logit {frame.ranking[i]:.3g}" if frame.rank_by == "logit" else ""))
    extra = []
    for column, fmt in (
        ("control_kind", "{}"),
        ("theta_e_arcsec", 'θE {:.2f}"'),
        ("arc_snr", "SNR {:.1f}"),
    ):
        value = cols.get(column, [None] * (i + 1))[i]
        if value is not None and value == value:  # skips None and NaN
            extra.append(fmt.format(value))
    return lines + ([", ".join(extra)] if extra else []), url


def _pick(
    frame: ScoresFrame, store: StampStore, cls: int, order: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scores rows and stamps of the gallery: the first GALLERY_SIZE found in the store."""
    idx = np.flatnonzero(frame.labels == cls)
    idx = idx[np.argsort(order * frame.ranking[idx], kind="stable")]
    rows, found = store.rows_for(frame.columns["task_id"][idx].tolist())
    return idx[found][:GALLERY_SIZE], store.read(rows[:GALLERY_SIZE])


def _gallery(frame: ScoresFrame, picks: dict[str, tuple], out: Path) -> list[Block]:
    blocks: list[Block] = []
    for stem, _, _, title in GALLERIES:
        idx, stamps = picks[stem]
        blocks.append(_h(2, title))
        if idx.size == 0:
            blocks.append(_p("None: no task_id of this class is in the --stamps store."))
            continue
        items = []
        for j, (i, stamp) in enumerate(zip(idx.tolist(), stamps, strict=True)):
            src = f"gallery/{stem}_{j:02d}.png"
            plots.save_stamp_png(stamp, out / src)
            lines, url = _caption(frame, i)
            items.append({"src": src, "lines": lines, "url": url, "alt": f"{title}, #{j + 1}"})
        blocks += [
            _p("Bands z, r, g as R, G, B (asinh stretch); sorted by ", code(frame.rank_by), "."),
            {"kind": "gallery", "stamps": items},
        ]
    return blocks


def _audit(audit: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [_h(2, "Shortcut audit: central pixels only")]
    if audit["status"] != "ok":
        return blocks + [_p(f"Skipped: {audit['note']}.")]
    lo, hi = audit["auroc_ci"]
    return blocks + [
        _p(
            f"A logistic regression on {len(audit['features'])} central-aperture fluxes (per band: "
            f"disc r<4 px and ring 4-8 px), fitted on {audit['num_fit']} stamps, reaches AUROC ",
            {"text": f"{audit['auroc']:.3f}", "style": "b"},
            f" [{lo:.3f}, {hi:.3f}] on {audit['num_eval']} held-out stamps. 0.5 means no "
            f"information in the core. Interpretation: {audit['note']}.",
        )
    ]


def _read_stamps(
    frame: ScoresFrame, store: StampStore | None, stamps_note: str | None
) -> tuple[dict | None, dict, str]:
    """Gallery picks and the shortcut audit, or why there are no galleries.

    A store that opened but cannot be read (a corrupt chunk) costs one warning, not the
    report: galleries and audit are then skipped as without --stamps.
    """
    if stamps_note is None and (store is None or "task_id" not in frame.columns):
        why = "no --stamps store was given" if store is None else "the scores have no task_id"
        return None, shortcut_audit(frame, store), why
    if stamps_note is None:
        try:
            picks = {stem: _pick(frame, store, cls, order) for stem, cls, order, _ in GALLERIES}
            return picks, shortcut_audit(frame, store), ""
        except DataError as exc:
            reason = str(exc).replace("\n", " ")
            logger.warning("%s; writing the report without galleries", reason)
            stamps_note = f"the --stamps store could not be read ({reason})"
    return None, {"status": "skipped", "note": f"{stamps_note}, so no pixels to audit"}, stamps_note


def build_report(
    frame: ScoresFrame,
    result: StratifiedResult,
    report_dir: str | Path,
    files: dict[str, str],
    store: StampStore | None = None,
    comparison: Comparison | None = None,
    others: Mapping[str, ScoresFrame] | None = None,
    stamps_note: str | None = None,
    completeness: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html``, the PNGs and ``gallery/`` into ``report_dir``.

    Args:
        frame: the evaluated scores.
        result: output of :func:`haloscope.evaluate.stratify.stratify`.
        report_dir: output folder (created; files it holds and the report does not replace
            are kept).
        files: label -> file name of the other outputs (CSV, JSON), listed in the report.
        store: stamps for galleries and the shortcut audit, or None (noted in the report).
        comparison: optional side-by-side table of other models on the same test set.
        others: their scores, drawn on the ROC plot.
        stamps_note: why there is no store although --stamps was given (shown instead of
            the galleries).
        completeness: completeness curves
            (:func:`haloscope.evaluate.curves.completeness_curves`), drawn with CI bands.

    Returns:
        ``{"report_md", "report_html", "pngs", "shortcut_audit", "training_curves"}``.
    """
    out = Path(report_dir)
    targets = tuple(t for t in result.fpr_targets if t in (1e-4, 1e-3)) or result.fpr_targets[:2]
    picks, audit, why = _read_stamps(frame, store, stamps_note)
    with staged_folder(out) as stage:
        blocks = _summary(frame, result, files) + _operating_table(result)
        if comparison is not None:
            blocks += _comparison(comparison)
        curves_blocks, curves = _curves(frame, stage)
        blocks += curves_blocks + _plots(frame, result, stage, others or {}, targets, completeness)
        blocks += _strata_tables(result, targets)
        if picks is None:
            blocks += [_h(2, "Galleries"), _p(f"No galleries: {why}.")]
        else:
            blocks += _gallery(frame, picks, stage)
        blocks += _audit(audit)
        atomic_write_text(stage / "report.md", render_markdown(blocks))
        atomic_write_text(stage / "report.html", render_html(blocks, "haloscope evaluation report"))
        pngs = sorted(str(p.relative_to(stage)) for p in stage.rglob("*.png"))
    logger.info("report written to %s (%d PNGs)", out / "report.html", len(pngs))
    return {
        "report_md": str(out / "report.md"),
        "report_html": str(out / "report.html"),
        "pngs": pngs,
        "shortcut_audit": audit,
        "training_curves": None if curves is None else str(curves),
    }
