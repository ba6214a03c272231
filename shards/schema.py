"""The on-disk sample schema of haloscope shards: one owner for keys, dtypes and coding.

A shard is a WebDataset tar file. Each webdataset *sample* (one key) is a packed record of up
to ``RECORD_SAMPLES`` samples, stored as three ``.npy`` members:

- ``image.npy``: (N, 3, 64, 64) float16, bands g, r, z, already normalised;
- ``meta.npy``: (N, M) float32 raw meta inputs (columns listed in the manifest);
- ``table.npy``: (N,) structured array of ``TABLE_DTYPE``: label, flags, ids and strata.

Packing many samples per member is what makes decoding cheap (``reference/loaders.md`` 6).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "BANDS",
    "STAMP_PX",
    "RECORD_SAMPLES",
    "IMAGE_MEMBER",
    "META_MEMBER",
    "TABLE_MEMBER",
    "IMAGE_DTYPE",
    "TABLE_DTYPE",
    "CONTROL_KINDS",
    "encode_control_kind",
    "decode_control_kind",
]

SCHEMA_VERSION = 2  # 2: injection-truth strata (arc_snr_sum, magnification, ...)
BANDS: tuple[str, ...] = ("g", "r", "z")
STAMP_PX = 64
RECORD_SAMPLES = 256
IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER = "image.npy", "meta.npy", "table.npy"
IMAGE_DTYPE = np.dtype(np.float16)

# Per-sample columns carried with every stamp so any score traces back to its row and
# evaluation needs no join. Floats are NaN where undefined (e.g. arc_snr of controls).
TABLE_DTYPE = np.dtype(
    [
        ("label", "u1"),  # 1 = lens (is_control == 0), 0 = control
        ("hard_neg", "u1"),  # 1 = a control matched by the hard-negative lookup
        ("copy", "u1"),  # 0..hard_neg_weight-1 for duplicated hard negatives, else 0
        ("control_kind", "u1"),  # index into CONTROL_KINDS (mock only; 0 = unknown/none)
        ("ra", "<f8"),
        ("dec", "<f8"),
        ("theta_e_arcsec", "<f4"),
        ("psf_fwhm_r", "<f4"),  # PSF FWHM used for theta/PSF (psf_fwhm_used_r else psfsize_r)
        ("psfsize_r", "<f4"),
        ("psfdepth_r", "<f4"),
        ("arc_snr", "<f4"),
        ("src_dmag", "<f4"),
        ("src_reff_arcsec", "<f4"),
        ("arc_snr_sum", "<f4"),  # integrated arc SNR (original's Gen5 column)
        ("magnification", "<f4"),
        ("arc_lens_flux_ratio", "<f4"),
        ("tangential_stretch", "<f4"),
        ("radial_stretch", "<f4"),
        ("task_id", "S64"),
        ("brickname", "S8"),
    ]
)

# Mock-only confuser kinds of controls (column control_kind); "" for lenses / real data.
CONTROL_KINDS: tuple[str, ...] = (
    "",
    "ordinary",
    "ring",
    "spiral",
    "edge_on",
    "merger",
    "blue_companion",
    "star_blend",
    "near_miss",
    "other",
)


def encode_control_kind(values: list[str | None]) -> np.ndarray:
    """Map control_kind strings to uint8 codes; unknown non-empty strings map to "other"."""
    index = {k: i for i, k in enumerate(CONTROL_KINDS)}
    other = index["other"]
    return np.array([index.get(v or "", other) for v in values], dtype=np.uint8)


def decode_control_kind(codes: np.ndarray) -> list[str | None]:
    """Inverse of ``encode_control_kind``; code 0 becomes None."""
    return [CONTROL_KINDS[c] or None for c in np.asarray(codes).tolist()]
