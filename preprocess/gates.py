"""Quality gates and the resolvability cut, with a counted reason for every rejected row.

Order (cheap checks before decoding): label coding, ``cutout_ok == 1``, r-only bandset,
resolvability of positives (theta_E / PSF-FWHM), then decoding (undecodable bytes, wrong
keys, wrong shape) and finite pixels. Every row ends up either kept or counted under
exactly one reason, so nothing is lost silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from haloscope.preprocess import decode as dec

__all__ = [
    "REASONS",
    "GateResult",
    "labels_of",
    "theta_psf_ratio",
    "theta_over_psf",
    "gate_batch",
    "column_f64",
]

REASONS: tuple[str, ...] = (
    "bad_label",
    "cutout_not_ok",
    "r_only_bandset",
    "unresolved",
    "undecodable",
    "bad_keys",
    "bad_shape",
    "non_finite",
)
_DECODE_REASON = {
    dec.DECODE_UNDECODABLE: "undecodable",
    dec.DECODE_BAD_KEYS: "bad_keys",
    dec.DECODE_BAD_SHAPE: "bad_shape",
}


@dataclass
class GateResult:
    """The rows of one record batch that passed every gate."""

    kept: np.ndarray
    """(K,) int64 row indices into the batch."""
    stamps: np.ndarray
    """(K, 3, 64, 64) float32 raw stamps (nanomaggies) of the kept rows."""
    rejected: Counter
    """reason -> number of rejected rows."""


def column_f64(batch: pa.RecordBatch | pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NULL -> NaN."""
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    col = col.cast(pa.float64())
    if col.null_count:
        col = col.fill_null(float("nan"))
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def labels_of(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Label per row: 1 = lens (is_control == 0), 0 = control, -1 = invalid coding."""
    is_control = column_f64(batch, "is_control")
    return np.where(is_control == 0, 1, np.where(is_control == 1, 0, -1)).astype(np.int8)


def theta_psf_ratio(theta: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """theta_E / PSF-FWHM, the one definition of the resolvability ratio.

    The converter's cut, infer's ``theta_over_psf`` column and evaluate's strata, transfer
    bins and detectable subset all use it (each with its own PSF column).

    Args:
        theta: Einstein radii (arcsec), any float dtype.
        psf: PSF FWHM (arcsec), same shape.

    Returns:
        float64 ratio; NaN where the PSF is not > 0 (or NaN) or the ratio is not finite.
    """
    theta = np.asarray(theta, dtype=np.float64)
    psf = np.asarray(psf, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = theta / psf
    return np.where((psf > 0) & np.isfinite(ratio), ratio, np.nan)


def theta_over_psf(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """theta_E / PSF-FWHM per row, with PSF = psf_fwhm_used_r if finite and > 0 else psfsize_r.

    Returns:
        ``(ratio, psf)`` float64 arrays; NaN where undefined (:func:`theta_psf_ratio`).
    """
    used = column_f64(batch, "psf_fwhm_used_r")
    size = column_f64(batch, "psfsize_r")
    psf = np.where(np.isfinite(used) & (used > 0), used, size)
    return theta_psf_ratio(column_f64(batch, "theta_e_arcsec"), psf), psf


def _pre_decode_reasons(batch: pa.RecordBatch, min_theta_over_psf: float) -> np.ndarray:
    """Reason index per row (into REASONS) for the cheap gates, -1 where the row passes."""
    n = batch.num_rows
    reason = np.full(n, -1, dtype=np.int16)
    labels = labels_of(batch)
    ok = column_f64(batch, "cutout_ok")
    ratio, _ = theta_over_psf(batch)
    checks = [
        ("bad_label", labels < 0),
        ("cutout_not_ok", ~(ok == 1)),
    ]
    if "bandset" in batch.schema.names:
        is_r = pc.fill_null(pc.equal(batch.column("bandset"), "r"), False)
        checks.append(("r_only_bandset", is_r.to_numpy(zero_copy_only=False)))
    resolved = np.isfinite(ratio) & (ratio >= min_theta_over_psf)
    checks.append(("unresolved", (labels == 1) & ~resolved))
    for name, hit in checks:
        reason[(reason < 0) & hit] = REASONS.index(name)
    return reason


def gate_batch(batch: pa.RecordBatch, min_theta_over_psf: float = 0.5) -> GateResult:
    """Apply every gate to a record batch and decode the surviving stamps.

    Args:
        batch: rows with at least the contract's columns.
        min_theta_over_psf: positives with theta_E / PSF-FWHM below this are rejected
            ("unresolved"); 0 keeps every positive with a defined ratio >= 0.

    Returns:
        The kept rows, their raw float32 stamps, and the rejection counts.
    """
    reason = _pre_decode_reasons(batch, min_theta_over_psf)
    candidates = np.flatnonzero(reason < 0)
    blobs = batch.column("stamp_npz").take(pa.array(candidates)).to_pylist()
    stamps, codes = dec.decode_stamps(blobs)
    for code, name in _DECODE_REASON.items():
        reason[candidates[codes == code]] = REASONS.index(name)
    good = codes == dec.DECODE_OK
    finite = np.isfinite(stamps).all(axis=(1, 2, 3))
    reason[candidates[good & ~finite]] = REASONS.index("non_finite")
    keep_local = good & finite
    counts = Counter(
        {
            REASONS[r]: int(c)
            for r, c in zip(*np.unique(reason[reason >= 0], return_counts=True), strict=False)
        }
    )
    return GateResult(
        kept=candidates[keep_local].astype(np.int64), stamps=stamps[keep_local], rejected=counts
    )
