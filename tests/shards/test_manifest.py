"""The one manifest builder: checked fields, the on-disk layout, and what the reader parses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from haloscope.shards.manifest import MANIFEST_NAME, build_manifest, load_manifest, write_manifest
from haloscope.shards.schema import SCHEMA_VERSION, TABLE_DTYPE
from haloscope.shards.write import write_shard

# the converter's order (docs/shards.md); existing manifests were written in it
LAYOUT = [
    "format",
    "schema_version",
    "split",
    "record_samples",
    "counts",
    "rejected",
    "norm",
    "meta",
    "preprocess",
    "sources",
    "command",
    "fingerprint",
    "num_samples",
    "num_shards",
    "zarr",
    "shards",
]


def _shard(tmp_path, n: int = 20) -> dict:
    image = np.zeros((n, 3, 64, 64), np.float16)
    table = np.zeros(n, TABLE_DTYPE)
    table["label"] = np.arange(n) % 2
    return write_shard(
        tmp_path / "shard-000000.tar", image, np.zeros((n, 2), np.float32), table, record_samples=8
    ).to_json()


def _fields(tmp_path, **changes) -> dict:
    fields = {
        "split": "val",
        "shards": [_shard(tmp_path)],
        "counts": {"lens": 10, "control": 10},
        "rejected": {"unresolved": 2},
        "norm": {"method": "outer", "clip": 10.0},
        "meta": {"columns": ["psfsize_r", "psfdepth_r"], "mean": [1.3, 24.5], "std": [0.2, 0.5]},
        "preprocess": {"min_theta_over_psf": 0.5, "hard_neg_lookup": None, "stamp_px": 64},
        "record_samples": 8,
        "sources": {"data_root": "data", "files": []},
        "command": ("haloscope", "shards"),
        "fingerprint": "abc",
        "zarr": "stamps.zarr",
    }
    return fields | changes


def test_built_manifest_has_the_on_disk_layout_and_reads_back(tmp_path):
    doc = build_manifest(**_fields(tmp_path))
    assert list(doc) == LAYOUT
    assert doc["format"] == "haloscope-shards" and doc["schema_version"] == SCHEMA_VERSION
    assert doc["num_samples"] == 20 and doc["num_shards"] == 1
    assert doc["command"] == ["haloscope", "shards"]
    write_manifest(tmp_path, doc)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == doc
    manifest = load_manifest(tmp_path)
    assert manifest.num_samples == 20 and manifest.record_samples == 8
    assert manifest.meta_columns == ["psfsize_r", "psfdepth_r"] and manifest.zarr == "stamps.zarr"
    assert manifest.sources == {"data_root": "data", "files": []}


def test_optional_provenance_is_left_out_when_not_given(tmp_path):
    fields = _fields(tmp_path)
    for key in ("sources", "command", "fingerprint", "zarr"):
        del fields[key]
    doc = build_manifest(**fields)
    assert list(doc) == [k for k in LAYOUT if k not in ("sources", "command", "fingerprint")]
    assert doc["zarr"] is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"meta": {"columns": ["a"], "mean": [0.0]}}, "meta needs columns, mean and std"),
        ({"meta": {"columns": ["a", "b"], "mean": [0.0], "std": [1.0]}}, "of one length"),
        ({"norm": {"clip": 10.0}}, "norm lacks 'method'"),
        (
            {"preprocess": {"hard_neg_path": None}},
            r"unknown preprocess field\(s\) \['hard_neg_path'\]",
        ),
        ({"split": ""}, "split must be a non-empty string"),
        ({"record_samples": 4}, r"must each hold 1\.\.4 samples"),
    ],
)
def test_builder_rejects_missing_or_inconsistent_fields(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        build_manifest(**_fields(tmp_path, **change))


def test_builder_rejects_a_shard_entry_without_its_checksum_or_with_wrong_counts(tmp_path):
    entry = _shard(tmp_path)
    no_sha = {k: v for k, v in entry.items() if k != "sha256"}
    with pytest.raises(ValueError, match=r"shards\[0\] lacks \['sha256'\]"):
        build_manifest(**_fields(tmp_path, shards=[no_sha]))
    with pytest.raises(ValueError, match="sum to num_samples=21"):
        build_manifest(**_fields(tmp_path, shards=[entry | {"num_samples": 21}]))
    with pytest.raises(TypeError, match="preprocess"):  # a required field left out
        fields = _fields(tmp_path)
        del fields["preprocess"]
        build_manifest(**fields)


def test_write_manifest_takes_only_built_documents(tmp_path):
    doc = build_manifest(**_fields(tmp_path))
    plain = {k: v for k, v in doc.items() if k not in ("format", "schema_version")}
    with pytest.raises(ValueError, match="build_manifest"):
        write_manifest(tmp_path, plain)
    assert not (tmp_path / MANIFEST_NAME).exists()
