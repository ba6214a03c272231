"""``manifest.json``: what a split directory of shards holds, written last by the converter.

The manifest is the reader's index (files, samples per record) and the provenance of the
data (preprocessing settings, rejected counts, sources, the exact command). It also carries
the meta-input statistics of the *train* split, which every split uses to standardise.

Every manifest is made by :func:`build_manifest` (explicit, checked fields in the on-disk
order of ``docs/shards.md``) and written by :func:`write_manifest`, which refuses anything
else: the converter, the benchmarks and the test fixtures all write one layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haloscope.atomic import atomic_write_text
from haloscope.errors import DataError, MissingDataError
from haloscope.shards.remote import RemotePath, open_source, split_location
from haloscope.shards.schema import RECORD_SAMPLES, SCHEMA_VERSION
from haloscope.shards.write import sha256_file

__all__ = [
    "MANIFEST_NAME",
    "FORMAT",
    "Manifest",
    "PREPROCESS_KEYS",
    "build_manifest",
    "load_manifest",
    "write_manifest",
    "check_compatible",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "haloscope-shards"
PREPROCESS_KEYS: frozenset[str] = frozenset(
    {
        "min_theta_over_psf",
        "resolvability_cut",
        "hard_neg_weight",
        "hard_neg_copies",
        "min_arc_snr",
        "hard_neg_lookup",
        "dedup",
        "seed",
        "num_buckets",
        "shard_samples",
        "stamp_px",
        "bands",
        "image_dtype",
    }
)
"""Fields a manifest's ``preprocess`` block may hold (``docs/shards.md``); each optional."""
_SHARD_KEYS = ("file", "num_samples", "records", "bytes", "sha256")
_META_KEYS = ("columns", "mean", "std")


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json`` (see ``docs/shards.md`` for every field)."""

    split_dir: Path | RemotePath
    """The split's folder, or its URL (``shards/remote.py``)."""
    split: str
    num_samples: int
    shards: list[dict[str, Any]]
    """Per shard: file, num_samples, records (samples per record), bytes, sha256,
    num_by_label, num_hard_neg."""
    counts: dict[str, int]
    """lens, control, hard_neg_samples, hard_neg_rows, duplicates_removed, ..."""
    rejected: dict[str, int]
    """reason -> rejected input rows."""
    norm: dict[str, Any]
    meta_columns: list[str]
    meta_mean: list[float]
    meta_std: list[float]
    preprocess: dict[str, Any]
    sources: dict[str, Any] = field(default_factory=dict)
    """``data_root`` and ``files`` (path, bytes, mtime_ns, rows) of the converted parquet."""
    command: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    record_samples: int = 256
    zarr: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The whole JSON document."""

    @property
    def num_records(self) -> int:
        """Packed records over all shards."""
        return sum(len(s["records"]) for s in self.shards)

    def shard_paths(self) -> list[Path | RemotePath]:
        """Paths (or URLs) of the shards, in manifest order."""
        return [self.split_dir / s["file"] for s in self.shards]


def _require(doc: dict, key: str, path: Path) -> Any:
    if key not in doc:
        raise DataError(f"{path}: manifest lacks field {key!r}; re-run `haloscope shards`")
    return doc[key]


def _read_doc(split_dir: Path | RemotePath) -> dict[str, Any]:
    path = split_dir / MANIFEST_NAME
    missing = f"{path}: no manifest (conversion unfinished or wrong --shards path?)"
    try:
        if isinstance(split_dir, RemotePath):
            source = open_source(split_dir)
            try:
                text = source.read(MANIFEST_NAME).decode()
            except MissingDataError:
                raise MissingDataError(missing) from None
        else:
            text = path.read_text()
        return json.loads(text)
    except FileNotFoundError:
        raise MissingDataError(missing) from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: unreadable manifest ({exc})") from None


def load_manifest(split_dir: str | Path | RemotePath) -> Manifest:
    """Read and check ``<split_dir>/manifest.json`` (a folder or a URL, ``shards/remote.py``).

    Raises:
        DataError: missing or unreadable manifest, wrong format or schema version, or
            per-shard counts that do not add up; the message names the file.
    """
    split_dir = split_location(split_dir)
    path = split_dir / MANIFEST_NAME
    doc = _read_doc(split_dir)
    if doc.get("format") != FORMAT:
        raise DataError(f"{path}: not a haloscope shard manifest (format={doc.get('format')!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {doc.get('schema_version')} but this haloscope "
            f"reads {SCHEMA_VERSION}; re-run `haloscope shards`"
        )
    shards = _require(doc, "shards", path)
    total = 0
    for s in shards:
        if sum(s["records"]) != s["num_samples"]:
            raise DataError(
                f"{path}: shard {s['file']} records sum to {sum(s['records'])} "
                f"but num_samples is {s['num_samples']}"
            )
        total += s["num_samples"]
    if total != _require(doc, "num_samples", path):
        raise DataError(
            f"{path}: shards hold {total} samples but num_samples is {doc['num_samples']}"
        )
    meta = _require(doc, "meta", path)
    return Manifest(
        split_dir=split_dir,
        split=_require(doc, "split", path),
        num_samples=total,
        shards=shards,
        counts=_require(doc, "counts", path),
        rejected=_require(doc, "rejected", path),
        norm=_require(doc, "norm", path),
        meta_columns=list(meta["columns"]),
        meta_mean=list(meta["mean"]),
        meta_std=list(meta["std"]),
        preprocess=_require(doc, "preprocess", path),
        sources=doc.get("sources", {}),
        command=doc.get("command", []),
        schema_version=doc["schema_version"],
        record_samples=doc.get("record_samples", 256),
        zarr=doc.get("zarr"),
        raw=doc,
    )


def _check_shards(shards: Sequence[Mapping[str, Any]], record_samples: int) -> None:
    for i, entry in enumerate(shards):
        missing = [k for k in _SHARD_KEYS if k not in entry]
        if missing:
            raise ValueError(f"build_manifest: shards[{i}] lacks {missing} (use ShardInfo.to_json)")
        records, num = entry["records"], entry["num_samples"]
        if sum(records) != num or not all(0 < n <= record_samples for n in records):
            raise ValueError(
                f"build_manifest: shards[{i}] ({entry['file']}) records {records} "
                f"must each hold 1..{record_samples} samples (record_samples) and "
                f"sum to num_samples={num}"
            )


def _check_fields(
    split: str,
    record_samples: int,
    shards: Sequence[Mapping[str, Any]],
    norm: Mapping[str, Any],
    meta: Mapping[str, Any],
    preprocess: Mapping[str, Any],
) -> None:
    """``build_manifest``'s checks; raises ValueError naming the field."""
    if not split or not isinstance(split, str):
        raise ValueError(f"build_manifest: split must be a non-empty string, got {split!r}")
    if not isinstance(record_samples, int) or record_samples < 1:
        raise ValueError(f"build_manifest: record_samples must be >= 1, got {record_samples!r}")
    _check_shards(shards, record_samples)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing or not len(meta["columns"]) == len(meta["mean"]) == len(meta["std"]):
        raise ValueError(
            f"build_manifest: meta needs columns, mean and std of one length "
            f"(missing {missing}, got {dict(meta)})"
        )
    if "method" not in norm:
        raise ValueError(f"build_manifest: norm lacks 'method', got {dict(norm)}")
    unknown = sorted(set(preprocess) - PREPROCESS_KEYS)
    if unknown:
        raise ValueError(
            f"build_manifest: unknown preprocess field(s) {unknown}; "
            f"known: {sorted(PREPROCESS_KEYS)}"
        )


