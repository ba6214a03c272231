"""``haloscope eval``: stratified metrics with confidence intervals, JSON and a report."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from haloscope.argparse_util import ConfigCLI
from haloscope.atomic import atomic_write_text, check_writable
from haloscope.errors import ConfigError, DataError
from haloscope.evaluate.compare import compare_frames
from haloscope.evaluate.config import EvalConfig
from haloscope.evaluate.curves import completeness_curves
from haloscope.evaluate.gallery import StampStore, open_stamp_store
from haloscope.evaluate.intervals import auroc_interval
from haloscope.evaluate.metrics import auroc
from haloscope.evaluate.scores import ScoresFrame, load_scores
from haloscope.evaluate.stratify import stratify, write_stratified_csv
from haloscope.evaluate.transfer import summary_line, transfer_check, write_transfer_csv
from haloscope.log import setup_logging

__all__ = ["CLI", "main", "parse_config"]

logger = logging.getLogger(__name__)


_DESCRIPTION = """\
ROC with exact ties, TPR at FPR and FPR at TPR with thresholds and binomial
confidence intervals, first on a pre-registered detectable subset of the lenses
(--detectable), then on all injections; completeness curves; strata (theta_E, theta_E/PSF,
psfsize_r, psfdepth_r, arc SNR, source magnitude, control kind) at thresholds set on all
controls. Writes the stratified CSV (the seed's column names + CI columns), a JSON with
everything, and with --report-dir an HTML (and Markdown) report with PNG plots, galleries
and the training curves of the run. Labels from 'label', 'y_true' or 'is_control'."""

CLI = ConfigCLI("eval", EvalConfig, _DESCRIPTION)


def parse_config(argv: list[str]) -> EvalConfig:
    """The validated ``EvalConfig`` of a command line (defaults < --config < flags).

    Raises:
        ConfigError: an invalid flag, config key or value, naming it.
    """
    return CLI.parse(argv)


def _model_name(frame: ScoresFrame) -> str:
    models = frame.columns.get("model")
    names = sorted({m for m in models.tolist() if m}) if models is not None else []
    return names[0] if len(names) == 1 else Path(frame.source).stem


def _add_unique(frames: dict[str, ScoresFrame], frame: ScoresFrame, reserved: str) -> None:
    """Add ``frame`` under its model name, or ``name (file stem)`` when that is taken."""
    name = _model_name(frame)
    if name in frames or name == reserved:
        name = f"{name} ({Path(frame.source).stem})"
    if name in frames or name == reserved:
        raise ConfigError(f"--compare {frame.source}: model {name!r} is given twice")
    frames[name] = frame


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    atomic_write_text(path, json.dumps(clean(doc), indent=1, default=str))


def _open_stamps(path: str | None) -> tuple[StampStore | None, str | None]:
    """The stamps store, or None and why: an unreadable store costs one warning, not the run."""
    if path is None:
        return None, None
    try:
        return open_stamp_store(path), None
    except DataError as exc:
        reason = str(exc).replace("\n", " ")
        logger.warning("%s; writing the report without galleries and shortcut audit", reason)
        return None, f"the --stamps store could not be read ({reason})"


def _transfer_csv(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + "_transfer.csv")


def _check_outputs(args: EvalConfig) -> tuple[Path, Path]:
    """The CSV and JSON paths, after checking that every output can be written (nothing is
    computed or created before that, so a read-only folder costs nothing)."""
    out_csv, out_json = Path(args.out_csv), args.json_path()
    for path in (out_csv, out_json) + (
        (out_csv.with_name(out_csv.stem + "_compare.csv"),) if args.compare else ()
    ):
        check_writable(path)
    if args.reference_scores:
        check_writable(_transfer_csv(out_csv))
    if args.report_dir:
        check_writable(args.report_dir, folder=True)
    return out_csv, out_json


def _summary_line(result: Any, auc: float) -> str:
    """The printed line: the detectable headline first, then all injections."""

    def points(row: dict[str, Any]) -> str:
        tpr = [
            f"TPR@FPR{e['target']:g}={e['value']:.4g}"
            for e in row["tpr@fpr"]
            if e["target"] in (1e-4, 1e-3)
        ]
        fpr = [
            f"FPR@TPR{e['target']:.2f}={e['value']:.4g}"
            for e in row["fpr@tpr"]
            if round(e["target"], 6) in (0.5, 0.9)
        ]
        return " ".join(tpr + fpr)

    det = result.detectable
    if det["status"] == "ok":
        head = (
            f"detectable ({det['spec']}: {det['num_lenses']}/{det['num_all_lenses']} "
            f"lenses) {points(det)}"
        )
    else:
        head = f"detectable subset not evaluated ({det['reason']})"
    return f"{head} | all injections: AUROC={auc:.5f} {points(result.rows[0])}"


def _results_doc(
    args: EvalConfig, frame: ScoresFrame, result: Any, curves: dict[str, Any], auc: float
) -> dict[str, Any]:
    """The JSON document's metrics: AUROC with its interval, strata, the detectable block."""
    num_pos, num_neg = result.rows[0]["P"], result.rows[0]["N"]
    doc: dict[str, Any] = {
        "scores": str(args.scores),
        "label_column": frame.label_column,
        "rank_by": frame.rank_by,
        "num_rows": frame.num_rows,
        "auroc": auc,
        "auroc_ci": list(auroc_interval(auc, num_pos, num_neg, args.confidence)),
    }
    doc |= result.to_dict() | {"completeness_curves": curves}
    if "auroc" in doc["detectable"]:
        logger.info(
            "detectable subset (%s): AUROC %.4f against all controls",
            doc["detectable"]["definition"],
            doc["detectable"]["auroc"],
        )
    return doc


def main(argv: list[str]) -> int:
    """Run ``haloscope eval``; user errors raise ``HaloscopeError`` (one line, exit 2).

    Outputs are written after everything is computed, each file atomically: the report
    first (staged, then moved in), then the CSVs, then the JSON.
    """
    args = parse_config(argv)
    setup_logging()
    specs, detectable = args.strata(), args.detectable_spec()
    fpr_targets, tpr_targets = args.fpr_targets, args.tpr_targets
    out_csv, out_json = _check_outputs(args)
    frame = load_scores(args.scores, args.rank_by)
    others: dict[str, ScoresFrame] = {}
    for other in (load_scores(p, args.rank_by) for p in args.compare):
        _add_unique(others, other, reserved=_model_name(frame))
    store, stamps_note = _open_stamps(args.stamps)
    result = stratify(frame, specs, fpr_targets, tpr_targets, args.ci, args.confidence, detectable)
    curves = completeness_curves(frame, method=args.ci, confidence=args.confidence)
    auc = auroc(frame.labels, frame.ranking)
    doc = _results_doc(args, frame, result, curves, auc)
    comparison, compare_csv = None, out_csv.with_name(out_csv.stem + "_compare.csv")
    if others:
        comparison = compare_frames(
            {**others, _model_name(frame): frame}, args.ci, args.confidence, detectable=detectable
        )
        doc["comparison"] = comparison.rows
    transfer = None
    if args.reference_scores:
        reference = load_scores(args.reference_scores, frame.rank_by)
        transfer = transfer_check(frame, reference, (1e-4, 1e-3), args.ci, args.confidence)
        doc["transfer"] = transfer
    if args.report_dir:
        # NOTE: lazy: the report pulls in matplotlib (~0.5 s), needed only with --report-dir
        from haloscope.evaluate.report import build_report

        files = {"stratified CSV": out_csv.name, "full results JSON": out_json.name}
        if comparison is not None:
            files["comparison CSV"] = compare_csv.name
        doc["report"] = build_report(
            frame, result, args.report_dir, files, store, comparison, others, stamps_note, curves
        )
    write_stratified_csv(result, out_csv)
    if comparison is not None:
        comparison.to_csv(compare_csv)
    if transfer is not None:
        write_transfer_csv(transfer, _transfer_csv(out_csv))
        print(f"eval: {summary_line(transfer)} -> {_transfer_csv(out_csv)}")
    _write_json(out_json, doc)
    print(
        f"eval: {_summary_line(result, auc)} -> {out_csv}, {out_json}"
        + (f", {Path(args.report_dir) / 'report.html'}" if args.report_dir else "")
    )
    return 0
