"""``haloscope eval``: stratified metrics with confidence intervals, JSON and a report."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haloscope.argparse_util import VerbParser, parse_csv
from haloscope.atomic import atomic_write_text, check_writable
from haloscope.errors import ConfigError, DataError
from haloscope.evaluate.compare import compare_frames
from haloscope.evaluate.curves import completeness_curves
from haloscope.evaluate.detectable import DEFAULT_DETECTABLE, DetectableSpec, parse_detectable
from haloscope.evaluate.intervals import CI_METHODS, auroc_interval
from haloscope.evaluate.metrics import FPR_TARGETS, TPR_TARGETS, auroc
from haloscope.evaluate.scores import RANK_BY, ScoresFrame, load_scores
from haloscope.evaluate.stratify import DEFAULT_STRATA, StratumSpec, stratify, write_stratified_csv
from haloscope.log import setup_logging

if TYPE_CHECKING:
    from haloscope.evaluate.gallery import StampStore

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in parse_csv(text))
    except ValueError as exc:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise ConfigError(f"{flag}: empty list")
    return values


def build_parser() -> VerbParser:
    """The ``eval`` argument parser (every flag shows its default in --help)."""
    p = VerbParser(
        "eval",
        "ROC with exact ties, TPR at FPR and FPR at TPR with thresholds and binomial\n"
        "confidence intervals, first on a pre-registered detectable subset of the lenses\n"
        "(--detectable), then on all injections; completeness curves; strata (theta_E, theta_E/PSF, psfsize_r, psfdepth_r, arc SNR,\n"
        "source magnitude, control kind) at thresholds set on all controls. Writes the\n"
        "stratified CSV (the seed's column names + CI columns), a JSON with everything, and\n"
        "with --report-dir an HTML (and Markdown) report with PNG plots, galleries and the\n"
        "training curves of the run. Labels from 'label', 'y_true' or 'is_control'.",
    )
    p.add_argument(
        "--scores", required=True, metavar="SCORES.parquet", help="scores table (infer output)"
    )
    p.add_argument(
        "--out-csv", required=True, metavar="STRAT.csv", help="stratified table to write"
    )
    p.add_argument("--out-json", default=None, metavar="JSON",
                   help="full results JSON (default: --out-csv with .json)")  # fmt: skip
    p.add_argument(
        "--report-dir", default=None, metavar="DIR", help="write report.html/.md and PNGs here"
    )
    p.add_argument("--stamps", default=None, metavar="ZARR",
                   help="stamps.zarr of the scored split, for galleries and the shortcut audit")  # fmt: skip
    p.add_argument("--ci", default="wilson", choices=CI_METHODS, help="binomial interval method")
    p.add_argument("--confidence", type=float, default=0.95, help="two-sided interval level")
    p.add_argument("--rank-by", default="auto", choices=RANK_BY,
                   help="value ranked: auto = logit when present (no fp32 sigmoid ties), else score")  # fmt: skip
    p.add_argument("--reference-scores", default=None, metavar="REF.parquet",
                   help="transfer check: completeness of --scores per arc-SNR and theta_E/PSF bin, "
                   "and control pass rates per kind, at the FPR thresholds set on this table's "
                   "controls (e.g. the mock test), as ratios to it; writes <out-csv>_transfer.csv")  # fmt: skip
    p.add_argument("--compare", nargs="*", default=[], metavar="OTHER.parquet",
                   help="scores of other models on the same rows; the first is the baseline of Δ")  # fmt: skip
    p.add_argument("--detectable", default=DEFAULT_DETECTABLE, metavar="SPEC",
                   help="the headline's lens subset: COLUMN OP NUMBER joined by commas (OP >= > "
                   "<= <; theta_over_psf = theta_e_arcsec/psfsize_r, the original's proxy), "
                   "thresholds from all controls; 'none' turns it off")  # fmt: skip
    p.add_argument(
        "--fpr-targets",
        default=",".join(f"{t:g}" for t in FPR_TARGETS),
        help="FPR operating points",
    )
    p.add_argument(
        "--tpr-targets",
        default=",".join(f"{t:g}" for t in TPR_TARGETS),
        help="TPR operating points",
    )
    p.add_argument(
        "--theta-bins", default="0,0.5,0.75,1,1.25,1.5,2,3,inf", help="theta_E bin edges [arcsec]"
    )
    p.add_argument("--res-bins", default="0,0.4,0.6,0.8,1,1.5,2,inf", help="theta_E/PSF bin edges")
    return p


def _specs(args: Any) -> tuple[StratumSpec, ...]:
    edges = {"theta_e_arcsec": _floats(args.theta_bins, "--theta-bins"),
             "theta_over_psf": _floats(args.res_bins, "--res-bins")}  # fmt: skip
    for flag, values in (
        ("--theta-bins", edges["theta_e_arcsec"]),
        ("--res-bins", edges["theta_over_psf"]),
    ):
        if len(values) < 2 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ConfigError(f"{flag}: need at least 2 increasing edges, got {values}")
    return tuple(
        replace(s, edges=edges[s.column]) if s.column in edges else s for s in DEFAULT_STRATA
    )


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
    from haloscope.evaluate.gallery import open_stamp_store

    try:
        return open_stamp_store(path), None
    except DataError as exc:
        reason = str(exc).replace("\n", " ")
        logger.warning("%s; writing the report without galleries and shortcut audit", reason)
        return None, f"the --stamps store could not be read ({reason})"


def _transfer_csv(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + "_transfer.csv")


def _check_outputs(args: Any) -> tuple[Path, Path]:
    """The CSV and JSON paths, after checking that every output can be written (nothing is
    computed or created before that, so a read-only folder costs nothing)."""
    out_csv = Path(args.out_csv)
    out_json = Path(args.out_json) if args.out_json else out_csv.with_suffix(".json")
    for path in (out_csv, out_json) + ((out_csv.with_name(out_csv.stem + "_compare.csv"),)
                                       if args.compare else ()):  # fmt: skip
        check_writable(path)
    if args.reference_scores:
        check_writable(_transfer_csv(out_csv))
    if args.report_dir:
        check_writable(args.report_dir, folder=True)
    return out_csv, out_json


def _summary_line(result: Any, auc: float) -> str:
    """The printed line: the detectable headline first, then all injections."""

    def points(row: dict[str, Any]) -> str:
        tpr = [f"TPR@FPR{e['target']:g}={e['value']:.4g}" for e in row["tpr@fpr"]
               if e["target"] in (1e-4, 1e-3)]  # fmt: skip
        fpr = [f"FPR@TPR{e['target']:.2f}={e['value']:.4g}" for e in row["fpr@tpr"]
               if round(e["target"], 6) in (0.5, 0.9)]  # fmt: skip
        return " ".join(tpr + fpr)

    det = result.detectable
    if det["status"] == "ok":
        head = (f"detectable ({det['spec']}: {det['num_lenses']}/{det['num_all_lenses']} "
                f"lenses) {points(det)}")  # fmt: skip
    else:
        head = f"detectable subset not evaluated ({det['reason']})"
    return f"{head} | all injections: AUROC={auc:.5f} {points(result.rows[0])}"


def main(argv: list[str]) -> int:
    """Run ``haloscope eval``; user errors raise ``HaloscopeError`` (one line, exit 2).

    Outputs are written after everything is computed, each file atomically: the report
    first (staged, then moved in), then the CSVs, then the JSON.
    """
    args = build_parser().parse_args(argv)
    setup_logging()
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}")
    specs = _specs(args)
    detectable: DetectableSpec | None = parse_detectable(args.detectable)
    fpr_targets, tpr_targets = (
        _floats(args.fpr_targets, "--fpr-targets"),
        _floats(args.tpr_targets, "--tpr-targets"),
    )
    out_csv, out_json = _check_outputs(args)
    frame = load_scores(args.scores, args.rank_by)
    others: dict[str, ScoresFrame] = {}
    for other in (load_scores(p, args.rank_by) for p in args.compare):
        _add_unique(others, other, reserved=_model_name(frame))
    store, stamps_note = _open_stamps(args.stamps)
    result = stratify(frame, specs, fpr_targets, tpr_targets, args.ci, args.confidence,
                      detectable)  # fmt: skip
    curves = completeness_curves(frame, method=args.ci, confidence=args.confidence)
    auc = auroc(frame.labels, frame.ranking)
    doc: dict[str, Any] = {"scores": str(args.scores), "label_column": frame.label_column,
                           "rank_by": frame.rank_by, "num_rows": frame.num_rows, "auroc": auc,
                           "auroc_ci": list(auroc_interval(auc, result.rows[0]["P"], result.rows[0]["N"],
                                                           args.confidence))}  # fmt: skip
    doc |= result.to_dict() | {"completeness_curves": curves}
    comparison, compare_csv = None, out_csv.with_name(out_csv.stem + "_compare.csv")
    if others:
        comparison = compare_frames({**others, _model_name(frame): frame}, args.ci, args.confidence,
                                    detectable=detectable)  # fmt: skip
        doc["comparison"] = comparison.rows
    transfer = None
    if args.reference_scores:
        from haloscope.evaluate.transfer import transfer_check

        reference = load_scores(args.reference_scores, frame.rank_by)
        transfer = transfer_check(frame, reference, (1e-4, 1e-3), args.ci, args.confidence)
        doc["transfer"] = transfer
    if args.report_dir:
        from haloscope.evaluate.report import build_report

        files = {"stratified CSV": out_csv.name, "full results JSON": out_json.name}
        if comparison is not None:
            files["comparison CSV"] = compare_csv.name
        doc["report"] = build_report(frame, result, args.report_dir, files, store, comparison,
                                     others, stamps_note, curves)  # fmt: skip
    write_stratified_csv(result, out_csv)
    if comparison is not None:
        comparison.to_csv(compare_csv)
    if transfer is not None:
        from haloscope.evaluate.transfer import summary_line, write_transfer_csv

        write_transfer_csv(transfer, _transfer_csv(out_csv))
        print(f"eval: {summary_line(transfer)} -> {_transfer_csv(out_csv)}")
    _write_json(out_json, doc)
    print(f"eval: {_summary_line(result, auc)} -> {out_csv}, {out_json}"
          + (f", {Path(args.report_dir) / 'report.html'}" if args.report_dir else ""))  # fmt: skip
    return 0
