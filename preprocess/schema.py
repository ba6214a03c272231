"""The input contract: hive layout, required columns and their types.

Real DR10 cutout tables and the mock survey alike are hive-partitioned parquet,
``<root>/region_split={train,val,test}/*.parquet``. ``validate_dataset`` checks the layout
and every file's schema before any work starts and raises one ``ContractError`` that names
the file and the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.errors import ConfigError, ContractError

__all__ = [
    "SPLITS",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "STRATA_COLUMNS",
    "NULLABLE_COLUMNS",
    "DatasetLayout",
    "validate_dataset",
    "split_files",
    "check_schema",
    "META_ALLOWED",
    "META_LEAKING",
    "check_meta_columns",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")

# column -> kind ("float", "int", "string", "binary"); region_split comes from the directory.
REQUIRED_COLUMNS: dict[str, str] = {
    "task_id": "string",
    "ra": "float",
    "dec": "float",
    "brickname": "string",
    "is_control": "int",
    "cutout_ok": "int",
    "theta_e_arcsec": "float",
    "psf_fwhm_used_r": "float",
    "psfsize_r": "float",
    "psfdepth_r": "float",
    "arc_snr": "float",
    "src_dmag": "float",
    "src_reff_arcsec": "float",
    "stamp_npz": "binary",
}

# Injection truth carried to the shards and scores as evaluation strata when a table has it
# (the mock writes all of them; the original's Gen5 tables have arc_snr_sum and the
# physics diagnostics); never model inputs (META_LEAKING).
STRATA_COLUMNS: tuple[str, ...] = (
    "arc_snr_sum",
    "magnification",
    "arc_lens_flux_ratio",
    "tangential_stretch",
    "radial_stretch",
)

# Used when present: bandset gates r-only rows; control_kind is mock-only truth for strata.
OPTIONAL_COLUMNS: dict[str, str] = {
    "bandset": "string",
    "control_kind": "string",
    **dict.fromkeys(STRATA_COLUMNS, "float"),
}

# Columns the contract allows to be NULL (read as NaN / "not set"): lens-only quantities are
# NULL for controls, the fitted PSF falls back to psfsize_r. A file where such a column is
# NULL in every row (a control-only file) may store it with parquet type ``null``, as
# ``pyarrow.Table.from_pylist`` does; that type is accepted for these columns only.
NULLABLE_COLUMNS: frozenset[str] = frozenset(
    {
        "theta_e_arcsec",
        "psf_fwhm_used_r",
        "arc_snr",
        "src_dmag",
        "src_reff_arcsec",
        *OPTIONAL_COLUMNS,
    }
)


def _kind_ok(dtype: pa.DataType, kind: str, nullable: bool = False) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if pa.types.is_null(dtype):
        return nullable
    if kind == "float":
        return pa.types.is_floating(dtype) or pa.types.is_integer(dtype)
    if kind == "int":
        return pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)
    if kind == "string":
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    if kind == "binary":
        return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)
    raise ValueError(f"unknown column kind {kind!r}")


# Meta inputs: observing conditions only, defined identically for lenses and controls (B9).
META_ALLOWED: tuple[str, ...] = tuple(
    f"{kind}_{band}" for kind in ("psfsize", "psfdepth", "galdepth", "nobs") for band in "grz"
) + ("ebv",)
# Columns known to leak the label (defined or NULL for one class only, or the label itself):
# the seed's denylist plus what it missed; only used to say why a column is refused.
META_LEAKING: frozenset[str] = frozenset(
    {
        "theta_e_arcsec",
        "theta_e",
        "src_dmag",
        "src_reff_arcsec",
        "src_n",
        "src_e",
        "src_phi_deg",
        "src_x_arcsec",
        "src_y_arcsec",
        "lens_e",
        "lens_phi_deg",
        "shear_gamma",
        "shear_phi_deg",
        "shear",
        "arc_snr",
        "arc_snr_sum",
        "magnification",
        "tangential_stretch",
        "radial_stretch",
        "arc_lens_flux_ratio",
        "is_control",
        "label",
        "cutout_ok",
        "psf_fwhm_used_g",
        "psf_fwhm_used_r",
        "psf_fwhm_used_z",
        "lens_model",
        "config_id",
        "src_gr",
        "src_rz",
        "metrics_ok",
        "expected_arc_radius",
        "control_kind",
        "bandset",
        "is_hard_neg",
    }
)


def _leaks(col: str) -> bool:
    return col in META_LEAKING or col.startswith(("src_", "physics_")) or col.endswith("_rad")


def check_meta_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """Refuse meta inputs that repeat, leak the label, or are not on the allow-list.

    Returns:
        The columns as a tuple.

    Raises:
        ConfigError: naming the column and why.
    """
    allowed = ", ".join(META_ALLOWED)
    if len(set(columns)) != len(columns):
        raise ConfigError(f"--meta-cols lists a column twice: {','.join(columns)}")
    for col in columns:
        if _leaks(col):
            raise ConfigError(
                f"--meta-cols: {col!r} leaks the label (it is defined or NULL differently for "
                f"lenses and controls); allowed: {allowed}"
            )
        if col not in META_ALLOWED:
            raise ConfigError(
                f"--meta-cols: {col!r} is not an allowed meta column (allow-list: {allowed})"
            )
    return tuple(columns)


@dataclass(frozen=True)
class DatasetLayout:
    """The parquet files of each split found under one root."""

    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    """split -> sorted parquet files."""
    num_rows: dict[str, int] = field(default_factory=dict)
    """split -> rows, from the parquet footers."""


def split_files(root: Path, split: str) -> list[Path]:
    """Sorted parquet files of one split (``region_split=<split>/**/*.parquet``)."""
    part = root / f"region_split={split}"
    if not part.is_dir():
        return []
    return sorted(p for p in part.rglob("*.parquet") if p.is_file())


def check_schema(path: Path, schema: pa.Schema, columns: dict[str, str] = REQUIRED_COLUMNS) -> None:
    """Raise ``ContractError`` naming ``path`` and the first missing or mistyped column."""
    names = set(schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ContractError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(the contract needs: {', '.join(columns)})"
        )
    for name, kind in {**columns, **OPTIONAL_COLUMNS}.items():
        dtype = schema.field(name).type if name in names else None
        if dtype is not None and not _kind_ok(dtype, kind, nullable=name in NULLABLE_COLUMNS):
            null = (
                " (a column entirely NULL; this one may not be)" if pa.types.is_null(dtype) else ""
            )
            raise ContractError(f"{path}: column {name!r} has type {dtype}, expected {kind}{null}")


def _read_schema(path: Path) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema(), meta.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"{path}: not a readable parquet file ({exc})") from None


def validate_dataset(
    root: str | Path,
    splits: tuple[str, ...] | list[str] = SPLITS,
    columns: dict[str, str] = REQUIRED_COLUMNS,
) -> DatasetLayout:
    """Check the hive layout and every file's schema of ``splits`` under ``root``.

    Args:
        root: directory holding ``region_split=<split>/`` subdirectories.
        splits: the splits that must be present and non-empty.
        columns: required columns and their kinds.

    Returns:
        The files and row counts per split.

    Raises:
        ContractError: no such directory, a non-hive layout, an empty split, an unreadable
            file, or a missing/mistyped column; the message names the path and column.
    """
    root = Path(root)
    if not root.is_dir():
        raise ContractError(f"{root}: no such directory (expected a parquet root)")
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("region_split=")
    )
    if not found:
        loose = sorted(p.name for p in root.glob("*.parquet"))[:3]
        hint = f" (found loose files such as {', '.join(loose)})" if loose else ""
        raise ContractError(
            f"{root}: not a hive-partitioned table: expected subdirectories "
            f"region_split=train|val|test{hint}"
        )
    unknown = [n for n in found if n.split("=", 1)[1] not in SPLITS]
    if unknown:
        raise ContractError(
            f"{root}: unknown partition(s) {', '.join(unknown)}; splits are {SPLITS}"
        )
    layout = DatasetLayout(root=root)
    for split in splits:
        files = split_files(root, split)
        if not files:
            raise ContractError(
                f"{root / f'region_split={split}'}: no parquet files for split {split!r}"
            )
        rows = 0
        for path in files:
            schema, n = _read_schema(path)
            check_schema(path, schema, columns)
            rows += n
        layout.files[split] = files
        layout.num_rows[split] = rows
    return layout
