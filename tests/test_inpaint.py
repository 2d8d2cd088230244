"""Inpainting and repair by the exact score: masks, the climb (kept pixels bit-exact), the best of
several samples, damage, and on the bundled MNIST model with held-out digits, likelihood going up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_model
from PIL import Image

from tarflow import inpaint
from tarflow.hub import load_model
from tarflow.likelihood import log_prob, noisy_bits_per_dim
from tarflow.ood import to_unit
from tarflow.sampling import SampleSettings, sample

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"


def test_preset_masks():
    for name in ("top", "bottom", "left", "right"):
        m = inpaint.preset_mask(name, 8)
        assert m.dtype == torch.bool and m.sum() == 32
    assert inpaint.preset_mask("bottom", 8)[4:].all() and not inpaint.preset_mask("bottom", 8)[:4].any()
    assert inpaint.preset_mask("right", 8)[:, 4:].all()
    centre = inpaint.preset_mask("centre", 8)
    assert centre[2:6, 2:6].all() and centre.sum() == 16
    patches = inpaint.preset_mask("patches", 28, seed=3)
    assert 1 / 3 <= patches.float().mean() < 0.6 and torch.equal(patches, inpaint.preset_mask("patches", 28, seed=3))
    with pytest.raises(ValueError, match="unknown mask"):
        inpaint.preset_mask("diagonal", 8)


def test_climb_settings_are_checked():
    for bad in (dict(steps=0), dict(start=0.1, end=1.0), dict(end=0.0), dict(temperature=-1), dict(guidance=-1)):
        with pytest.raises(ValueError):
            inpaint.Climb(**bad)
    c = inpaint.Climb(steps=5, start=1.0, end=0.01, temperature=2.0)
    assert c.schedule(0) == (1.0, 2.0)
    assert c.schedule(4) == (pytest.approx(0.01), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_kept_pixels_are_bit_exact_and_free_ones_move(dtype, guidance):
    model = make_model(num_classes=3, in_channels=3, dtype=dtype)
    model.noise_std = 0.1
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).to(dtype)
    free = inpaint.preset_mask("patches", 8, seed=1)[None, None]
    steps = list(inpaint.climb_stream(model, x, free, torch.tensor([0, 2]), inpaint.Climb(steps=6, guidance=guidance),
                                      every=2))
    assert [s.step for s in steps] == [2, 4, 6]
    for s in steps:
        kept = ~free.expand_as(x)
        assert torch.equal(s.estimate[kept], x[kept])  # the very same floats, not merely close
        assert (s.estimate[~kept] != x[~kept]).any()
        assert s.estimate.abs().max() <= 1
    with pytest.raises(ValueError, match="no pixel"):
        list(inpaint.climb_stream(model, x, torch.zeros_like(free), None))


def test_best_of_samples_keeps_the_most_likely_composite():
    model = make_model(num_classes=3)
    model.noise_std = 0.1
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    free = inpaint.preset_mask("bottom", 8)[None, None]
    y = torch.tensor([1, 2])
    best = inpaint.best_of_samples(model, x, free, y, candidates=4, seed=7)
    # the same four draws per image, scored one by one with the image's one noise draw
    drawn = sample(model, SampleSettings(num=8, classes=[1] * 4 + [2] * 4, seed=7)).images.clamp(-1, 1)
    noise = model.noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    for i in range(2):
        cands = drawn[4 * i : 4 * i + 4]
        with torch.no_grad():
            scores = [float(log_prob(model, torch.where(free[0], c, x[i])[None] + noise[i], y[i : i + 1]))
                      for c in cands]
        assert len(set(scores)) == 4
        torch.testing.assert_close(best[i], cands[int(np.argmax(scores))])


def test_damage():
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(inpaint.corrupt(flat, "blur", 1.5), flat)  # a blur keeps a flat image
    edge = torch.cat([torch.full((1, 1, 8, 4), -1.0), torch.ones(1, 1, 8, 4)], dim=3)
    blurred = inpaint.corrupt(edge, "blur", 1.0)
    assert -1 < blurred[0, 0, 0, 3] < 0 < blurred[0, 0, 0, 4] < 1
    torch.testing.assert_close(blurred.mean(), edge.mean())  # symmetric kernel, symmetric edge
    assert torch.equal(inpaint.corrupt(edge, "blur", 0.0), edge)
    noisy = inpaint.corrupt(edge, "noise", 0.5, seed=1)
    assert noisy.abs().max() <= 1 and torch.equal(noisy, inpaint.corrupt(edge, "noise", 0.5, seed=1))
    with pytest.raises(ValueError):
        inpaint.corrupt(edge, "jpeg", 1.0)


@pytest.fixture(scope="module")
def mnist_digits():
    """The bundled MNIST model and its held-out example digits (assets/examples, in the repository)."""
    model = load_model(ROOT / "checkpoints" / "mnist")
    model.requires_grad_(False)
    files = sorted(EXAMPLES.glob("mnist-*.png"))
    arrays = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[:, None]
    labels = torch.tensor([int(f.stem.split("-")[1]) for f in files])
    return model, to_unit(torch.from_numpy(arrays)).float(), labels


def test_refilling_held_out_digits_raises_their_likelihood(mnist_digits):
    model, x, y = mnist_digits
    free = inpaint.preset_mask("bottom", 28)[None, None]
    start = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = torch.where(free, start, x)
    climb = inpaint.Climb(steps=12, start=10.0, end=0.05)
    after = inpaint.climb_to_end(model, x, free, y, climb, start=start)
    kept = ~free.expand_as(x)
    assert torch.equal(after[kept], x[kept])
    with torch.no_grad():
        gain = noisy_bits_per_dim(model, before, y) - noisy_bits_per_dim(model, after, y)
    assert (gain > 0.5).all(), gain  # every digit: more than half a bit per dimension more likely


def test_repair_climbs_back_toward_the_clean_digit(mnist_digits):
    model, x, y = mnist_digits
    damaged = inpaint.corrupt(x, "noise", 0.4)
    free = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    fixed = inpaint.climb_to_end(model, damaged, free, y, inpaint.Climb(steps=10, start=0.5, end=0.1,
                                                                         temperature=0.0), start=damaged)
    with torch.no_grad():
        assert (log_prob(model, fixed, y) > log_prob(model, damaged, y)).all()
    assert ((fixed - x) ** 2).mean() < 0.6 * ((damaged - x) ** 2).mean()