def _optional_fields(
    sources: Mapping[str, Any] | None, command: Sequence[str] | None, fingerprint: str | None
) -> dict[str, Any]:
    """The optional manifest fields that are given, in document order."""
    doc: dict[str, Any] = {}
    if sources is not None:
        doc["sources"] = dict(sources)
    if command is not None:
        doc["command"] = list(command)
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint
    return doc


def build_manifest(
    *,
    split: str,
    shards: Sequence[Mapping[str, Any]],
    counts: Mapping[str, int],
    rejected: Mapping[str, int],
    norm: Mapping[str, Any],
    meta: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    record_samples: int = RECORD_SAMPLES,
    sources: Mapping[str, Any] | None = None,
    command: Sequence[str] | None = None,
    fingerprint: str | None = None,
    zarr: str | None = None,
) -> dict[str, Any]:
    """The ``manifest.json`` document of one split, in the on-disk layout, checked.

    ``num_samples`` and ``num_shards`` are derived from ``shards``.

    Args:
        split: the split's name.
        shards: per shard, ``ShardInfo.to_json()`` (file, num_samples, records, bytes, sha256,
            counts by label and hard negatives), in reading order.
        counts: sample and row counts (``lens``, ``control``, ``input_rows``, ...).
        rejected: rejected input rows by reason.
        norm: the stamp normalisation settings (``method`` and its parameters).
        meta: ``columns``, ``mean``, ``std`` (train-split statistics), optionally
            ``stats_split``, ``stats_count``.
        preprocess: conversion settings, keys from :data:`PREPROCESS_KEYS`.
        record_samples: the most samples one packed record holds.
        sources: ``data_root`` and ``files`` of the converted parquet; omitted when None.
        command: the converting argv; omitted when None.
        fingerprint: settings + sources hash of the conversion; omitted when None.
        zarr: the split's random-access store (``stamps.zarr``) or None.

    Returns:
        The JSON-able document that :func:`write_manifest` writes.

    Raises:
        ValueError: a field is missing, of the wrong kind or inconsistent (named).
    """
    _check_fields(split, record_samples, shards, norm, meta, preprocess)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "record_samples": record_samples,
        "counts": dict(counts),
        "rejected": dict(rejected),
        "norm": dict(norm),
        "meta": dict(meta),
        "preprocess": dict(preprocess),
    }
    doc.update(_optional_fields(sources, command, fingerprint))
    return doc | {
        "num_samples": sum(int(s["num_samples"]) for s in shards),
        "num_shards": len(shards),
        "zarr": zarr,
        "shards": [dict(s) for s in shards],
    }


