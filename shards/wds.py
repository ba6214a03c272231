"""A ``webdataset`` pipeline over haloscope shards, one decoded sample at a time.

For users who compose their own stages (augmentations, mixing, their own batching) with
webdataset instead of :class:`~haloscope.shards.read.ShardReader`::

    import random, webdataset as wds
    from haloscope.shards.wds import pipeline

    ds = pipeline("s3://bucket/shards/train", cache_dir="/scratch/cache")
    ds.append(wds.shuffle(1000, rng=random.Random(0)))        # seeded, never pid/time
    ds.append(wds.to_tuple("image", "label"))
    for image, label in ds: ...                               # (3, 64, 64) float16, 0 or 1

The shard list comes from the manifest (read first; never a glob), so the pipeline reads
exactly the samples ``ShardReader`` reads, in manifest order before any stage of the user's.
Local folders, ``http(s)://``, ``s3://`` and other fsspec URLs are opened with
``shards/remote.py`` (retries, one-line errors, the verified cache), not webdataset's
``gopen`` (which shells out to ``curl``/``aws`` for URLs). Unlike ``ShardReader`` it yields
samples, not batches, and it has no resume position (webdataset has none).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from webdataset import tariterators

from haloscope.errors import DataError
from haloscope.shards.manifest import Manifest, load_manifest
from haloscope.shards.remote import RemotePath, ShardCache, Source, open_source, split_location
from haloscope.shards.schema import IMAGE_MEMBER, META_MEMBER, TABLE_DTYPE, TABLE_MEMBER

__all__ = ["pipeline", "decode_record", "ID_FIELDS"]

ID_FIELDS = ("task_id", "brickname", "ra", "dec")
"""The per-sample identifiers in a sample's ``ids``."""


def _open_shards(
    data: Iterable[dict[str, Any]], source: Source, manifest: Manifest, cache: ShardCache | None
) -> Iterator[dict[str, Any]]:
    """webdataset stage: ``{"url"}`` -> ``{"url", "stream"}``, the whole shard checked
    against the manifest (size; sha256 for downloads)."""
    entries = {e["file"]: e for e in manifest.shards}
    for sample in data:
        name = str(sample["url"]).rsplit("/", 1)[-1]
        entry = entries[name]
        if not source.is_remote:
            stream: Any = open(source.describe(name), "rb")  # noqa: SIM115 - closed by tarfile
        elif cache is not None:
            stream = open(cache.fetch(source, entry), "rb")  # noqa: SIM115
        else:
            blob = source.read(name)
            if len(blob) != entry["bytes"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                raise DataError(
                    f"{source.describe(name)}: size or sha256 differs from the "
                    "manifest (corrupt or replaced shard)"
                )
            stream = io.BytesIO(blob)
        yield {**sample, "stream": stream}


def _npy(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{what}: not a .npy array ({exc})") from None


def decode_record(record: dict[str, Any], num_meta: int) -> Iterator[dict[str, Any]]:
    """The samples of one packed record (a webdataset sample of ``{key}.image.npy`` etc.).

    Yields:
        ``{"__key__": "<shard>/<record>/<i>", "__url__", "image": (3, 64, 64) float16,
        "meta": (M,) float32 raw, "label": int (1 lens, 0 control), "ids": {task_id,
        brickname, ra, dec}, "table": the TABLE_DTYPE row}``.

    Raises:
        DataError: a member missing or of the wrong dtype/shape, naming the shard and key.
    """
    what = f"{record.get('__url__')}: record {record.get('__key__')}"
    try:
        image, meta, table = (
            _npy(record[m], what) for m in (IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER)
        )
    except KeyError as exc:
        raise DataError(f"{what}: member {exc.args[0]} missing") from None
    n = len(table)
    if table.dtype != TABLE_DTYPE or image.shape[0] != n or meta.shape != (n, num_meta):
        raise DataError(
            f"{what}: image {image.shape}, meta {meta.shape}, table {table.dtype} "
            "disagree with each other or with the manifest"
        )
    shard = Path(str(record.get("__url__"))).name
    for i in range(n):
        row = table[i]
        yield {
            "__key__": f"{shard}/{record['__key__']}/{i}",
            "__url__": record.get("__url__"),
            "image": image[i],
            "meta": meta[i],
            "label": int(row["label"]),
            "ids": {
                "task_id": row["task_id"].decode(),
                "brickname": row["brickname"].decode(),
                "ra": float(row["ra"]),
                "dec": float(row["dec"]),
            },
            "table": row,
        }


def _unpack(data: Iterable[dict[str, Any]], num_meta: int) -> Iterator[dict[str, Any]]:
    for record in data:
        yield from decode_record(record, num_meta)


def pipeline(
    location: str | Path | RemotePath,
    *,
    cache_dir: str | Path | None = None,
    split_by_node: bool = True,
    split_by_worker: bool = True,
) -> Any:
    """A ``webdataset.DataPipeline`` yielding the split's samples one at a time, decoded.

    Args:
        location: a split: ``SHARDS/train``, or its ``http(s)://``, ``s3://`` or fsspec URL.
        cache_dir: for a URL, a local folder caching whole verified shards (as ShardReader);
            None: each shard is downloaded into memory and checked against the manifest.
        split_by_node: give each torch.distributed rank its own shards
            (``webdataset.split_by_node``; a no-op in one process).
        split_by_worker: give each DataLoader worker its own shards
            (``webdataset.split_by_worker``; a no-op outside workers).

    Returns:
        A pipeline of sample dicts (see :func:`decode_record`); ``append`` more stages.

    Raises:
        DataError: the manifest is missing or unreadable (at once); a shard unreadable or
            disagreeing with the manifest (while iterating).
    """
    loc = split_location(location)
    source = open_source(loc)
    manifest = load_manifest(loc)
    cache = ShardCache(cache_dir) if cache_dir is not None and source.is_remote else None
    stages: list[Any] = [wds.SimpleShardList([str(p) for p in manifest.shard_paths()])]
    stages += [wds.split_by_node] if split_by_node else []
    stages += [wds.split_by_worker] if split_by_worker else []
    stages += [
        wds.pipelinefilter(_open_shards)(source, manifest, cache),
        tariterators.tar_file_expander,
        tariterators.group_by_keys,
        wds.pipelinefilter(_unpack)(len(manifest.meta_columns)),
    ]
    return wds.DataPipeline(*stages)
