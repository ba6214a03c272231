"""One train loader for the whole run: ``ShardReader.span_epochs`` yields, in one iteration,
exactly the batches that a loader restarted every epoch would, for any number of workers,
from a mid-epoch resume position too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from haloscope.errors import ConfigError
from haloscope.shards.read import ShardReader, build_loader


def _ids(batches) -> list[list[float]]:
    # the image means identify the samples (the test shards are random per sample)
    return [b["image"].float().mean(dim=(1, 2, 3)).tolist() for b in batches]


def _per_epoch(split: Path, epochs: range, per_epoch: int, start: int = 0) -> list:
    reader = ShardReader(split, batch_size=8, seed=5, shuffle=True, drop_last=True)
    out = []
    for epoch in epochs:
        reader.set_epoch(epoch)
        if epoch == epochs.start and start:
            reader.load_state_dict({**reader.state_dict(), "batches_consumed": start})
        it = iter(build_loader(reader, num_workers=0, pin_memory=False))
        out += _ids(
            next(it) for _ in range((per_epoch - start) if epoch == epochs.start else per_epoch)
        )
    return out


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_spanning_loader_equals_one_loader_per_epoch(tiny_shards: Path, workers: int) -> None:
    split = tiny_shards / "train"  # 96 samples: 12 batches of 8 per epoch
    want = _per_epoch(split, range(2, 5), per_epoch=5, start=3)
    reader = ShardReader(split, batch_size=8, seed=5, shuffle=True, drop_last=True)
    reader.set_epoch(2)
    reader.load_state_dict({**reader.state_dict(), "batches_consumed": 3})
    reader.span_epochs(3, 5)
    got = _ids(build_loader(reader, num_workers=workers, pin_memory=False))
    assert len(got) == 2 + 5 + 5
    assert got == want


def test_span_arguments_are_checked(tiny_shards: Path) -> None:
    reader = ShardReader(tiny_shards / "train", batch_size=8, seed=5)
    with pytest.raises(ConfigError, match="span_epochs"):
        reader.span_epochs(0)
    with pytest.raises(ConfigError, match="span_epochs"):
        reader.span_epochs(2, 13)
    reader.span_epochs(2)  # all 12 batches of 2 epochs
    assert sum(1 for _ in reader) == 24
    assert torch.equal(next(iter(reader))["image"], next(iter(reader))["image"])
