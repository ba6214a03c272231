"""``haloscope shards --out s3://...``: converted in --staging-dir, uploaded to an S3 server on
127.0.0.1 (moto) with each split's manifest last, readable with the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pytest

from haloscope.errors import ConfigError, DataError
from haloscope.preprocess.convert.cli import main, parse_config
from haloscope.shards import upload as upload_mod
from haloscope.shards.read import ShardReader
from tests.shards.remote_servers import FAST_RETRIES, s3_server
from tests.shards.shard_fixtures import make_survey


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)


def _ids(location, **kw) -> list[bytes]:
    reader = ShardReader(
        location, batch_size=8, shuffle=False, drop_last=False, with_table=True, **kw
    )
    return [i for b in reader for i in b["table"]["task_id"][np.asarray(b["valid"])]]


def _argv(survey_root: Path, staging: Path) -> list[str]:
    return ["--data", str(survey_root), "--out", "s3://lenses/shards", "--staging-dir",
            str(staging), "--shard-samples", "64", "--record-samples", "16", "--no-progress"]  # fmt: skip


def test_out_s3_uploads_manifests_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    survey = make_survey(tmp_path, sizes={"train": 60, "val": 20, "test": 20})
    order: list[str] = []
    real_put = upload_mod._put

    def recording_put(s3, path, name):
        order.append(f"{s3.root.name}/{name}")
        return real_put(s3, path, name)

    monkeypatch.setattr(upload_mod, "_put", recording_put)
    staging = tmp_path / "staging"
    with s3_server():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lenses")
        assert main(_argv(survey.root, staging)) == 0
        for split in ("train", "val", "test"):
            mine = [k for k in order if k.startswith(f"{split}/")]
            assert mine[-1] == f"{split}/manifest.json" and len(mine) > 1
            assert _ids(f"s3://lenses/shards/{split}") == _ids(staging / split)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lenses")["Contents"]}
        assert "shards/val/stamps.zarr/zarr.json" in keys
        assert not [k for k in keys if "_work" in k or k.endswith((".lock", ".tmp"))]
        out = capsys.readouterr().out
        assert "train: s3://lenses/shards/train (" in out and "manifest.json last" in out
        # a re-run finds the shards up to date and sends nothing again
        assert main(_argv(survey.root, staging)) == 0
        assert "0 files uploaded" in capsys.readouterr().out


def test_interrupted_upload_leaves_no_stale_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    survey = make_survey(tmp_path, sizes={"train": 60, "val": 20, "test": 20})
    staging = tmp_path / "staging"

    def failing_put(s3, path, name):
        raise DataError(f"{s3.describe(name)}: upload refused (test)")

    with s3_server():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lenses")
        s3.put_object(Bucket="lenses", Key="shards/test/manifest.json", Body=b"{}")  # an old one
        monkeypatch.setattr(upload_mod, "_put", failing_put)
        with pytest.raises(DataError, match="upload refused"):
            main(_argv(survey.root, staging))
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lenses").get("Contents", [])}
    assert "shards/test/manifest.json" not in keys  # deleted before anything was sent
    assert json.loads((staging / "test" / "manifest.json").read_text())["split"] == "test"


def test_out_url_needs_s3_and_a_staging_dir(tmp_path: Path) -> None:
    data = str(tmp_path)
    with pytest.raises(ConfigError, match="needs --staging-dir"):
        parse_config(["--data", data, "--out", "s3://b/p"])
    with pytest.raises(ConfigError, match="only s3:// URLs are written directly"):
        parse_config(["--data", data, "--out", "http://127.0.0.1:1/p", "--staging-dir", data])
    assert (
        parse_config(["--data", data, "--out", "s3://b/p", "--staging-dir", data]).local_out
        == tmp_path
    )
    assert parse_config(["--data", data, "--out", data]).local_out == tmp_path
