"""Publish a converted shard root to ``s3://`` with the guarantee of a local conversion: a
split's ``manifest.json`` is the last object written, so a reader that finds it finds every
shard it lists.

Per split (a folder of the local root holding ``manifest.json``): the old remote manifest is
deleted first (a reader then sees no split rather than an old manifest over new shards), every
other file is uploaded (shards, ``stamps.zarr``; hidden temporaries, ``_work`` and lock files
are not), and the manifest last. An S3 ``PUT`` is atomic: an object is visible whole or not
at all. Objects already there with the same size and sha256 (kept in the object's metadata)
are not sent again, so re-running after an interruption is cheap. Remote objects the manifest
no longer lists are left alone: readers take the file list from the manifest, never a listing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from haloscope.atomic import is_temp_name
from haloscope.errors import ConfigError, DataError
from haloscope.shards.manifest import MANIFEST_NAME
from haloscope.shards.remote import RemotePath, S3Source, open_source, split_location

__all__ = ["upload_shards", "split_dirs"]

log = logging.getLogger(__name__)
_SHA_KEY = "sha256"  # object metadata: x-amz-meta-sha256


def split_dirs(root: Path) -> list[Path]:
    """The split folders of a local shard root (those holding a manifest), sorted."""
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))


def _files(split_dir: Path) -> Iterator[Path]:
    """Every file to upload but the manifest: shards and ``stamps.zarr``'s files."""
    for path in sorted(split_dir.rglob("*")):
        if not path.is_file() or is_temp_name(path.name) or path.name.endswith(".lock"):
            continue
        if path != split_dir / MANIFEST_NAME:
            yield path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _is_there(s3: S3Source, name: str, size: int, sha: str) -> bool:
    try:
        head = s3.client().head_object(Bucket=s3.bucket, Key=s3.key(name))
    except ClientError:
        return False
    return int(head["ContentLength"]) == size and head.get("Metadata", {}).get(_SHA_KEY) == sha


def _put(s3: S3Source, path: Path, name: str) -> bool:
    """Upload one file unless the same bytes are there; True when sent."""
    sha = _sha256(path)
    if _is_there(s3, name, path.stat().st_size, sha):
        return False

    def put() -> None:  # one PUT: the object appears whole or not at all
        with open(path, "rb") as body:
            s3.client().put_object(
                Bucket=s3.bucket, Key=s3.key(name), Body=body, Metadata={_SHA_KEY: sha}
            )

    s3.retried(name, lambda: s3.call(name, put))
    return True


def upload_shards(local_root: Path, url: str | RemotePath) -> list[str]:
    """Upload every split of ``local_root`` to ``url`` (``s3://bucket/prefix``), each split's
    manifest last.

    Returns:
        One summary line per split.

    Raises:
        ConfigError: ``url`` is not an ``s3://`` URL.
        DataError: ``local_root`` has no split with a manifest, or an upload failed (named).
    """
    target = split_location(url)
    if not isinstance(target, RemotePath) or target.scheme not in ("s3", "s3a"):
        raise ConfigError(
            f"--out {url}: only s3:// URLs are written directly; convert into a "
            "local folder and sync it afterwards (docs/shards.md)"
        )
    splits = split_dirs(local_root)
    if not splits:
        raise DataError(f"{local_root}: no <split>/{MANIFEST_NAME} to upload")
    lines = []
    for split_dir in splits:
        s3: Any = open_source(target / split_dir.name)
        s3.retried(
            MANIFEST_NAME,
            lambda s3=s3: s3.call(
                MANIFEST_NAME,
                lambda: s3.client().delete_object(Bucket=s3.bucket, Key=s3.key(MANIFEST_NAME)),
            ),
        )
        sent = kept = 0
        for path in _files(split_dir):
            if _put(s3, path, path.relative_to(split_dir).as_posix()):
                sent += 1
            else:
                kept += 1
        _put(s3, split_dir / MANIFEST_NAME, MANIFEST_NAME)
        lines.append(
            f"{split_dir.name}: {target / split_dir.name} ({sent} files uploaded, "
            f"{kept} already there, {MANIFEST_NAME} last)"
        )
        log.info(lines[-1])
    return lines
