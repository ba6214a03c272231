"""Inputs of ``haloscope search``: the input cut into chunks, and each chunk read as batches.

A *chunk* is the unit of work, of resume and of the rank split: a parquet row group, one
shard, or ``--chunk-size`` FITS files (in sorted file-name order). Chunk ``k`` goes to rank
``k % world_size``; every rank lists the same chunks in the same order. A chunk is read as
``Piece``s of at most the per-rank batch: its rows with id, ra, dec and position in the chunk,
the kept rows model-ready (float16 normalised stamps, float32 raw meta) and the rejected rows
with their reason. Batch composition depends only on the chunk and the batch size, so logits do
not depend on the number of ranks or loader workers.

Parquet rows are prepared by ``preprocess.convert.unlabelled.prepare_unlabelled`` (the stamp
decoding and normalisation of the converter), shards through the shard reader's record index
(``shards.index.open_shard``), FITS files by ``infer.search.fits``.

An unlabelled shard split may also be a URL (``http(s)://``, ``s3://``: ``shards/remote.py``):
its manifest is read first (``URL/manifest.json``, else ``URL/search/manifest.json``), then each
shard is downloaded whole into a verified ``ShardCache`` (by whichever loader worker reads it
first; the others wait on the shard's lock) and read from there exactly as a local shard.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.errors import ConfigError, ContractError, DataError, MissingDataError
from haloscope.preprocess.convert.unlabelled import (
    SEARCH_SPLIT,
    list_parquet,
    prepare_unlabelled,
    read_columns,
)
from haloscope.preprocess.decode import decode_stamps
from haloscope.shards.index import open_shard
from haloscope.shards.manifest import MANIFEST_NAME, Manifest, check_compatible, load_manifest
from haloscope.shards.remote import RemotePath, ShardCache, Source, is_url, open_source

__all__ = ["FITS_SUFFIXES", "Chunk", "Piece", "SearchInput", "detect_kind", "open_input"]

FITS_SUFFIXES: tuple[str, ...] = (".fits", ".fits.gz", ".fits.fz", ".fit")


@dataclass(frozen=True)
class Chunk:
    """One unit of work."""

    index: int
    """Position in the input's chunk list (the part file's number)."""
    source: str
    """The parquet file, shard file, or first FITS file."""
    num_rows: int
    """Rows (cutouts) it holds."""
    group: int = 0
    """Parquet row group; index of the shard; first FITS file's index."""


@dataclass
class Piece:
    """Up to one batch of a chunk's rows."""

    chunk: int
    last: bool
    """The chunk's last piece."""
    pos: np.ndarray
    """(N,) int64 row positions in the chunk."""
    ids: np.ndarray
    """(N,) object strings."""
    ra: np.ndarray
    """(N,) float64."""
    dec: np.ndarray
    """(N,) float64."""
    kept: np.ndarray
    """(K,) int64 indices into the piece's rows of the rows to score."""
    images: np.ndarray
    """(K, 3, 64, 64) float16 normalised stamps, bands g, r, z."""
    meta: np.ndarray
    """(K, M) float32 raw meta values in the checkpoint's order."""
    reasons: dict[int, str] = field(default_factory=dict)
    """piece row -> reason, for the rejected rows."""

    def pin_memory(self) -> Piece:
        """The piece with page-locked images and meta (the loader's pin thread calls this once
        they are torch tensors, so the main loop's host-to-device copies need no staging)."""
        if hasattr(self.images, "pin_memory"):
            self.images, self.meta = self.images.pin_memory(), self.meta.pin_memory()
        return self


def _is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES) and not path.name.startswith(".")


def detect_kind(spec: str) -> str:
    """``shards`` (a split folder or root with ``search/``, or any URL: only shard splits
    are read from one), ``fits`` (a folder of FITS files) or ``parquet`` (anything else: a
    file, a folder or a glob)."""
    if is_url(spec):
        return "shards"
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file() or (path / SEARCH_SPLIT / MANIFEST_NAME).is_file():
            return "shards"
        if any(_is_fits(p) for p in path.iterdir()):
            return "fits"
    return "parquet"


class SearchInput:
    """Base: the chunk list, fingerprint sources and a reader per chunk."""

    kind = ""

    def __init__(self, spec: str, settings: dict[str, Any], *, id_column: str = "auto") -> None:
        self.spec, self.settings, self.id_column = spec, settings, id_column
        self.meta_cols: list[str] = list(settings["meta_columns"])
        self.norm_method: str = settings["norm_method"]

    def chunks(self) -> list[Chunk]:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What the input is, for the out folder's fingerprint (files, sizes, mtimes)."""
        raise NotImplementedError

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[Piece]:
        raise NotImplementedError

    def raw_stamps(self, chunk: Chunk, pos: np.ndarray) -> np.ndarray:
        """(n, 3, 64, 64) float32 stamps of rows ``pos`` of ``chunk``, for the gallery."""
        raise NotImplementedError

    @property
    def extra_rejects(self) -> pa.Table | None:
        """Rows rejected before this search (an unlabelled shard split's rejects.parquet)."""
        return None


