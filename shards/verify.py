"""Full verification of converted shards against their manifests (``haloscope shards --verify``).

Every shard (sha256, tar structure, samples per record, labels) and, for val/test, the
``stamps.zarr`` store (every array's metadata readable, one row per sample).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import zarr
from tqdm import tqdm

from haloscope.errors import DataError
from haloscope.shards.assemble import ZARR_ARRAYS
from haloscope.shards.index import open_shard
from haloscope.shards.manifest import MANIFEST_NAME, load_manifest
from haloscope.shards.write import sha256_file

__all__ = ["verify_split", "verify_shards", "verify_zarr"]

log = logging.getLogger(__name__)
# missing metadata: KeyError / GroupNotFoundError (an OSError); corrupt JSON: ValueError
_ZARR_ERRORS = (KeyError, ValueError, TypeError, OSError)


def verify_zarr(store: Path, num_samples: int) -> None:
    """Check a ``stamps.zarr`` store: every array's metadata readable, ``num_samples`` rows.

    Raises:
        DataError: naming the store and the array that is missing, unreadable or too short.
    """
    fix = "re-run `haloscope shards` to rebuild it"
    try:
        root = zarr.open_group(str(store), mode="r")
    except _ZARR_ERRORS as exc:
        raise DataError(f"{store}: unreadable zarr store ({exc}); {fix}") from None
    for name in ZARR_ARRAYS:
        try:
            rows = root[name].shape[0]
        except _ZARR_ERRORS as exc:
            raise DataError(
                f"{store}/{name}: array metadata missing or unreadable "
                f"({type(exc).__name__}: {exc}); {fix}"
            ) from None
        if rows != num_samples:
            raise DataError(
                f"{store}/{name}: {rows} rows but the manifest has {num_samples} samples; {fix}"
            )


def verify_split(split_dir: Path) -> str:
    """Check every shard of one split (sha256, tar structure, samples per record, labels)
    and its zarr store.

    Returns:
        A one-line summary.

    Raises:
        DataError: the first shard that disagrees with the manifest, naming the file.
    """
    manifest = load_manifest(split_dir)
    num_meta = len(manifest.meta_columns)
    for entry, path in tqdm(
        list(zip(manifest.shards, manifest.shard_paths(), strict=False)),
        desc=f"verify {split_dir.name}",
        unit="shard",
        mininterval=1.0,
    ):
        if not path.exists():
            raise DataError(f"{path}: shard listed in the manifest is missing")
        if sha256_file(path) != entry["sha256"]:
            raise DataError(f"{path}: sha256 differs from {split_dir / MANIFEST_NAME}")
        views = open_shard(path, entry["records"], num_meta)
        lens = sum(int((v.table["label"] == 1).sum()) for v in views)
        if lens != entry["num_by_label"]["1"]:
            raise DataError(
                f"{path}: {lens} lenses but the manifest says {entry['num_by_label']['1']}"
            )
    if manifest.zarr:
        verify_zarr(split_dir / manifest.zarr, manifest.num_samples)
    zarr_note = f", {manifest.zarr} checked" if manifest.zarr else ""
    return (
        f"{split_dir}: OK ({manifest.num_samples:,} samples, {len(manifest.shards)} "
        f"shards, sha256 and structure verified{zarr_note})"
    )


def verify_shards(out: Path, splits: list[str]) -> Iterator[str]:
    """Verify the splits of ``out`` that have a manifest; at least one must exist."""
    found = [s for s in splits if (out / s / MANIFEST_NAME).exists()]
    if not found:
        raise DataError(f"{out}: no <split>/{MANIFEST_NAME} for splits {', '.join(splits)}")
    for split in found:
        yield verify_split(out / split)
