"""The table rows of one rendered batch of the mock survey, built column by column.

A galaxy has ``num_rows`` rows; its row ``j`` is selection set ``sel_sets[j // 2]`` and
replicate ``j % 2``. Values shared by a galaxy's rows (sky position, observing conditions, lens,
source) are computed once per galaxy for the whole batch (:func:`galaxy_columns`) and repeated
by indexing; per-row values (task id, selection set, replicate, stamp, the replicate's truth)
are filled row by row (:func:`batch_table`). The result is an Arrow table in
``table.ROW_SCHEMA`` (the stamps stay Python bytes until written), NULL where the real tables leave a field empty: a control's truth, source
and lens model, and a failed cutout's measured truth.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from haloscope.preprocess.sim.config import (
    BANDS,
    CONTROL_KINDS,
    EXPERIMENT_ID,
    NUM_SELECTION_SETS,
    PIPELINE_VERSION,
    SPLITS,
)
from haloscope.preprocess.sim.population import Population
from haloscope.preprocess.sim.render import TRUTH_COLUMNS, RenderedBatch
from haloscope.preprocess.sim.table import DEFECTS, ROW_SCHEMA, task_id

__all__ = ["galaxy_columns", "batch_table", "FAILED_WARNING"]

FAILED_WARNING = "Processing error: cutout extends past the brick edge"
_PSF_EDGES = np.array([1.15, 1.30, 1.47])  # r psfsize quartile edges of the mock (arcsec)
_DEPTH_EDGES = np.array([24.05, 24.35, 24.85])  # r psfdepth quartile edges (AB mag)
_SEL_NAMES = [f"ss{i:02d}" for i in range(NUM_SELECTION_SETS)]
# zero for controls, the lens's or source's value for positives
_CONTROL_ZERO = (
    "theta_e_arcsec",
    "src_dmag",
    "src_reff_arcsec",
    "src_e",
    "shear",
    "shear_phi_rad",
    "src_gr",
    "src_rz",
)


def _null_where(values: np.ndarray, null: np.ndarray) -> np.ma.MaskedArray:
    """Float64 values that are NULL where ``null`` (pyarrow keeps a NaN as a value)."""
    return np.ma.MaskedArray(np.asarray(values, np.float64), mask=null)


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of strings (None = NULL)."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


def _source_columns(pop: Population, ctrl: np.ndarray) -> dict[str, np.ndarray]:
    """Lens and source columns: zero (or NULL) for controls, the drawn values for positives."""
    src_q, mass_q, lens_r = pop["src_q"], pop["mass_q"], pop["lens_mag"][:, 1]
    values = {
        "theta_e_arcsec": pop["theta_e"],
        "src_reff_arcsec": pop["src_reff"],
        "src_dmag": pop["src_mag_r"] - lens_r,  # intrinsic source - lens, r
        "src_e": (1 - src_q) / (1 + src_q),
        "shear": pop["shear"],
        "shear_phi_rad": pop["shear_phi"],
        "src_gr": pop["src_gr"],
        "src_rz": pop["src_rz"],
    }
    cols = {k: np.where(ctrl, 0.0, values[k]) for k in _CONTROL_ZERO}
    cols["src_mag_r"] = _null_where(pop["src_mag_r"], ctrl)
    cols["src_redshift"] = _null_where(pop["src_z"], ctrl)
    cols["lens_e"] = _null_where((1 - mass_q) / (1 + mass_q), ctrl)
    cols["lens_phi_rad"] = _null_where(np.mod(pop["mass_phi"], np.pi), ctrl)
    for i, b in enumerate(BANDS):
        cols[f"psf_fwhm_used_{b}"] = _null_where(pop["psf_local"][:, i], ctrl)
    pairs = zip(ctrl.tolist(), pop["theta_e"].tolist(), strict=True)
    cols["config_id"] = _objects(["CONTROL" if c else f"mock_te{t:.3f}" for c, t in pairs])
    cols["lens_model"] = np.where(ctrl, "CONTROL", "SIE").astype(object)
    pairs = zip(ctrl.tolist(), pop["control_kind"].tolist(), strict=True)
    cols["control_kind"] = _objects([CONTROL_KINDS[k] if c else None for c, k in pairs])
    return cols


def galaxy_columns(pop: Population) -> dict[str, np.ndarray]:
    """Values shared by all rows of each galaxy of ``pop``, one entry per galaxy.

    Args:
        pop: per-galaxy parameters (a batch of :func:`population.draw_population`).

    Returns:
        Column name -> (G,) array for every ``SCHEMA`` column that does not vary between a
        galaxy's rows: numbers in the column's dtype, masked arrays where some are NULL, object
        arrays of strings (None = NULL).
    """
    num = len(pop["ra"])
    ctrl = np.asarray(pop["is_control"], bool)
    ra, dec, psf, depth = pop["ra"], pop["dec"], pop["psfsize"], pop["psfdepth"]
    const = lambda value: np.full(num, value, object)  # noqa: E731
    cols = {
        "experiment_id": const(EXPERIMENT_ID),
        "ranking_mode": const("mock"),
        "selection_strategy": const("psf_depth_strata"),
        "region_id": pop["region_id"].astype(np.int32),
        "brickname": _objects([str(b) for b in pop["brickname"]]),
        "ra": ra,
        "dec": dec,
        "stamp_size": np.full(num, 64, np.int32),
        "bandset": np.where(pop["defect"] == 3, "r", "grz").astype(object),
        "task_seed64": pop["task_seed64"].astype(np.int64),
        "psf_bin": np.searchsorted(_PSF_EDGES, psf[:, 1]).astype(np.int32),
        "depth_bin": np.searchsorted(_DEPTH_EDGES, depth[:, 1]).astype(np.int32),
        "ab_zp_nmgy": np.full(num, 22.5),
        "pipeline_version": const(PIPELINE_VERSION),
        "ebv": 0.02 + 0.04 * (1 + np.sin(np.deg2rad(3 * ra)) * np.cos(np.deg2rad(5 * dec))),
        "bad_pixel_frac": np.zeros(num),
        "wise_brightmask_frac": np.zeros(num),
        "metrics_only": np.zeros(num, np.int32),
        "is_control": ctrl.astype(np.int32),
        "mock_galaxy_id": pop["galaxy_id"].astype(np.int64),
        "mock_defect": _objects([DEFECTS[d] for d in pop["defect"].tolist()]),
    }
    for i, b in enumerate(BANDS):
        cols[f"lens_mag_{b}"] = pop["lens_mag"][:, i]
        cols[f"psfsize_{b}"], cols[f"psfdepth_{b}"] = psf[:, i], depth[:, i]
    cols.update(_source_columns(pop, ctrl))
    return cols


def _arrow(values: np.ndarray | list, typ: pa.DataType) -> pa.Array:
    if isinstance(values, np.ma.MaskedArray):
        return pa.array(values.data, typ, mask=np.ma.getmaskarray(values))
    return pa.array(values, typ)


def _row_index(num_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Galaxy of each row and the row's index ``j`` within its galaxy."""
    gal = np.repeat(np.arange(len(num_rows)), num_rows)
    start = np.cumsum(num_rows) - num_rows
    return gal, np.arange(len(gal)) - start[gal]


