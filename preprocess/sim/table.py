"""The mock survey's table: the DR10 4c stamps schema, npz encoding and part-file writing.

Column names and types follow ``reference/original_pipeline.md`` section 1.6 (plus Gen5's
``arc_snr_sum``); mock-only truth columns (``control_kind``, ``lens_mag_*``, ``src_mag_r``,
``src_redshift``, ``arc_snr_g/z``, ``arc_lens_flux_ratio``, ``mock_galaxy_id``, ``mock_defect``)
are extra and never needed by a reader. ``region_split`` is the hive partition
directory, not a column inside the files (as Spark writes it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.atomic import atomic_path
from haloscope.preprocess.sim.config import BANDS, EXPERIMENT_ID

__all__ = [
    "SCHEMA",
    "ROW_SCHEMA",
    "STAMP_COLUMN",
    "binary_array",
    "encode_npz",
    "failed_stamp",
    "stamp_bytes",
    "task_id",
    "SplitWriters",
    "DEFECTS",
    "STAMP_DEFLATE_LEVEL",
]

DEFECTS = (None, "cutout_fail", "nan_stamp", "r_only")
_F64, _I32, _STR = pa.float64(), pa.int32(), pa.string()
_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("task_id", _STR),
    ("experiment_id", _STR),
    ("selection_set_id", _STR),
    ("ranking_mode", _STR),
    ("selection_strategy", _STR),
    ("region_id", _I32),
    ("brickname", _STR),
    ("ra", _F64),
    ("dec", _F64),
    ("stamp_size", _I32),
    ("bandset", _STR),
    ("config_id", _STR),
    ("theta_e_arcsec", _F64),
    ("src_dmag", _F64),
    ("src_reff_arcsec", _F64),
    ("src_e", _F64),
    ("shear", _F64),
    ("replicate", _I32),
    ("is_control", _I32),
    ("task_seed64", pa.int64()),
    ("src_x_arcsec", _F64),
    ("src_y_arcsec", _F64),
    ("src_phi_rad", _F64),
    ("shear_phi_rad", _F64),
    ("src_gr", _F64),
    ("src_rz", _F64),
    ("psf_bin", _I32),
    ("depth_bin", _I32),
    ("ab_zp_nmgy", _F64),
    ("pipeline_version", _STR),
    ("psfsize_g", _F64),
    ("psfsize_r", _F64),
    ("psfsize_z", _F64),
    ("psfdepth_g", _F64),
    ("psfdepth_r", _F64),
    ("psfdepth_z", _F64),
    ("ebv", _F64),
    ("stamp_npz", pa.binary()),
    ("cutout_ok", _I32),
    ("arc_snr", _F64),
    ("bad_pixel_frac", _F64),
    ("wise_brightmask_frac", _F64),
    ("metrics_ok", _I32),
    ("psf_fwhm_used_g", _F64),
    ("psf_fwhm_used_r", _F64),
    ("psf_fwhm_used_z", _F64),
    ("metrics_only", _I32),
    ("lens_model", _STR),
    ("lens_e", _F64),
    ("lens_phi_rad", _F64),
    ("magnification", _F64),
    ("tangential_stretch", _F64),
    ("radial_stretch", _F64),
    ("physics_valid", pa.bool_()),
    ("physics_warnings", _STR),
    ("arc_snr_sum", _F64),  # Gen5 column
    # mock-only truth
    ("control_kind", _STR),
    ("lens_mag_g", _F64),
    ("lens_mag_r", _F64),
    ("lens_mag_z", _F64),
    ("src_mag_r", _F64),
    ("src_redshift", _F64),
    ("arc_snr_g", _F64),
    ("arc_snr_z", _F64),
    ("arc_lens_flux_ratio", _F64),
    ("mock_galaxy_id", pa.int64()),
    ("mock_defect", _STR),
]
SCHEMA = pa.schema([pa.field(name, typ) for name, typ in _COLUMNS])
STAMP_COLUMN = "stamp_npz"
_STAMP_INDEX = SCHEMA.get_field_index(STAMP_COLUMN)
# every column but the stamp: rows are queued in it, the stamps as Python bytes (see SplitWriters)
ROW_SCHEMA = SCHEMA.remove(_STAMP_INDEX)
_MAX_BINARY_BYTES = 2**31 - 1  # int32 offsets of pa.binary()
STAMP_DEFLATE_LEVEL = 0  # stored: the parquet codec does the compressing (see stamp_bytes)
# zip fields of the npz members, as ``zipfile`` writes them: version 2.0, deflate, 1980-01-01
# 00:00, created on unix with mode ?rw-------
_ZIP_VERSION, _ZIP_SYSTEM_UNIX, _ZIP_DEFLATE = 20, 3, 8
_DOS_DATE_1980 = 1 << 5 | 1
_ZIP_MODE_RW = 0o600 << 16


def encode_npz(arrays: dict[str, np.ndarray], level: int = 1) -> bytes:
    """Bytes of a deflate zip of ``.npy`` members, read by ``np.load`` like ``np.savez_compressed``.

    The zip is assembled here rather than by ``zipfile`` (whose per-member Python overhead was
    ~1/4 of the encoding time): the bytes equal ``zipfile.ZipFile(..., ZIP_DEFLATED)`` with
    ``writestr`` of a ``ZipInfo`` dated 1980-01-01 (no data descriptor, mode ``?rw-------``).

    Args:
        arrays: member name (without ``.npy``) -> array.
        level: zlib level; 1 is ~5x faster than numpy's default at a ~1% larger size, 0 keeps
            the bytes as they are (stored blocks, still a deflate member for every reader).

    Raises:
        ValueError: an array holds Python objects (npz members are never pickled).
    """
    local, central, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.hasobject:
            raise ValueError(f"encode_npz: member {name!r} is an object array; pass numbers")
        data = _npy_header(arr.dtype, arr.shape) + arr.tobytes()
        packed = zlib.compressobj(level, zlib.DEFLATED, -15)
        packed = packed.compress(data) + packed.flush()
        fname = (name + ".npy").encode()
        # fixed timestamp: the bytes must not depend on the wall clock (determinism)
        fields = (_ZIP_VERSION, 0, 0, _ZIP_DEFLATE, 0, _DOS_DATE_1980, zlib.crc32(data))
        sizes = (len(packed), len(data), len(fname))
        local.append(struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", *fields, *sizes, 0) + fname)
        local.append(packed)
        central.append(
            struct.pack(
                "<4s4B4HL2L5H2L",
                b"PK\x01\x02",
                _ZIP_VERSION,
                _ZIP_SYSTEM_UNIX,
                *fields,
                *sizes,
                0,
                0,
                0,
                0,
                _ZIP_MODE_RW,
                offset,
            )
            + fname
        )
        offset += len(local[-2]) + len(packed)
    size = sum(map(len, central))
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), size, offset, 0)
    return b"".join([*local, *central, end])


@functools.lru_cache(maxsize=32)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.lib.format.write_array`` writes for a C-ordered array."""
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(dtype)
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def failed_stamp() -> bytes:
    """The stamp of a ``cutout_ok=0`` row: an npz holding only ``image_r`` zeros (64x64)."""
    return encode_npz({"image_r": np.zeros((64, 64), np.float32)})


