"""Calibrated classification by likelihood: temperature fit, ECE, margins, noise averaging."""

import math

import pytest
import torch
from helpers import images, make_model

from tarflow.calibration import (
    Calibration,
    balanced_accuracy,
    calibrate,
    describe_views,
    expected_calibration_error,
    fit_temperature,
    margins_bits,
    nll_of_labels,
    noisy_class_log_likelihoods,
    posterior,
)
from tarflow.likelihood import class_log_likelihoods, log_prob


def _synthetic(true_t: float, n: int = 20000, k: int = 5, seed: int = 0):
    """Scores whose labels are drawn from softmax(scores / true_t): the fit should find true_t."""
    g = torch.Generator().manual_seed(seed)
    scores = 20 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(scores / true_t, dim=1), 1, generator=g).view(-1)
    return scores, labels


@pytest.mark.parametrize("true_t", [0.5, 8.0, 60.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_t):
    scores, labels = _synthetic(true_t)
    assert fit_temperature(scores, labels) == pytest.approx(true_t, rel=0.1)


def test_fit_temperature_is_the_minimum_of_a_dense_grid():
    scores, labels = _synthetic(5.0, n=2000)
    grid = torch.logspace(-1, 3, 2001, dtype=torch.float64)
    best = min(grid.tolist(), key=lambda t: nll_of_labels(scores, labels, t))
    fitted = fit_temperature(scores, labels)
    assert nll_of_labels(scores, labels, fitted) <= nll_of_labels(scores, labels, best) + 1e-9
    assert fitted == pytest.approx(best, rel=0.01)


def test_ece_analytic_cases():
    labels = torch.zeros(10, dtype=torch.long)
    # confidence 0.9 everywhere, right 9 times in 10: perfectly calibrated
    probs = torch.tensor([[0.9, 0.1]] * 9 + [[0.1, 0.9]], dtype=torch.float64)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # certain everywhere, right half the time: off by one half
    probs = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5, dtype=torch.float64)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5)
    # two bins: 0.6 confident and right (off by 0.4), 0.95 confident and wrong (off by 0.95)
    probs = torch.tensor([[0.6, 0.4], [0.05, 0.95]], dtype=torch.float64)
    assert expected_calibration_error(probs, torch.tensor([0, 0])) == pytest.approx((0.4 + 0.95) / 2)


def test_balanced_accuracy_weighs_classes_equally():
    scores = torch.tensor([[1.0, 0.0]] * 8 + [[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0] * 8 + [1, 1])
    assert balanced_accuracy(scores, labels) == pytest.approx((1.0 + 0.5) / 2)


def test_margins_are_bits_behind_the_winner_and_posterior_is_softmax():
    ll = torch.tensor([[0.0, -math.log(2), -3 * math.log(2)]], dtype=torch.float64)
    torch.testing.assert_close(margins_bits(ll), torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64))
    p = posterior(ll, temperature=1.0)
    torch.testing.assert_close(p, torch.tensor([[8 / 13, 4 / 13, 1 / 13]], dtype=torch.float64))
    # a temperature flattens without reordering
    p2 = posterior(ll, temperature=4.0)
    assert p2.argmax() == 0 and p2.max() < p.max()


def test_calibration_lowers_ece_of_an_overconfident_classifier_and_round_trips(tmp_path):
    scores, labels = _synthetic(30.0, n=4000)  # scores 30x too sharp
    cal = calibrate(scores, labels)
    assert cal.temperature == pytest.approx(30.0, rel=0.15)
    assert cal.ece_after < cal.ece_before / 3
    assert cal.mean_confidence_after < cal.mean_confidence_before
    assert cal.accuracy == pytest.approx(float((scores.argmax(1) == labels).double().mean()))
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal
    assert Calibration.load(tmp_path / "missing") is None
    (tmp_path / "calibration.json").write_text("{not json")
    assert Calibration.load(tmp_path) is None


def test_noise_averaged_scores_are_the_mean_over_noisy_copies():
    model = make_model(num_classes=3, dtype=torch.float64)
    x = images(model, n=2)
    torch.testing.assert_close(noisy_class_log_likelihoods(model, x, draws=0), class_log_likelihoods(model, x))
    model.noise_std = 0.1
    got = noisy_class_log_likelihoods(model, x, draws=2, seed=3)
    g = torch.Generator().manual_seed(3)
    want = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(2):
        noisy = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float32).double()
        for k in range(3):
            want[:, k] += log_prob(model, noisy, torch.full((2,), k)) / 2
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_shifted_moves_the_image_and_repeats_its_edges():
    """Against index arithmetic: out[i, j] = x[clip(i - dy), clip(j - dx)]."""
    from tarflow.calibration import shift_offsets, shifted

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).view(2, 3, 5, 6)
    for dy, dx in [(0, 0), (1, 0), (0, -1), (-2, 1), (2, 2)]:
        rows = torch.arange(5).sub(dy).clamp(0, 4)
        cols = torch.arange(6).sub(dx).clamp(0, 5)
        assert torch.equal(shifted(x, dy, dx), x[:, :, rows][:, :, :, cols]), (dy, dx)
    assert shift_offsets(1) == [(0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(shift_offsets(2)) == 25 and len(set(shift_offsets(2))) == 25


def test_shift_averaged_scores_are_the_mean_over_the_moved_copies():
    from tarflow.calibration import shift_offsets, shifted, views_per_image

    model = make_model(num_classes=3, dtype=torch.float64)
    x = images(model, n=2)
    got = noisy_class_log_likelihoods(model, x, shifts=1)
    want = torch.zeros(2, 3, dtype=torch.float64)
    for dy, dx in shift_offsets(1):
        for k in range(3):
            want[:, k] += log_prob(model, shifted(x, dy, dx), torch.full((2,), k)) / 9
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got.double(), class_log_likelihoods(model, x).double(), atol=1e-3)
    assert views_per_image(0, 1) == 9 and views_per_image(4, 1) == 36 and views_per_image(3, 0) == 3
    assert views_per_image() == 1


def test_describe_views_names_what_each_score_averages():
    assert describe_views(0.1) == ""
    assert describe_views(0.0, draws=4) == ""  # a noise-free model has no noisy copies to score
    assert describe_views(0.1, draws=4) == "4 copies of the image with the training noise (sigma 0.1) added"
    assert describe_views(0.1, shifts=1) == "the image and its 8 copies moved by up to 1 pixel"
    assert describe_views(0.1, shifts=2).startswith("the image and its 24 copies moved by up to 2 pixels")
    both = describe_views(0.05, draws=2, shifts=1)
    assert both.startswith("2 noisy copies") and "sigma 0.05" in both and "8 copies moved" in both