def _stat(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _pieces_of(chunk: int, prepared, offset: int, last: bool) -> Piece:
    n = len(prepared.ids)
    reasons = dict(prepared.reasons)
    return Piece(
        chunk=chunk,
        last=last,
        pos=np.arange(offset, offset + n, dtype=np.int64),
        ids=prepared.ids,
        ra=prepared.ra,
        dec=prepared.dec,
        kept=prepared.rows,
        images=prepared.images,
        meta=prepared.meta,
        reasons=reasons,
    )


class ParquetInput(SearchInput):
    """Unlabelled parquet: a file, a folder (recursive) or a glob; chunk = row group."""

    kind = "parquet"

    def __init__(self, spec: str, settings: dict[str, Any], *, id_column: str = "auto") -> None:
        super().__init__(spec, settings, id_column=id_column)
        self.files = list_parquet(spec)
        self.columns = {p: read_columns(p, self.meta_cols, id_column) for p in self.files}

    def chunks(self) -> list[Chunk]:
        out: list[Chunk] = []
        for path in self.files:
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                out.append(Chunk(len(out), str(path), meta.row_group(g).num_rows, g))
        return out

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id_column": self.id_column,
            "files": [_stat(p) for p in self.files],
        }

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[Piece]:
        path = Path(chunk.source)
        try:
            reader = pq.ParquetFile(path).iter_batches(
                batch_size=batch_size, row_groups=[chunk.group], columns=self.columns[path]
            )
            offset = 0
            for batch in reader:
                prep = prepare_unlabelled(
                    batch, self.meta_cols, self.norm_method, id_column=self.id_column
                )
                offset += batch.num_rows
                yield _pieces_of(
                    chunk.index, prep, offset - batch.num_rows, offset >= chunk.num_rows
                )
        except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
            raise ContractError(f"{path}: cannot read row group {chunk.group}: {exc}") from None

    def raw_stamps(self, chunk: Chunk, pos: np.ndarray) -> np.ndarray:
        group = pq.ParquetFile(chunk.source).read_row_group(chunk.group, columns=["stamp_npz"])
        stamps, _ = decode_stamps(group.column("stamp_npz").take(pa.array(pos)).to_pylist())
        return stamps


def _remote_manifest(url: str) -> Manifest:
    """The manifest at ``url``: the split folder, or a root whose ``search/`` holds it (no
    listing: ``url/manifest.json`` is tried, then ``url/search/manifest.json``).

    Raises:
        DataError: neither exists (one line naming both), the server cannot be reached, or
            the manifest is not a shard manifest.
    """
    root = RemotePath(url)
    split_dirs = (root, root / SEARCH_SPLIT)
    for split_dir in split_dirs:
        try:
            return load_manifest(split_dir)
        except MissingDataError:
            continue
    first, second = (d / MANIFEST_NAME for d in split_dirs)
    raise DataError(
        f"--input {url}: no shard manifest at {first} nor at {second} (is it a split of "
        "`haloscope shards --unlabelled`, or its root, and is the upload complete?)"
    )


