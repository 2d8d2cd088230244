"""The held-out bits/dim range (heldout.json): the statistic, its percentiles, the stored file."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import make_model

from tarflow.heldout import HELDOUT_FILE, HeldOutRange, image_bits_per_dim, pixel_centres
from tarflow.likelihood import log_prob


def test_the_statistic_is_minus_log2_p_of_pixel_centres_per_dimension_plus_the_bin_width():
    model = make_model(num_classes=3)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 8, 8), generator=g, dtype=torch.uint8)
    got = image_bits_per_dim(model, images, batch_size=2)  # batching must not change anything
    x = (images.float() + 0.5) / 128 - 1
    with torch.no_grad():
        expected = (-log_prob(model, x, None) / 64 + math.log(128)) / math.log(2)
    assert torch.allclose(got, expected.double(), atol=1e-4)
    assert float(pixel_centres(torch.tensor([0, 255], dtype=torch.uint8))[0]) == pytest.approx(-1 + 0.5 / 128)


def test_percentiles_match_numpy_and_the_file_round_trips(tmp_path):
    values = torch.linspace(5.0, 7.0, 201, dtype=torch.float64)
    r = HeldOutRange.measure(values, "mnist", note="test")
    for p in (1, 50, 99):
        assert r.pct(p) == pytest.approx(np.percentile(values.numpy(), p), abs=1e-4)
    assert (r.min, r.max, r.images) == (5.0, 7.0, 201)
    r.save(tmp_path)
    assert HeldOutRange.load(tmp_path) == r
    assert json.loads((tmp_path / HELDOUT_FILE).read_text())["percentiles"]["50"] == 6.0


def test_rank_words_follow_the_one_to_ninety_nine_band():
    r = HeldOutRange.measure(torch.linspace(5.0, 6.0, 1001, dtype=torch.float64), "x")
    assert r.rank(5.5) == "typical"
    assert r.rank(4.9) == "unusually low"
    assert r.rank(6.05) == "unusually high"
    assert r.rank(7.2) == "far above"  # beyond the 99th percentile by more than the band's width


def test_missing_or_malformed_files_read_as_none(tmp_path):
    assert HeldOutRange.load(tmp_path) is None
    (tmp_path / HELDOUT_FILE).write_text('{"dataset": "x", "images": 3}')
    assert HeldOutRange.load(tmp_path) is None
    (tmp_path / HELDOUT_FILE).write_text("not json")
    assert HeldOutRange.load(tmp_path) is None
    with pytest.raises(ValueError):
        HeldOutRange.measure(torch.zeros(0), "x")
