"""Checkpoints: weights_only-loadable, atomic, inference rebuild, clear errors, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from haloscope.errors import CheckpointError
from haloscope.train.augment import make_generator
from haloscope.train.checkpoint import (
    CheckpointWriter,
    capture_rng,
    load_checkpoint,
    load_for_inference,
    restore_rng,
    save_checkpoint,
)
from haloscope.train.model import build_model

ARGS = {
    "arch": "convnext_atto",
    "meta_cols": ["psfsize_r", "psfdepth_r"],
    "meta_mean": [1.3, 24.5],
    "meta_std": [0.2, 0.5],
    "dropout": 0.1,
    "drop_path_rate": 0.1,
}


def _payload(model: torch.nn.Module) -> dict:
    return {
        "model": model.state_dict(),
        "model_args": ARGS,
        "config": '{"run": {"seed": 1}}',
        "preprocess": {"norm": {"method": "outer"}, "min_theta_over_psf": 0.5},
        "meta": {"cols": ARGS["meta_cols"], "mean": ARGS["meta_mean"], "std": ARGS["meta_std"]},
        "progress": {"epoch": 3, "step_in_epoch": 0, "global_step": 30, "world_size": 1},
        "val_metrics": {"val/auroc": np.float64(0.9)},
        "rng": capture_rng(None),
    }


def test_inference_model_scores_like_the_trained_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(**ARGS).eval()
    path = save_checkpoint(tmp_path / "best.pt", _payload(model))
    assert not list(tmp_path.glob(".*tmp"))
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == "haloscope-train" and raw["val_metrics"]["val/auroc"] == 0.9
    loaded, info = load_for_inference(path, "cpu")
    assert not loaded.training
    assert (
        info["meta_cols"] == ARGS["meta_cols"] and info["preprocess"]["norm"]["method"] == "outer"
    )
    assert info["epoch"] == 3 and info["config"] == {"run": {"seed": 1}}
    x, meta = torch.randn(4, 3, 64, 64), torch.tensor([[1.3, 24.5]] * 4)
    with torch.no_grad():
        assert torch.equal(loaded(x, meta), model(x, meta))  # raw meta in, same logits


def test_missing_corrupt_and_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_for_inference(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_for_inference(bad)
    other = tmp_path / "other.pt"
    torch.save({"model_state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a haloscope training checkpoint"):
        load_checkpoint(other)
    payload = _payload(build_model(**ARGS))
    payload["model_args"] = {**ARGS, "arch": "convnext_femto"}
    save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(CheckpointError, match="weights do not match convnext_femto"):
        load_for_inference(tmp_path / "mismatch.pt")
    payload["model_args"] = {**ARGS, "meta_cols": ["arc_snr", "psfsize_r"]}
    save_checkpoint(tmp_path / "leaky.pt", payload)
    with pytest.raises(CheckpointError, match="cannot rebuild its model"):
        load_for_inference(tmp_path / "leaky.pt")


def test_rng_states_round_trip_through_a_file(tmp_path: Path) -> None:
    gen = make_generator(5, 0, torch.device("cpu"))
    torch.manual_seed(1), np.random.seed(2), random.seed(3)  # noqa: B018
    save_checkpoint(tmp_path / "r.pt", {**_payload(build_model(**ARGS)), "rng": capture_rng(gen)})
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # noqa: B018
    gen2 = make_generator(99, 0, torch.device("cpu"))
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"], gen2)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen2))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_background_writer_snapshots_now_and_surfaces_its_error(tmp_path: Path) -> None:
    model = build_model(**ARGS)
    writer = CheckpointWriter()
    payload = _payload(model)
    want = {k: v.clone() for k, v in payload["model"].items()}
    writer.save([tmp_path / "a.pt", tmp_path / "b.pt"], lambda: payload, torch.device("cpu"))
    with torch.no_grad():  # the next steps change the weights in place: the copy is taken
        for p in model.parameters():
            p.add_(1.0)
    writer.join()
    for name in ("a.pt", "b.pt"):
        got = load_checkpoint(tmp_path / name)["model"]
        assert all(torch.equal(got[k], v) for k, v in want.items())
    (tmp_path / "file").write_text("a file, not a folder")
    missing = tmp_path / "file" / "last.pt"
    with pytest.raises(OSError) as direct:  # what a direct write says
        save_checkpoint(missing, payload)
    writer.save([missing], lambda: payload, torch.device("cpu"))
    with pytest.raises(type(direct.value)) as late:  # the thread's error, in the caller
        writer.join()
    assert str(late.value) == str(direct.value) and "file" in str(late.value)
    writer.save([missing], lambda: payload, torch.device("cpu"))
    with pytest.raises(type(direct.value)):  # or at the next save, which waits first
        writer.save([tmp_path / "c.pt"], lambda: payload, torch.device("cpu"))
    writer.close(raising=False)  # nothing left in flight


def test_one_state_to_two_files_is_written_once_and_later_saves_leave_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(**ARGS)
    writer = CheckpointWriter()
    payload = _payload(model)
    want = {k: v.clone() for k, v in payload["model"].items()}
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    writer.save([last, best], lambda: payload, torch.device("cpu"))
    writer.join()
    assert last.stat().st_ino == best.stat().st_ino  # a hard link: serialised once
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    writer.save([last], lambda: _payload(model), torch.device("cpu"))  # a later epoch
    writer.join()
    assert last.stat().st_ino != best.stat().st_ino
    kept = load_checkpoint(best)["model"]
    assert all(torch.equal(kept[k], v) for k, v in want.items())  # best.pt as it was
    key = "classifier.0.weight"
    assert not torch.equal(load_checkpoint(last)["model"][key], kept[key])

    def no_links(*_args: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("haloscope.atomic.os.link", no_links)  # e.g. some network file systems
    writer.save([last, best], lambda: _payload(model), torch.device("cpu"))
    writer.join()
    assert last.stat().st_ino != best.stat().st_ino and last.read_bytes() == best.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.gpu
def test_cuda_writer_snapshots_on_the_device_before_the_next_steps(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = build_model(**ARGS).cuda()
    writer = CheckpointWriter()
    payload = _payload(model)
    want = {k: v.detach().cpu().clone() for k, v in payload["model"].items()}
    writer.save([tmp_path / "a.pt", tmp_path / "b.pt"], lambda: payload, torch.device("cuda"))
    with torch.no_grad():  # queued right after the snapshot, before the thread copies it
        for _ in range(20):
            for p in model.parameters():
                p.mul_(1.5).add_(1.0)
    writer.join()
    for name in ("a.pt", "b.pt"):
        got = load_checkpoint(tmp_path / name)["model"]
        assert all(torch.equal(got[k], v) for k, v in want.items())
