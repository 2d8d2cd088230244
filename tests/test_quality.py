"""The sample-quality judge's arithmetic (benchmarks/quality.py): Frechet distance, blur, thread use."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "quality", Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def _cross(d: int, scale: float, centre: np.ndarray) -> np.ndarray:
    """2d points centre +- scale * e_i: mean = centre, sample covariance = 2 scale^2 / (2d - 1) * I."""
    eye = np.eye(d) * scale
    return np.concatenate([eye, -eye]) + centre


def test_frechet_analytic_isotropic_case():
    d = 6
    a = _cross(d, 1.0, np.zeros(d))
    b = _cross(d, 3.0, np.full(d, 0.5))
    va, vb = 2 * 1.0**2 / (2 * d - 1), 2 * 3.0**2 / (2 * d - 1)
    # |mu_a - mu_b|^2 + tr(A + B - 2 (AB)^1/2); for A = va I and B = vb I that is d (sqrt va - sqrt vb)^2
    want = d * 0.25 + d * (np.sqrt(va) - np.sqrt(vb)) ** 2
    assert quality.frechet(a, b) == pytest.approx(want, rel=1e-10)
    assert quality.frechet(a, a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_matches_eigenvalues_of_the_product():
    """tr (A^1/2 B A^1/2)^1/2 equals the sum of square roots of the eigenvalues of AB (same spectrum)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.linalg.eigvals(ca @ cb).real.clip(0)).sum()
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross
    assert quality.frechet(a, b) == pytest.approx(want, rel=1e-9)
    assert quality.frechet(a, b) == pytest.approx(quality.frechet(b, a), rel=1e-9)


def test_blur3_averages_neighbours():
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 2, 2] = 9.0
    y = quality.blur3(x)
    assert torch.allclose(y[0, 0, 1:4, 1:4], torch.ones(3, 3))
    assert y[0, 0].sum() == pytest.approx(9.0) and y[0, 1].abs().max() == 0
    const = torch.full((1, 3, 4, 4), 0.3)
    assert torch.allclose(quality.blur3(const), const)  # replicated borders keep flat images flat


def test_judge_runs_on_one_thread_and_restores_the_setting():
    judge = quality.Judge(1, 3, 8)
    seen = []
    judge.body.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pred = quality.predict(judge, torch.zeros(4, 1, 8, 8))
        feats = quality.features(judge, torch.zeros(3, 1, 8, 8))
        assert torch.get_num_threads() == 2  # sampling afterwards gets both threads back
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1] and pred.shape == (4,) and feats.shape == (3, 128)


def test_class_accuracy_counts_each_class_alone():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    y = torch.tensor([0, 1, 1, 2, 2, 0])
    acc = quality.class_accuracy(pred, y, 4)
    assert acc[:3] == pytest.approx([0.5, 0.5, 1.0]) and np.isnan(acc[3])  # class 3 has no images


def _fine_labelled(fine: list[int], fine_category: list[int], test: list[bool]):
    from tarflow.data import ImageData

    category = np.array(fine_category)[fine]
    meta = {"per_image": ["subcategory"]}
    extra = {"subcategory": np.array(fine), "subcategory_category": np.array(fine_category)}
    return ImageData(np.zeros((len(fine), 2, 2, 1), np.uint8), category, ["a", "b"], np.array(test), "toy", meta,
                     extra)


def test_sample_plan_gives_each_judged_class_its_share():
    # subcategories 0, 1 -> category 0; 2, 3 -> category 1; training images 30:10 and 20:0 (3 only held out)
    fine = [0] * 30 + [1] * 10 + [2] * 20 + [3] * 5
    data = _fine_labelled(fine, [0, 0, 1, 1], [False] * 60 + [True] * 5)
    classes, judged = quality.sample_plan(data, "subcategory", 4, 2000)
    classes = torch.tensor(classes)
    assert judged.tolist() == [0, 0, 1, 1] and len(classes) == 4000
    assert (judged[classes[:2000]] == 0).all() and (judged[classes[2000:]] == 1).all()  # uniform over categories
    share = torch.bincount(classes, minlength=4).double() / 2000
    assert share[0] == pytest.approx(0.75, abs=0.04) and share[1] == pytest.approx(0.25, abs=0.04)
    assert share[2] == 1 and share[3] == 0  # never a subcategory without training images
    plain, ident = quality.sample_plan(data, None, 2, 3)
    assert plain == [0, 0, 0, 1, 1, 1] and ident.tolist() == [0, 1]
    with pytest.raises(ValueError, match="5 classes but toy:subcategory has 4"):
        quality.sample_plan(data, "subcategory", 5, 1)
