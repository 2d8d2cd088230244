"""tools/mix_weights.py: weight-space mixing of two models of one architecture."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import images, make_model

from tarflow.hub import load_model
from tarflow.likelihood import log_prob

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import mix_weights as mw  # noqa: E402


def _saved(tmp_path, name, **kw):
    model = make_model(num_classes=3, **kw)
    model.save_pretrained(tmp_path / name)
    return model


def test_mixed_weights_are_the_weighted_mean_and_load_as_a_model(tmp_path):
    a, b = _saved(tmp_path, "a", seed=0), _saved(tmp_path, "b", seed=1)
    out = mw.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "0.25", "--out", str(tmp_path / "mix")])
    mixed = load_model(out)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in mixed.named_parameters():
        torch.testing.assert_close(p, 0.75 * pa[name] + 0.25 * pb[name])
    assert mixed.num_classes == 3


@pytest.mark.parametrize("alpha,which", [(0.0, "a"), (1.0, "b")])
def test_the_ends_reproduce_each_model_exactly(tmp_path, alpha, which):
    models = {"a": _saved(tmp_path, "a", seed=0), "b": _saved(tmp_path, "b", seed=1)}
    out = mw.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", str(alpha), "--out", str(tmp_path / "m")])
    x, y = images(models[which]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(log_prob(load_model(out), x, y), log_prob(models[which], x, y))


def test_different_architectures_are_refused(tmp_path):
    _saved(tmp_path, "a", seed=0, channels=32)
    _saved(tmp_path, "b", seed=1, channels=48)
    with pytest.raises(SystemExit, match="channels"):
        mw.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "0.5", "--out", str(tmp_path / "m")])


def test_mismatched_tensors_are_refused():
    a = {"w": torch.zeros(2), "steps": torch.tensor([1])}
    with pytest.raises(ValueError, match="different tensors"):
        mw.mix(a, {"w": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        mw.mix(a, {"w": torch.zeros(3), "steps": torch.tensor([1])}, 0.5)
    with pytest.raises(ValueError, match="integer"):
        mw.mix(a, {"w": torch.zeros(2), "steps": torch.tensor([2])}, 0.5)