def write_manifest(split_dir: Path, doc: dict[str, Any]) -> Path:
    """Write a :func:`build_manifest` document atomically as the split's manifest.

    Raises:
        ValueError: ``doc`` was not made by :func:`build_manifest` (no format or schema version).
    """
    if doc.get("format") != FORMAT or doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError("write_manifest: build the document with build_manifest")
    path = Path(split_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def _settings(m: Manifest) -> dict[str, Any]:
    pre = m.preprocess
    return {
        "norm_method": m.norm.get("method"),
        "norm": m.norm,
        "meta_columns": m.meta_columns,
        "meta_mean": m.meta_mean,
        "meta_std": m.meta_std,
        "stamp_px": pre.get("stamp_px", 64),
        "min_theta_over_psf": pre.get("min_theta_over_psf"),
        "hard_neg_weight": pre.get("hard_neg_weight"),
        "hard_neg_lookup": pre.get("hard_neg_lookup"),
    }


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, dict) and isinstance(want, dict):
        return have.keys() == want.keys() and all(_same(have[k], want[k]) for k in have)
    if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(have) == len(want) and all(map(_same, have, want))
    if {type(have), type(want)} <= {int, float}:
        return abs(have - want) <= max(1e-9 * max(abs(have), abs(want)), 1e-12)
    return have == want


def _same_lookup(have: dict[str, Any] | None, want: str) -> bool:
    if have is None:
        return False
    if Path(want).is_file() and have.get("sha256"):
        return sha256_file(Path(want)) == have["sha256"]
    return Path(want).resolve() == Path(str(have.get("path"))).resolve()


def check_compatible(
    manifest: Manifest, expected: dict[str, Any] | Manifest, *, against: str = "the run"
) -> None:
    """Refuse shards whose preprocessing disagrees with flags, a checkpoint or another split.

    The one compatibility rule: ``train`` checks its flags and its val split against the train
    split, ``infer`` the checkpoint against the split it scores. Numbers agree within 1e-9
    relative (JSON and float32 round trips), everything else exactly.

    Args:
        manifest: the shards' manifest.
        expected: any of ``norm`` (the whole dict), ``norm_method``, ``meta_columns``,
            ``meta_mean``, ``meta_std``, ``min_theta_over_psf``, ``stamp_px``,
            ``hard_neg_weight``, ``hard_neg_lookup`` (a path: same sha256, or same resolved
            path if the file is gone); absent keys are not checked. Or another split's
            ``Manifest``: every setting a conversion shares across splits (all but hard negatives).
        against: what ``expected`` describes in the message (``"checkpoint RUN/best.pt"``).

    Raises:
        DataError: naming the manifest, the setting, both values and the fix.
    """

    actual = _settings(manifest)
    if isinstance(expected, Manifest):
        expected = {k: v for k, v in _settings(expected).items() if not k.startswith("hard_neg")}
    for key, want in expected.items():
        if key not in actual:
            raise ValueError(f"check_compatible: unknown setting {key!r}")
        have = actual[key]
        if not (_same_lookup(have, want) if key == "hard_neg_lookup" else _same(have, want)):
            have = have.get("path") if key == "hard_neg_lookup" and have else have
            raise DataError(
                f"{manifest.split_dir / MANIFEST_NAME}: shards were made with {key}={have!r} but "
                f"{against} has {key}={list(want) if isinstance(want, tuple) else want!r}; "
                "preprocessing is fixed when shards are written: convert all splits in one "
                "`haloscope shards` run with the settings you want, or use the shards' settings"
            )