def stamp_bytes(image: np.ndarray, r_only: bool) -> bytes:
    """Encode one (3, 64, 64) float32 image as ``image_g/r/z`` (or only ``image_r``).

    The members are deflate streams of stored blocks (``STAMP_DEFLATE_LEVEL``): float32 noise
    deflates by only ~6%, while the part files' codec compresses the raw floats better than
    deflated ones (zstd: 4% smaller part files, 35% smaller with ``--quantize 4``), and storing
    takes ~1/20 of the time of deflate level 1, which was a third of the simulator's time.
    """
    if r_only:
        return encode_npz({"image_r": image[1]}, STAMP_DEFLATE_LEVEL)
    bands = {f"image_{b}": image[i] for i, b in enumerate(BANDS)}
    return encode_npz(bands, STAMP_DEFLATE_LEVEL)


def task_id(
    sel: str, split: str, brick: str, ra: float, dec: float, config_id: str, rep: int
) -> str:
    """``sha256(experiment_id|selection_set_id|region_split|brickname|ra|dec|config_id|replicate)``."""
    key = f"{EXPERIMENT_ID}|{sel}|{split}|{brick}|{ra:.6f}|{dec:.6f}|{config_id}|{rep}"
    return hashlib.sha256(key.encode()).hexdigest()