def _truth_columns(
    pop: Population, rb: RenderedBatch, gal: np.ndarray, rep: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-replicate truth of the positives' rows; NULL on control rows, and on failed cutouts
    for everything measured on the stamp (all but the magnification and source position)."""
    pos_of = np.full(len(pop["ra"]), -1)
    pos_of[rb.pos_index] = np.arange(len(rb.pos_index))
    p_row = pos_of[gal]
    pos = p_row >= 0
    failed = pop["defect"][gal] == 1

    def per_rep(table: np.ndarray) -> np.ndarray:
        out = np.zeros(len(gal))
        out[pos] = table[p_row[pos], rep[pos]]
        return out

    cols = {
        k: _null_where(per_rep(rb.truth[k]), ~pos if k == "magnification" else ~pos | failed)
        for k in TRUTH_COLUMNS
    }
    for key, name in (
        ("src_x", "src_x_arcsec"),
        ("src_y", "src_y_arcsec"),
        ("src_phi", "src_phi_rad"),
    ):
        cols[name] = np.where(pos, pop[key][gal, rep], 0.0)
    return cols


def batch_table(
    pop: Population, rb: RenderedBatch, stamps: list[list[bytes]]
) -> tuple[pa.Table, list[bytes]]:
    """Every row of a rendered batch, galaxy after galaxy.

    Args:
        pop: the batch's galaxies.
        rb: their rendered images and truth.
        stamps: per galaxy, its encoded stamp (controls, failed cutouts) or one per replicate.

    Returns:
        The rows in ``table.ROW_SCHEMA`` (every column but ``stamp_npz``) and each row's
        stamp (``SplitWriters`` joins them); row ``i``'s split is
        ``SPLITS[pop["split_index"][gal_i]]``.
    """
    gal, j = _row_index(pop["num_rows"])
    rep = j % 2
    failed = pop["defect"][gal] == 1
    cols = {k: v[gal] for k, v in galaxy_columns(pop).items()}
    sel = [_SEL_NAMES[s] for s in pop["sel_sets"][gal, j // 2].tolist()]
    keys = zip(
        sel,
        [SPLITS[s] for s in pop["split_index"][gal].tolist()],
        cols["brickname"].tolist(),
        pop["ra"][gal].tolist(),
        pop["dec"][gal].tolist(),
        cols["config_id"].tolist(),
        rep.tolist(),
        strict=True,
    )
    cols["task_id"] = [task_id(*key) for key in keys]
    cols["selection_set_id"] = sel
    cols["replicate"] = rep.astype(np.int32)
    cols["cutout_ok"] = cols["metrics_ok"] = (~failed).astype(np.int32)
    cols["physics_valid"] = ~failed
    cols["physics_warnings"] = np.where(failed, FAILED_WARNING, None)
    cols.update(_truth_columns(pop, rb, gal, rep))
    table = pa.Table.from_arrays(
        [_arrow(cols[f.name], f.type) for f in ROW_SCHEMA], schema=ROW_SCHEMA
    )
    pairs = zip(gal.tolist(), rep.tolist(), strict=True)
    return table, [stamps[g][r % len(stamps[g])] for g, r in pairs]
