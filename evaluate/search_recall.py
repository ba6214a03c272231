"""Recall of planted lenses among the top N of a search (``haloscope simulate --survey`` truth).

A search ranks every cutout of a survey; on a mock survey the truth says which were planted
lenses, so the search can be scored the way people use it: of the planted lenses, how many
are among the N best-ranked candidates (recall at N), how many of the top N are lenses
(precision at N), and how many a random ranking would put there (``N * lenses / candidates``).
Recall is given over every planted lens (a lens the search rejected, e.g. ``cutout_ok = 0``,
counts as missed) and over the eval's detectable subset (``evaluate.detectable``, default
``arc_snr>=5,theta_over_psf>=0.8``), where a finder is expected to work.

Run as ``python -m haloscope.evaluate.search_recall --candidates OUT/candidates.parquet
--truth SURVEY/truth.parquet --top-n 50,100``; it prints one line per N and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from haloscope.atomic import atomic_write_text
from haloscope.errors import ConfigError, DataError, HaloscopeError
from haloscope.evaluate.detectable import DEFAULT_DETECTABLE, detectable_mask, parse_detectable
from haloscope.evaluate.scores import ScoresFrame

__all__ = ["read_table", "search_recall", "format_recall", "main"]

_CANDIDATE_COLUMNS = ("id", "rank")
_TRUTH_COLUMNS = ("id", "is_lens")


def read_table(path: str | Path, needed: Sequence[str], role: str) -> pa.Table:
    """A parquet (file or folder) or CSV table holding ``needed`` columns, ids as strings.

    Raises:
        DataError: unreadable, a needed column missing, or an id repeated (named).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path)
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--{role} {path}: cannot read it ({exc})") from exc
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(f"--{role} {path}: missing column(s) {missing}")
    table = table.set_column(
        table.schema.get_field_index("id"), "id", table["id"].cast(pa.string())
    )
    repeated = [i for i, n in Counter(table["id"].to_pylist()).items() if n > 1]
    if repeated:
        raise DataError(
            f"--{role} {path}: {len(repeated)} id(s) appear more than once, e.g. {repeated[0]!r}"
        )
    return table


def _truth_frame(truth: pa.Table) -> ScoresFrame:
    """The truth as the eval's frame, so the detectable subset is the eval's own rule."""
    columns = {}
    for name in truth.column_names:
        values = truth[name].to_numpy(zero_copy_only=False)
        columns[name] = values.astype(np.float64) if values.dtype.kind in "iuf" else values
    labels = np.asarray(truth["is_lens"].to_numpy(zero_copy_only=False), np.int8)
    return ScoresFrame(
        source="truth",
        columns=columns,
        labels=labels,
        ranking=np.zeros(len(labels)),
        rank_by="score",
    )


def search_recall(
    candidates: pa.Table,
    truth: pa.Table,
    top_n: Sequence[int],
    detectable: str = DEFAULT_DETECTABLE,
) -> dict:
    """Recall and precision of the planted lenses among the top N candidates.

    Args:
        candidates: the search's table (``id``, ``rank``; rank 1 is the best).
        truth: the survey's truth (``id``, ``is_lens`` and the detectable definition's columns).
        top_n: the N to report.
        detectable: an ``--detectable`` definition (``none``: all lenses only).

    Returns:
        ``{"candidates", "lenses", "lenses_scored", "detectable": {...} | None,
        "top": [{"n", "lenses", "recall", "precision", "random", "detectable", ...}]}``.

    Raises:
        DataError: a candidate id is not in the truth (another survey's truth?).
    """
    truth_ids = truth["id"].to_pylist()
    index = {i: k for k, i in enumerate(truth_ids)}
    cand_ids = candidates["id"].to_pylist()
    unknown = [i for i in cand_ids if i not in index]
    if unknown:
        raise DataError(
            f"{len(unknown)} candidate id(s) are not in the truth, e.g. "
            f"{unknown[:3]}; is it the truth of the searched survey?"
        )
    rank = np.full(len(truth_ids), np.inf)
    rows = np.fromiter((index[i] for i in cand_ids), np.int64, len(cand_ids))
    rank[rows] = np.asarray(candidates["rank"].to_numpy(zero_copy_only=False), np.float64)
    frame = _truth_frame(truth)
    lens = frame.labels == 1
    spec = parse_detectable(detectable)
    subset = detectable_mask(frame, spec) if spec is not None else None
    det = subset.mask if subset is not None and subset.mask is not None else None
    result = {
        "candidates": len(cand_ids),
        "lenses": int(lens.sum()),
        "lenses_scored": int((lens & np.isfinite(rank)).sum()),
        "detectable": None
        if det is None
        else {"definition": spec.text, "describe": spec.describe(), "lenses": int(det.sum())},
        "top": [],
    }
    for n in sorted(set(int(n) for n in top_n)):
        found = lens & (rank <= n)
        shown = min(n, len(cand_ids))
        entry = {
            "n": n,
            "lenses": int(found.sum()),
            "recall": float(found.sum() / max(lens.sum(), 1)),
            "precision": float(found.sum() / max(shown, 1)),
            "random": float(shown * lens.sum() / max(len(cand_ids), 1)),
        }
        if det is not None:
            entry["detectable_lenses"] = int((found & det).sum())
            entry["detectable_recall"] = float((found & det).sum() / max(det.sum(), 1))
        result["top"].append(entry)
    return result


def format_recall(result: dict) -> list[str]:
    """Lines for people: the survey's lenses, then one line per N."""
    det = result["detectable"]
    head = (
        f"planted lenses: {result['lenses']} in the survey, {result['lenses_scored']} of them "
        f"among the {result['candidates']} ranked candidates (the others rejected)"
    )
    if det is not None:
        head += f"; detectable ({det['describe']}): {det['lenses']}"
    lines = [head]
    for e in result["top"]:
        line = (
            f"top {e['n']}: {e['lenses']} lenses, recall {e['recall']:.3f}, precision "
            f"{e['precision']:.3f} (a random ranking: {e['random']:.1f} lenses)"
        )
        if "detectable_recall" in e:
            line += (
                f"; detectable recall {e['detectable_recall']:.3f} "
                f"({e['detectable_lenses']}/{det['lenses']})"
            )
        lines.append(line)
    return lines


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m haloscope.evaluate.search_recall",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--candidates",
        required=True,
        help="the search's candidates.parquet (or a CSV with id, rank)",
    )
    parser.add_argument("--truth", required=True, help="the survey's truth.parquet")
    parser.add_argument("--top-n", default="50,100", help="comma-separated N to report")
    parser.add_argument(
        "--detectable",
        default=DEFAULT_DETECTABLE,
        help="detectable subset, as `haloscope eval --detectable` ('none': off)",
    )
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the recall lines and the JSON; returns the exit status (2: bad input)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        try:
            top_n = [int(v) for v in args.top_n.split(",")]
        except ValueError:
            msg = f"--top-n: expected integers joined by commas, got {args.top_n!r}"
            raise ConfigError(msg) from None
        if min(top_n) < 1:
            raise ConfigError(f"--top-n: every N must be >= 1, got {args.top_n!r}")
        candidates = read_table(args.candidates, _CANDIDATE_COLUMNS, "candidates")
        truth = read_table(args.truth, _TRUTH_COLUMNS, "truth")
        result = search_recall(candidates, truth, top_n, args.detectable)
    except HaloscopeError as exc:
        print(f"search_recall: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_recall(result)))
    text = json.dumps(result)
    print(text)
    if args.json is not None:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