def binary_array(values: list[bytes], scratch: np.ndarray | None = None) -> pa.Array:
    """A ``pa.binary()`` array of ``values``, their bytes copied once into one buffer.

    Args:
        values: the array's values.
        scratch: a uint8 buffer of at least their total size to copy them into instead of a
            new one; the array views it, so it is valid until ``scratch`` is written again.

    Raises:
        ValueError: the values hold 2 GiB or more (beyond int32 offsets), or do not fit
            ``scratch``.
    """
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
    size = int(offsets[-1])
    if size > _MAX_BINARY_BYTES:
        raise ValueError(f"binary_array: {size} bytes do not fit int32 offsets")
    if scratch is None:
        data = pa.py_buffer(b"".join(values))
    elif scratch.size < size:
        raise ValueError(f"binary_array: {size} bytes do not fit a {scratch.size}-byte scratch")
    else:
        view = memoryview(scratch)
        bounds = zip(values, offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        for value, start, stop in bounds:
            view[start:stop] = value
        data = pa.py_buffer(scratch[:size])
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), data]
    return pa.Array.from_buffers(pa.binary(), len(values), buffers)


class SplitWriters:
    """One parquet part file per split for a chunk, as a context manager.

    Rows are queued per split as Arrow tables of ``ROW_SCHEMA`` plus their stamps as Python
    bytes; the stamps become an Arrow column only when their row group is written, so each
    stamp is copied once (a stamp is ~46 kB, shared by a galaxy's ~9 rows).

    Each file is written to a temporary sibling (``haloscope.atomic``) that is renamed into
    place when the block exits cleanly; on an exception every temporary file is removed.
    """

    def __init__(
        self, out: str | os.PathLike, chunk: int, compression: str, row_group_rows: int = 1024
    ) -> None:
        self.out, self.chunk = Path(out), chunk
        self.codec = None if compression == "none" else compression
        self.row_group_rows = row_group_rows
        self._files = contextlib.ExitStack()
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._pending: dict[str, tuple[list[pa.Table], list[bytes]]] = {}
        # NOTE: one buffer for every row group's stamps: a fresh ~50 MB one per group would be
        # fresh memory from the system each time (~12k page faults)
        self._stamp_buffer = np.empty(0, np.uint8)
        self.rows_written: dict[str, int] = {}

    def __enter__(self) -> SplitWriters:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self._abort(exc)
            return False
        try:
            for split, (tables, stamps) in self._pending.items():
                if stamps:
                    self._flush(split, pa.concat_tables(tables), stamps)
            for writer in self._writers.values():
                writer.close()
        except BaseException as err:
            self._abort(err)
            raise
        self._files.close()  # renames each file into place
        return False

    def _abort(self, err: BaseException) -> None:
        """Close the writers and remove every temporary file; ``err`` is what failed."""
        for writer in self._writers.values():
            with contextlib.suppress(Exception):  # err is the error to report, not this one
                writer.close()
        self._files.__exit__(type(err), err, err.__traceback__)

    def add(self, split: str, rows: pa.Table, stamps: list[bytes]) -> None:
        """Queue rows of one split; a row group is written every ``row_group_rows`` rows.

        Args:
            split: the split (part file) the rows belong to.
            rows: the rows in ``ROW_SCHEMA``.
            stamps: the ``stamp_npz`` value of each row.
        """
        if rows.num_rows != len(stamps):
            raise ValueError(f"{rows.num_rows} rows but {len(stamps)} stamps")
        tables, queued = self._pending.setdefault(split, ([], []))
        tables.append(rows)
        queued.extend(stamps)
        if len(queued) < self.row_group_rows:
            return
        joined, start, size = pa.concat_tables(tables), 0, self.row_group_rows
        while len(queued) - start >= size:
            self._flush(split, joined.slice(start, size), queued[start : start + size])
            start += size
        tables[:] = [joined.slice(start)]
        del queued[:start]

    def _flush(self, split: str, rows: pa.Table, stamps: list[bytes]) -> None:
        if split not in self._writers:
            final = self.out / f"region_split={split}" / f"part-{self.chunk:05d}.parquet"
            tmp = self._files.enter_context(atomic_path(final))
            self._writers[split] = pq.ParquetWriter(tmp, SCHEMA, compression=self.codec)
        stamp_field = SCHEMA.field(_STAMP_INDEX)
        needed = sum(map(len, stamps))
        if self._stamp_buffer.size < needed:
            self._stamp_buffer = np.empty(needed, np.uint8)  # not zeroed: every byte is written
        stamp_column = binary_array(stamps, self._stamp_buffer)
        table = rows.combine_chunks().add_column(_STAMP_INDEX, stamp_field, stamp_column)
        self._writers[split].write_table(table)
        self.rows_written[split] = self.rows_written.get(split, 0) + table.num_rows
        del table, stamp_column  # NOTE: they view the stamp buffer, which the next group reuses
