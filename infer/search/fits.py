"""Legacy Survey cutout FITS files as a ``haloscope search`` input.

A cutout as the survey's cutout service writes it (``fits-cutout?...&bands=grz``): one image
HDU (the first with data; ``.fits.fz`` tile-compressed files work too) of shape (3, H, W), the
planes g, r, z in nanomaggies at 0.262"/px, the band of plane ``i`` in header ``BAND<i>`` (or
the letters of ``BANDS``; neither: g, r, z). The array is used as astropy returns it (no
flip, as the npz stamps of the same service hold it). Larger cutouts are centre-cropped to
64x64 (rows and columns ``(H - 64) // 2`` on); smaller ones are rejected.

The catalogue (``--catalog``, parquet or CSV) gives each file its meta columns (the
checkpoint's) and is keyed by a ``file`` column (the file name) or an ``id`` column (the file
name without its FITS suffix). The row's ``id`` is the catalogue's ``id`` when it has one, else
the file name's stem; ra/dec come from the catalogue's ``ra``/``dec``, else the header's
``CRVAL1``/``CRVAL2`` (the cutout centre). Rejected files are counted by reason:
``unreadable_fits``, ``missing_band``, ``bad_shape``, ``non_finite``, ``no_catalog_row``,
``bad_meta``, ``bad_position``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from astropy.io import fits

from haloscope.errors import ConfigError, ContractError
from haloscope.infer.search.inputs import FITS_SUFFIXES, Chunk, Piece, SearchInput, _stat
from haloscope.preprocess.decode import BANDS, STAMP_PX
from haloscope.preprocess.gates import column_f64
from haloscope.preprocess.normalize import normalize

__all__ = ["FitsInput", "read_cutout", "file_stem", "read_catalog"]

log = logging.getLogger(__name__)


def file_stem(name: str) -> str:
    """The file name without its FITS suffix (``x.fits.fz`` -> ``x``)."""
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _band_names(header: Any, num_planes: int) -> list[str]:
    if all(f"BAND{i}" in header for i in range(num_planes)):
        return [str(header[f"BAND{i}"]).strip().lower() for i in range(num_planes)]
    if "BANDS" in header and len(str(header["BANDS"]).strip()) == num_planes:
        return list(str(header["BANDS"]).strip().lower())
    return list(BANDS[:num_planes])


def read_cutout(path: Path) -> tuple[np.ndarray | None, str | None, tuple[float, float]]:
    """One FITS cutout as ``(stamp (3, 64, 64) float32 g,r,z | None, reason | None, (ra, dec))``.

    ``(ra, dec)`` is the header's ``CRVAL1``/``CRVAL2`` (NaN where absent).
    """
    try:
        with fits.open(path, memmap=False) as hdus:
            hdu = next((h for h in hdus if getattr(h, "data", None) is not None), None)
            if hdu is None:
                return None, "unreadable_fits", (np.nan, np.nan)
            data = np.asarray(hdu.data, dtype=np.float32)
            header = hdu.header
            centre = (float(header.get("CRVAL1", np.nan)), float(header.get("CRVAL2", np.nan)))
    except (OSError, ValueError, TypeError, EOFError):
        return None, "unreadable_fits", (np.nan, np.nan)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        return None, "bad_shape", centre
    names = _band_names(header, data.shape[0])
    if any(b not in names for b in BANDS):
        return None, "missing_band", centre
    data = data[[names.index(b) for b in BANDS]]
    h, w = data.shape[1:]
    if h < STAMP_PX or w < STAMP_PX:
        return None, "bad_shape", centre
    y0, x0 = (h - STAMP_PX) // 2, (w - STAMP_PX) // 2
    stamp = np.ascontiguousarray(data[:, y0 : y0 + STAMP_PX, x0 : x0 + STAMP_PX])
    if not np.isfinite(stamp).all():
        return None, "non_finite", centre
    return stamp, None, centre


def read_catalog(path: str, meta_cols: list[str]) -> dict[str, dict[str, Any]]:
    """``key -> {meta: (M,) float32, id, ra, dec}``; key = file name, or id (a file's stem).

    Raises:
        ConfigError: unreadable catalogue, no ``file``/``id`` column, missing meta columns.
    """
    try:
        table = pcsv.read_csv(path) if path.lower().endswith(".csv") else pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"--catalog {path}: unreadable ({exc})") from None
    names = table.schema.names
    key = "file" if "file" in names else "id" if "id" in names else None
    missing = [c for c in meta_cols if c not in names]
    if key is None or missing:
        need = (["file or id"] if key is None else []) + missing
        raise ConfigError(
            f"--catalog {path}: missing column(s) {', '.join(need)} (the FITS "
            "files' key and the checkpoint's meta columns)"
        )
    meta = (
        np.stack([column_f64(table, c) for c in meta_cols], axis=1)
        if meta_cols
        else np.zeros((table.num_rows, 0))
    ).astype(np.float32)
    nan = np.full(table.num_rows, np.nan)
    ra = column_f64(table, "ra") if "ra" in names else nan
    dec = column_f64(table, "dec") if "dec" in names else nan
    keys = [str(k) for k in table.column(key).to_pylist()]
    ids = [str(v) for v in table.column("id").to_pylist()] if "id" in names else [None] * len(keys)
    return {
        k: {"meta": meta[i], "id": ids[i], "ra": ra[i], "dec": dec[i]} for i, k in enumerate(keys)
    }


class FitsInput(SearchInput):
    """A folder of FITS cutouts (sorted by name; chunk = ``chunk_size`` files)."""

    kind = "fits"

    def __init__(
        self,
        spec: str,
        settings: dict[str, Any],
        *,
        id_column: str = "auto",
        catalog: str,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__(spec, settings, id_column=id_column)
        folder = Path(spec)
        self.files = sorted(
            p
            for p in folder.iterdir()
            if p.name.lower().endswith(FITS_SUFFIXES) and not p.name.startswith(".")
        )
        if not self.files:
            raise ContractError(f"--input {spec}: no FITS files ({', '.join(FITS_SUFFIXES)})")
        self.catalog_path, self.chunk_size = catalog, chunk_size
        self.catalog = read_catalog(catalog, self.meta_cols)

    def chunks(self) -> list[Chunk]:
        n, size = len(self.files), self.chunk_size
        return [
            Chunk(k, str(self.files[s]), min(size, n - s), s)
            for k, s in enumerate(range(0, n, size))
        ]

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "chunk_size": self.chunk_size,
            "catalog": _stat(Path(self.catalog_path)),
            "files": [_stat(p) for p in self.files],
        }

    def _row(self, path: Path) -> dict[str, Any] | None:
        return self.catalog.get(path.name) or self.catalog.get(file_stem(path.name))

    def _one(self, path: Path) -> tuple[np.ndarray | None, str | None, Any, float, float, Any]:
        """stamp, reason, id, ra, dec, meta of one file."""
        stamp, reason, (ra, dec) = read_cutout(path)
        row = self._row(path)
        ident = (row or {}).get("id") or file_stem(path.name)
        meta = np.full(len(self.meta_cols), np.nan, np.float32)
        if row is not None:
            meta = row["meta"]
            ra = row["ra"] if np.isfinite(row["ra"]) else ra
            dec = row["dec"] if np.isfinite(row["dec"]) else dec
        if reason is None and row is None:
            reason = "no_catalog_row"
        if reason is None and not np.isfinite(meta).all():
            reason = "bad_meta"
        if reason is None and not (np.isfinite(ra) and np.isfinite(dec)):
            reason = "bad_position"
        return stamp, reason, ident, float(ra), float(dec), meta

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[Piece]:
        for start in range(0, chunk.num_rows, batch_size):
            stop = min(chunk.num_rows, start + batch_size)
            rows = [self._one(self.files[chunk.group + i]) for i in range(start, stop)]
            kept = np.array([i for i, r in enumerate(rows) if r[1] is None], dtype=np.int64)
            stamps = (
                np.stack([rows[i][0] for i in kept])
                if len(kept)
                else np.zeros((0, 3, STAMP_PX, STAMP_PX), np.float32)
            )
            meta = (
                np.stack([rows[i][5] for i in kept])
                if len(kept)
                else np.zeros((0, len(self.meta_cols)))
            ).astype(np.float32)
            yield Piece(
                chunk=chunk.index,
                last=stop >= chunk.num_rows,
                pos=np.arange(start, stop, dtype=np.int64),
                ids=np.array([r[2] for r in rows], dtype=object),
                ra=np.array([r[3] for r in rows]),
                dec=np.array([r[4] for r in rows]),
                kept=kept,
                images=normalize(stamps, self.norm_method).astype(np.float16),
                meta=meta,
                reasons={i: r[1] for i, r in enumerate(rows) if r[1]},
            )

    def raw_stamps(self, chunk: Chunk, pos: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pos), 3, STAMP_PX, STAMP_PX), np.float32)
        for j, p in enumerate(pos.tolist()):
            stamp, _, _ = read_cutout(self.files[chunk.group + p])
            if stamp is not None:
                out[j] = stamp
        return out
