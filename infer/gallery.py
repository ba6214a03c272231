"""The candidates page of a search: the top N stamps as a gallery to grade by eye.

``write_gallery`` writes ``OUT/candidates.html`` and one PNG per tile under ``OUT/gallery/``.
Each tile shows the candidate's colour composite (``infer/composite.py``, as in the eval
report), rank, score, logit, ra/dec and a Legacy Survey viewer link, with grade buttons
(:data:`GRADES`). The page needs no network (inline CSS and script, no CDN); images load
lazily, so a page of thousands of tiles opens at once. Grades are kept in the browser's
local storage (per page) and the "Export grades CSV" button downloads ``id,grade`` rows of the
graded tiles, which :func:`read_grades` reads back.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import jinja2
import numpy as np
import pyarrow as pa

from haloscope.atomic import atomic_write_bytes, atomic_write_text
from haloscope.errors import DataError
from haloscope.infer.composite import raw_stamp_rgb, rgb_png_bytes, stamp_rgb
from haloscope.infer.gallery_page import CSS, PAGE, SCRIPT

__all__ = [
    "GRADES",
    "GRADE_HELP",
    "GALLERY_COLUMNS",
    "PAGE_NAME",
    "IMAGE_DIR",
    "viewer_url",
    "write_gallery",
    "read_grades",
]

logger = logging.getLogger(__name__)

GRADES: tuple[str, ...] = ("A", "B", "C", "not_lens")
"""Visual grades, as written in the exported CSV."""
GRADE_HELP: dict[str, str] = {
    "A": "definite lens",
    "B": "probable lens",
    "C": "possible lens",
    "not_lens": "not a lens",
}
_GRADE_KEYS = {"A": "a", "B": "b", "C": "c", "not_lens": "n"}  # keyboard shortcut per grade
GALLERY_COLUMNS: tuple[str, ...] = ("id", "ra", "dec", "logit", "score", "rank")
"""Columns ``write_gallery`` needs in the candidates table."""
PAGE_NAME = "candidates.html"
IMAGE_DIR = "gallery"
_RGB_BATCH = 256  # stamps normalised per call (bounded memory for any N)


def viewer_url(ra: float, dec: float) -> str:
    """The Legacy Survey DR10 sky viewer centred on (ra, dec), degrees."""
    return f"https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=16"


def _check_inputs(candidates: pa.Table, stamps: np.ndarray, top_n: int) -> int:
    """Number of tiles to show; raises ValueError on a table or stamps it cannot show."""
    missing = [c for c in GALLERY_COLUMNS if c not in candidates.column_names]
    if missing:
        raise ValueError(f"write_gallery: candidates lack column(s) {missing}")
    if stamps.ndim != 4 or stamps.shape[1] != 3:
        raise ValueError(f"write_gallery: stamps must be (N, 3, H, W) g/r/z, got {stamps.shape}")
    if top_n < 1:
        raise ValueError(f"write_gallery: top_n must be >= 1, got {top_n}")
    if len(stamps) > len(candidates):
        raise ValueError(
            f"write_gallery: {len(stamps)} stamps for {len(candidates)} candidate rows"
        )
    num = min(len(stamps), top_n)
    ranks = np.asarray(candidates["rank"].slice(0, num).to_numpy(zero_copy_only=False))
    if num > 1 and (np.diff(ranks) < 0).any():
        raise ValueError("write_gallery: candidates must be sorted by rank")
    return num


def _write_images(
    stamps: np.ndarray, ranks: list[int], image_dir: Path, normalised: bool
) -> list[str]:
    """One PNG per stamp, named by rank; returns the page-relative sources."""
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"rank_{rank:07d}.png" for rank in ranks]
    for start in range(0, len(names), _RGB_BATCH):
        batch = stamps[start : start + _RGB_BATCH]
        if normalised:
            rgb = [stamp_rgb(np.nan_to_num(np.asarray(s, np.float32))) for s in batch]
        else:
            rgb = raw_stamp_rgb(batch)
        for name, image in zip(names[start : start + _RGB_BATCH], rgb, strict=True):
            atomic_write_bytes(image_dir / name, rgb_png_bytes(image))
    keep = set(names)
    for stale in image_dir.glob("rank_*.png"):  # tiles of an earlier, longer page
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return [f"{IMAGE_DIR}/{name}" for name in names]


def _tiles(candidates: pa.Table, sources: list[str]) -> list[dict]:
    rows = candidates.select(list(GALLERY_COLUMNS)).slice(0, len(sources)).to_pylist()
    tiles = []
    for row, src in zip(rows, sources, strict=True):
        ra, dec = row["ra"], row["dec"]
        has_sky = ra is not None and dec is not None and np.isfinite([ra, dec]).all()
        tiles.append(
            {
                "id": str(row["id"]),
                "rank": int(row["rank"]),
                "src": src,
                "score": f"{float(row['score']):.5g}",
                "logit": f"{float(row['logit']):.4g}",
                "sky": f"ra {ra:.5f}, dec {dec:+.5f}" if has_sky else "ra/dec unknown",
                "url": viewer_url(float(ra), float(dec)) if has_sky else None,
            }
        )
    return tiles


def write_gallery(
    candidates: pa.Table, stamps: np.ndarray, out_dir: Path, top_n: int, *, normalised: bool = False
) -> Path:
    """Write ``out_dir/candidates.html``: the first ``min(len(stamps), top_n)`` candidates.

    Args:
        candidates: rows sorted by rank with at least :data:`GALLERY_COLUMNS` (id string).
        stamps: (N, 3, H, W) float32 raw nanomaggies, bands g, r, z, of the first N rows
            of ``candidates`` (NaN pixels are shown black).
        out_dir: folder of the page; PNGs go to ``out_dir/gallery/`` (stale ones removed).
        top_n: the most tiles to show.
        normalised: the stamps are already in sky-sigma units (shards hold only those), so
            they are drawn as they are instead of normalised first.

    Returns:
        The page's path (written atomically, after its images).

    Raises:
        ValueError: missing columns, stamps of the wrong shape, more stamps than rows, or
            rows not sorted by rank.
    """
    stamps = np.asarray(stamps)
    num = _check_inputs(candidates, stamps, top_n)
    out_dir = Path(out_dir)
    ranks = [int(r) for r in candidates["rank"].slice(0, num).to_pylist()]
    sources = _write_images(stamps[:num], ranks, out_dir / IMAGE_DIR, normalised)
    tiles = _tiles(candidates, sources)
    # grades are stored per page: the same ids in the same order find their grades again
    key = hashlib.sha256("\n".join(t["id"] for t in tiles).encode()).hexdigest()[:16]
    html = _render(tiles, key, num_candidates=len(candidates))
    page = atomic_write_text(out_dir / PAGE_NAME, html)
    logger.info("wrote %s (%d tiles of %d candidates)", page, num, len(candidates))
    return page


def _render(tiles: list[dict], key: str, num_candidates: int) -> str:
    env = jinja2.Environment(
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    grades = [{"value": g, "help": GRADE_HELP[g], "key": _GRADE_KEYS[g]} for g in GRADES]
    return env.from_string(PAGE).render(
        tiles=tiles,
        grades=grades,
        storage_key=key,
        num_candidates=num_candidates,
        css=CSS,
        script=SCRIPT,
    )


def _grade_of(value: str, line: int, path: Path) -> str:
    """The canonical spelling of a grade (case and surrounding blanks ignored)."""
    canonical = {g.lower(): g for g in GRADES}
    grade = canonical.get(value.strip().lower())
    if grade is None:
        raise DataError(f"{path}:{line}: grade {value!r} is not one of {', '.join(GRADES)}")
    return grade


def read_grades(path: str | Path) -> pa.Table:
    """Read a grades CSV (``id,grade`` rows, as the page exports them).

    Other columns are allowed and ignored (so search's ``top<N>.csv`` with its ``grade``
    column filled in reads too); rows with an empty grade are ungraded and skipped, as are
    blank lines. Ids are kept exactly as written.

    Args:
        path: the CSV file.

    Returns:
        Table with columns ``id`` (string) and ``grade`` (string, one of :data:`GRADES`),
        in file order, graded rows only.

    Raises:
        DataError: unreadable file, no ``id`` or ``grade`` column, an empty id, an unknown
            grade or an id graded twice (each naming the line).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"grades CSV {path}: cannot read it ({exc})") from exc
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in ("id", "grade") if c not in header]
    if missing:
        raise DataError(
            f"grades CSV {path}: missing column(s) {', '.join(missing)} "
            f"in the header {header}; expected id,grade"
        )
    id_col, grade_col = header.index("id"), header.index("grade")
    ids, grades, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, grade_col):
            raise DataError(f"{path}:{line}: {len(row)} field(s), header has {len(header)}")
        ident = row[id_col]
        if not ident.strip():
            raise DataError(f"{path}:{line}: empty id")
        if ident in seen:
            raise DataError(
                f"{path}:{line}: id {ident!r} is graded twice (also line {seen[ident]})"
            )
        seen[ident] = line
        if row[grade_col].strip():
            ids.append(ident)
            grades.append(_grade_of(row[grade_col], line, path))
    return pa.table({"id": pa.array(ids, pa.string()), "grade": pa.array(grades, pa.string())})
