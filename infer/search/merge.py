"""The outputs of ``haloscope search``, made on rank 0 from the part files once all exist.

- ``candidates.parquet``: one row per scored cutout, sorted by rank: ``id`` (string), ``ra``,
  ``dec``, ``logit`` (the ensemble's mean fp32 logit), ``score`` (``sigmoid(logit)``, fp32),
  ``logit_<k>`` (model k of ``--ckpt``), ``rank`` (1 = most lens-like; ties in logit broken by
  id), and ``grade`` when ``--grades`` is given.
- ``top<N>.csv``: its first N rows, with an empty ``grade`` column to fill in.
- ``rejects.parquet``: ``id``, ``reason`` of every cutout not scored, including a repeated id
  (``duplicate_id``: the first row in input order is scored, later ones rejected).
- ``summary.json``: counts, rejects by reason, cutouts/s, checkpoints, settings.
- ``candidates.html``: the gallery (``infer.gallery.write_gallery``) of the top N, with the
  raw stamps re-read from the input by chunk and row after ranking (shards hold only
  normalised stamps: the gallery draws those as they are, ``normalised=True``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from haloscope.atomic import atomic_path, atomic_write_text
from haloscope.errors import DataError
from haloscope.infer.gallery import read_grades, write_gallery
from haloscope.infer.predict import sigmoid32
from haloscope.infer.search.engine import done_chunks
from haloscope.infer.search.inputs import Chunk, SearchInput

__all__ = ["read_parts", "split_rows", "rank_candidates", "join_grades", "write_outputs"]

log = logging.getLogger(__name__)


def read_parts(parts_dir: Path, chunks: list[Chunk]) -> pa.Table:
    """Every chunk's part, in chunk order, with a ``chunk`` column.

    Raises:
        DataError: a chunk has no part (a rank failed): re-running the command finishes it.
    """
    done = done_chunks(parts_dir)
    missing = [c.index for c in chunks if c.index not in done]
    if missing:
        raise DataError(
            f"{parts_dir}: {len(missing)} chunk(s) unscored (first {missing[:5]}); "
            "a rank failed: re-run the same command to finish them"
        )
    tables = []
    for c in chunks:
        t = pq.read_table(done[c.index])
        tables.append(t.append_column("chunk", pa.array(np.full(t.num_rows, c.index, np.int64))))
    return pa.concat_tables(tables)


def split_rows(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``(scored rows, rejects (id, reason))``; a repeated id's later rows are rejected."""
    ok = pc.is_null(rows.column("reason")).to_numpy(zero_copy_only=False)
    ids = rows.column("id").to_numpy(zero_copy_only=False)
    seen: set[str] = set()
    dup = np.zeros(rows.num_rows, dtype=bool)
    for i in np.flatnonzero(ok):
        if ids[i] in seen:
            dup[i] = True
        seen.add(ids[i])
    reasons = rows.column("reason").to_pylist()
    for i in np.flatnonzero(dup):
        reasons[i] = "duplicate_id"
    bad = ~ok | dup
    rejects = pa.table(
        {
            "id": rows.column("id").filter(pa.array(bad)),
            "reason": pa.array([r for r, b in zip(reasons, bad, strict=True) if b], pa.string()),
        }
    )
    return rows.filter(pa.array(ok & ~dup)), rejects


def rank_candidates(scored: pa.Table, num_models: int) -> tuple[pa.Table, pa.Table]:
    """``(candidates, their chunk/pos)``: sorted by logit (descending), then id."""
    order = pc.sort_indices(scored, sort_keys=[("logit", "descending"), ("id", "ascending")])
    t = scored.take(order)
    logit = t.column("logit").to_numpy()
    cols = {
        "id": t.column("id"),
        "ra": t.column("ra"),
        "dec": t.column("dec"),
        "logit": t.column("logit"),
        "score": pa.array(sigmoid32(logit)),
        **{f"logit_{k}": t.column(f"logit_{k}") for k in range(num_models)},
        "rank": pa.array(np.arange(1, t.num_rows + 1, dtype=np.int64)),
    }
    return pa.table(cols), t.select(["chunk", "pos"])


def join_grades(candidates: pa.Table, path: str) -> pa.Table:
    """``candidates`` with a ``grade`` column (null where ungraded) from a graded CSV."""
    grades = read_grades(path)
    lookup = {}
    for i, g in zip(
        grades.column("id").to_pylist(), grades.column("grade").to_pylist(), strict=True
    ):
        if g not in (None, ""):
            lookup[str(i)] = str(g)
    ids = candidates.column("id").to_pylist()
    unknown = len(set(lookup) - set(ids))
    if unknown:
        log.warning("--grades %s: %d graded id(s) are not among the candidates", path, unknown)
    return candidates.append_column("grade", pa.array([lookup.get(i) for i in ids], pa.string()))


def _write_csv(table: pa.Table, path: Path) -> None:
    if "grade" not in table.schema.names:
        table = table.append_column("grade", pa.array([""] * table.num_rows, pa.string()))
    with atomic_path(path) as tmp:
        pcsv.write_csv(table, tmp)


def _gallery(
    candidates: pa.Table,
    where: pa.Table,
    source: SearchInput,
    chunks: list[Chunk],
    out: Path,
    top_n: int,
) -> Path:
    n = min(top_n, candidates.num_rows)
    chunk_of = where.column("chunk").to_numpy()[:n]
    pos = where.column("pos").to_numpy()[:n]
    stamps = np.zeros((n, 3, 64, 64), np.float32)
    for c in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == c)
        stamps[sel] = source.raw_stamps(chunks[int(c)], pos[sel])
    # shards hold normalised stamps only: drawn as they are, not normalised a second time
    return write_gallery(candidates, stamps, out, top_n, normalised=source.kind == "shards")


def write_outputs(
    out: Path,
    source: SearchInput,
    chunks: list[Chunk],
    *,
    num_models: int,
    top_n: int,
    grades: str | None,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Merge the parts into every output file; returns the summary written.

    Raises:
        DataError: a chunk has no part.
        ContractError: unreadable --grades file.
    """
    rows = read_parts(out / "parts", chunks)
    scored, rejects = split_rows(rows)
    if source.extra_rejects is not None:  # rows an unlabelled shard conversion refused
        rejects = pa.concat_tables(
            [source.extra_rejects.select(["id", "reason"]).cast(rejects.schema), rejects]
        )
    candidates, where = rank_candidates(scored, num_models)
    if grades is not None:
        candidates = join_grades(candidates, grades)
    with atomic_path(out / "candidates.parquet") as tmp:
        pq.write_table(candidates, tmp)
    _write_csv(candidates.slice(0, top_n), out / f"top{top_n}.csv")
    with atomic_path(out / "rejects.parquet") as tmp:
        pq.write_table(rejects, tmp)
    by_reason = Counter(rejects.column("reason").to_pylist())
    extra = 0 if source.extra_rejects is None else source.extra_rejects.num_rows
    summary = {
        **summary,
        "rows": rows.num_rows + extra,
        "scored": candidates.num_rows,
        "rejected": rejects.num_rows,
        "rejected_by_reason": dict(sorted(by_reason.items())),
    }
    html = _gallery(candidates, where, source, chunks, out, top_n)
    summary["gallery"] = html.name
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
