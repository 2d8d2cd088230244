"""Likelihood as an out-of-distribution score: AUROC, typicality, synthetic sets, scored parts, and
the app's per-model table (built from fabricated sets, cached on disk, read back)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from app_models import make_tiny_datasets, make_tiny_models
from helpers import make_model

from app import oodcache
from tarflow import ood
from tarflow.hub import load_model
from tarflow.likelihood import add_training_noise, bits_per_dim


def pairwise_auroc(inliers, outliers) -> float:
    """The Mann-Whitney count, pair by pair: outlier above inlier scores 1, a tie 1/2."""
    wins = sum(1.0 if b > a else 0.5 if b == a else 0.0 for a in inliers for b in outliers)
    return wins / (len(inliers) * len(outliers))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_is_the_pairwise_mann_whitney_count(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 12, size=int(rng.integers(1, 30))).astype(float)  # integers: plenty of ties
    b = rng.integers(3, 15, size=int(rng.integers(1, 30))).astype(float)
    assert ood.auroc(a, b) == pytest.approx(pairwise_auroc(a, b), abs=1e-12)


def test_auroc_extremes_and_symmetry():
    a, b = np.arange(5.0), np.arange(10.0, 13.0)
    assert ood.auroc(a, b) == 1.0 and ood.auroc(b, a) == 0.0
    assert ood.auroc([1.0, 1.0], [1.0]) == 0.5
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(size=25)
    assert ood.auroc(x, y) + ood.auroc(y, x) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ood.auroc([], [1.0])


def test_typicality_of_single_images_is_the_distance_to_the_reference_mean():
    rng = np.random.default_rng(0)
    own, other = rng.normal(6, 0.2, 60), rng.normal(5.5, 0.05, 30)
    perm = np.random.default_rng(3).permutation(own.size)
    typical = own[perm[:30]].mean()
    want = pairwise_auroc(np.abs(own[perm[30:]] - typical), np.abs(other - typical))
    assert ood.typicality_auroc(own, other, batch=1, seed=3) == pytest.approx(want)
    # Too likely is caught two-sided: bits/dim alone would call these images the most typical of all.
    assert ood.auroc(own, other) < 0.1
    assert ood.typicality_auroc(own, other, batch=8) > 0.9


def test_synthetic_sets():
    c = ood.constant_images(5, 8, 3, seed=0)
    assert c.dtype == torch.uint8 and c.shape == (5, 3, 8, 8)
    assert (c == c[:, :, :1, :1]).all()  # one colour per image
    n = ood.noise_images(50, 8, 1, seed=0)
    assert n.dtype == torch.uint8 and 100 < n.float().mean() < 155 and n.float().std() > 40
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert ood.upside_down(img)[0, 0, 0].tolist() == [12, 13, 14, 15]
    assert (ood.inverted(img) + img == 255).all()


def test_scored_parts_sum_to_an_independent_bits_per_dim():
    model = make_model(num_classes=3, in_channels=3, dtype=torch.float64)
    model.noise_std = 0.1
    images = torch.randint(0, 256, (7, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    parts = ood.score_parts(model, images, batch=3, seed=5)
    assert parts.shape == (7, 2 + model.num_blocks)
    x = add_training_noise(model, (images.double() + 0.5) / 128 - 1, 5)
    with torch.no_grad():
        z, _, logdets = model(x)  # the forward pass's own log-determinant convention, no label
    nats = 0.5 * (z**2 + math.log(2 * math.pi)).sum(dim=(1, 2)) - logdets * model.num_dims
    want = (nats / model.num_dims + math.log(128)) / math.log(2)
    np.testing.assert_allclose(parts.sum(axis=1), want.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(parts.sum(axis=1), bits_per_dim(model, x).detach().numpy(), rtol=0, atol=1e-12)


@pytest.fixture()
def tiny_table_env(tmp_path, monkeypatch):
    models = make_tiny_models(tmp_path / "models")
    make_tiny_datasets(tmp_path / "data")
    monkeypatch.setenv("TARFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(oodcache, "PER_SET", 10)
    monkeypatch.setattr(oodcache, "_memory", {})
    return models, tmp_path


def test_table_scores_every_set_and_is_cached_on_disk(tiny_table_env):
    models, tmp = tiny_table_env
    model = load_model(models["tiny-cond"])
    seen = []
    table = oodcache.table(model, None, lambda frac, desc: seen.append(frac))
    assert list(table.parts) == ["held-out", "mnist", "emoji", "samples", "upside down", "inverted", "constant",
                                 "noise"]
    assert any("fashion-mnist" in note for note in table.notes)  # not prepared: skipped, and said so
    assert all(v.shape == (10, 2 + model.num_blocks) for v in table.parts.values())
    assert seen and seen[-1] == pytest.approx(1.0)
    # the own held-out set, scored independently: the first 10 of a seeded permutation of the test split
    own = oodcache._held_out("tiny", 10)
    x = add_training_noise(model, ((own.double() + 0.5) / 128 - 1).float(), 0)
    np.testing.assert_allclose(table.totals("held-out"), bits_per_dim(model, x).detach().double().numpy(), atol=1e-4)
    # every AUROC is the pairwise count against the held-out set
    for name in table.parts:
        if name != "held-out":
            assert table.auroc(name) == pytest.approx(pairwise_auroc(table.totals("held-out"), table.totals(name)))
    # on disk, under the model's fingerprint: a fresh process reads it instead of rebuilding
    files = list((tmp / "cache" / "ood").glob("*.npz"))
    assert [f.stem for f in files] == [oodcache.fingerprint(model)]
    oodcache._memory.clear()
    again = oodcache.cached(model)
    assert again is not None and again.kinds == table.kinds
    np.testing.assert_allclose(again.totals("noise"), table.totals("noise"), atol=1e-5)


def test_other_datasets_are_fitted_like_an_upload(tiny_table_env):
    models, _ = tiny_table_env
    model = load_model(models["tiny-rgb"])
    discs = oodcache._held_out("emoji", 4)
    fitted = oodcache.fitted(discs, model)
    assert fitted.shape == (4, 3, 8, 8) and fitted.dtype == torch.uint8
    grey = oodcache.fitted(oodcache._held_out("mnist", 4), model)
    assert grey.shape == (4, 3, 8, 8)
    assert (grey[:, 0] == grey[:, 1]).all()  # grey copied to RGB


def test_a_retrained_model_does_not_read_stale_numbers(tiny_table_env):
    models, _ = tiny_table_env
    model = load_model(models["tiny-rgb"])
    oodcache.table(model)
    key = oodcache.fingerprint(model)
    with torch.no_grad():
        model.blocks[0].proj_out.bias.add_(0.01)
    assert oodcache.fingerprint(model) != key
    assert oodcache.cached(model) is None


def test_a_dataset_inside_the_models_own_is_not_called_other_data(tiny_table_env):
    """emoji2 holds the emoji images: an emoji2 model's view has no "emoji" set of "other" data
    (it would be its own data, AUROC near 0.5), while an emoji model's view has mnist beside it."""
    models, _ = tiny_table_env
    model = load_model(models["tiny-rgb"])
    model.dataset = "emoji2"
    sets, kinds, notes = oodcache.image_sets(model)
    assert "emoji" not in sets and "mnist" in sets and kinds["mnist"] == "dataset"
    assert any(note.startswith("emoji2: not prepared") for note in notes)
