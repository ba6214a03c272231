"""D4 augmentation: the 8 elements are rot90/flips, drawn per sample from a seeded generator."""

from __future__ import annotations

import torch

from haloscope.train.augment import D4_SIZE, d4_augment, d4_transform, make_generator


def _expected(img: torch.Tensor, g: int) -> torch.Tensor:
    out = torch.rot90(img, g % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if g >= 4 else out


def test_each_element_is_the_rot90_flip_it_names() -> None:
    imgs = torch.randn(D4_SIZE, 3, 8, 8)
    out = d4_transform(imgs, torch.arange(D4_SIZE))
    for g in range(D4_SIZE):
        assert torch.equal(out[g], _expected(imgs[g], g))


def test_elements_are_distinct_and_invertible_images() -> None:
    img = torch.arange(3 * 64 * 64, dtype=torch.float32).reshape(1, 3, 64, 64)
    outs = d4_transform(img.expand(D4_SIZE, -1, -1, -1), torch.arange(D4_SIZE))
    flat = {tuple(o.flatten()[:200].tolist()) for o in outs}
    assert len(flat) == D4_SIZE
    assert torch.equal(outs.sort(dim=-1).values.sum(), img.sort(dim=-1).values.sum() * D4_SIZE)


def test_generator_makes_it_reproducible_and_per_sample() -> None:
    imgs = torch.randn(256, 3, 16, 16)
    a = d4_augment(imgs, make_generator(7, 0, torch.device("cpu")))
    b = d4_augment(imgs, make_generator(7, 0, torch.device("cpu")))
    c = d4_augment(imgs, make_generator(7, 1, torch.device("cpu")))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # another rank draws other elements
    unchanged = (a == imgs).flatten(1).all(1).float().mean().item()
    assert 0.03 < unchanged < 0.3  # identity drawn for ~1/8 of the samples
    global_state = torch.get_rng_state()
    d4_augment(imgs, make_generator(7, 0, torch.device("cpu")))
    assert torch.equal(global_state, torch.get_rng_state())  # no hidden global randomness


def test_non_square_refused() -> None:
    try:
        d4_transform(torch.zeros(1, 3, 4, 5), torch.zeros(1, dtype=torch.long))
    except ValueError as exc:
        assert "square" in str(exc)
    else:
        raise AssertionError("non-square images were accepted")