class ShardInput(SearchInput):
    """A shard split (``haloscope shards --unlabelled`` writes ``<root>/search/``); chunk =
    shard. Its preprocessing must be the checkpoint's (``check_compatible``).

    At a URL each shard is fetched whole into ``cache_dir`` (a ``ShardCache``, made on first
    use, so opening the input writes nothing) and read from there."""

    kind = "shards"

    def __init__(
        self,
        spec: str,
        settings: dict[str, Any],
        *,
        id_column: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(spec, settings, id_column=id_column)
        self.source: Source | None = None
        self.cache_dir: Path | None = None
        self._cache: ShardCache | None = None
        if is_url(spec):
            if cache_dir is None:
                raise ConfigError(f"--input {spec} is a URL: give --cache-dir")
            self.manifest: Manifest = _remote_manifest(spec)
            self.source = open_source(self.manifest.split_dir)
            self.cache_dir = Path(cache_dir)
        else:
            root = Path(spec)
            split_dir = root if (root / MANIFEST_NAME).is_file() else root / SEARCH_SPLIT
            self.manifest = load_manifest(split_dir)
        wanted = {k: settings[k] for k in ("norm", "meta_columns", "stamp_px") if k in settings}
        check_compatible(self.manifest, wanted, against=f"checkpoint {settings.get('ckpt')}")

    @property
    def is_remote(self) -> bool:
        """The split is read from a URL through the shard cache."""
        return self.source is not None

    def chunks(self) -> list[Chunk]:
        return [
            Chunk(i, str(self.manifest.split_dir / s["file"]), int(s["num_samples"]), i)
            for i, s in enumerate(self.manifest.shards)
        ]

    def identity(self) -> dict[str, Any]:
        if self.is_remote:  # the split's URL (root or split folder alike) and its shards
            return {
                "kind": self.kind,
                "url": str(self.manifest.split_dir),
                "shards": [s["sha256"] for s in self.manifest.shards],
            }
        return {
            "kind": self.kind,
            "manifest": str(Path(self.manifest.split_dir).resolve()),
            "shards": [s["sha256"] for s in self.manifest.shards],
        }

    def _local_path(self, chunk: Chunk) -> Path:
        """The chunk's shard file: itself, or (URL) its verified copy in the cache."""
        if self.source is None:
            return Path(chunk.source)
        if self._cache is None:  # here: in the loader worker (or the gallery's process)
            assert self.cache_dir is not None
            self._cache = ShardCache(self.cache_dir)
        return self._cache.fetch(self.source, self.manifest.shards[chunk.group])

    def _arrays(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.manifest.shards[chunk.group]
        views = open_shard(self._local_path(chunk), entry["records"], len(self.meta_cols))
        return (
            np.concatenate([v.image for v in views]),
            np.concatenate([v.meta for v in views]),
            np.concatenate([v.table for v in views]),
        )

    def read(self, chunk: Chunk, batch_size: int) -> Iterator[Piece]:
        image, meta, table = self._arrays(chunk)
        n = len(table)
        for start in range(0, n, batch_size):
            t = table[start : start + batch_size]
            k = len(t)
            yield Piece(
                chunk=chunk.index,
                last=start + k >= n,
                pos=np.arange(start, start + k, dtype=np.int64),
                ids=np.array([v.decode("utf-8") for v in t["task_id"]], dtype=object),
                ra=t["ra"].astype(np.float64),
                dec=t["dec"].astype(np.float64),
                kept=np.arange(k, dtype=np.int64),
                images=np.array(image[start : start + k]),
                meta=np.array(meta[start : start + k], dtype=np.float32),
            )

    def raw_stamps(self, chunk: Chunk, pos: np.ndarray) -> np.ndarray:
        # NOTE: shards hold normalised stamps only; the gallery shows those (float32)
        image, _, _ = self._arrays(chunk)
        return image[pos].astype(np.float32)

    @property
    def extra_rejects(self) -> pa.Table | None:
        if self.source is None:
            path = Path(self.manifest.split_dir) / "rejects.parquet"
            return pq.read_table(path) if path.is_file() else None
        try:
            data = self.source.read("rejects.parquet")
        except MissingDataError:
            return None
        try:
            return pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{self.source.describe('rejects.parquet')}: unreadable ({exc})"
            ) from None


def open_input(
    spec: str,
    kind: str,
    settings: dict[str, Any],
    *,
    id_column: str = "auto",
    catalog: str | None = None,
    chunk_size: int = 4096,
    cache_dir: str | Path | None = None,
) -> SearchInput:
    """The input of ``--input`` (``kind``: ``auto``, ``parquet``, ``fits`` or ``shards``).

    A URL is read as an unlabelled shard split, its shards cached in ``cache_dir`` (unused
    for a local input).

    Raises:
        ConfigError: ``--catalog`` given for a non-FITS input, or missing for FITS.
        ContractError / DataError: unreadable input, missing columns, shards made otherwise.
    """
    if kind == "auto":
        kind = detect_kind(spec)
    if is_url(spec) and kind != "shards":
        raise ConfigError(
            f"--input {spec} is a URL: only shard splits of `haloscope shards --unlabelled` "
            f"are read from a URL, not --input-kind {kind}"
        )
    if kind != "fits" and catalog is not None:
        raise ConfigError(f"--catalog is for a folder of FITS cutouts; --input {spec} is {kind}")
    if kind == "fits":
        # NOTE: import cycle: fits imports this module (SearchInput, Chunk, Piece).
        from haloscope.infer.search.fits import FitsInput

        if catalog is None:
            raise ConfigError(
                f"--input {spec} holds FITS cutouts: give --catalog (parquet or "
                f"CSV with a file or id column and {', '.join(settings['meta_columns'])})"
            )
        return FitsInput(
            spec, settings, id_column=id_column, catalog=catalog, chunk_size=chunk_size
        )
    if kind == "shards":
        return ShardInput(spec, settings, id_column=id_column, cache_dir=cache_dir)
    if not Path(spec).exists() and not glob.glob(spec):
        raise ContractError(f"--input {spec}: no such file, folder or glob match")
    return ParquetInput(spec, settings, id_column=id_column)
