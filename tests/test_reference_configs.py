"""Reference-format files of the published configurations (shrunk networks, published data
shapes and file names) through every path a downloaded checkpoint takes."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import reference_configs as rc  # noqa: E402

from tarflow.__main__ import main as cli  # noqa: E402
from tarflow.hub import convert, load_model, read_state_dict  # noqa: E402

TINY = dict(width=64, blocks=2, layers=1)


@pytest.mark.parametrize("key", sorted(rc.PUBLISHED))
def test_tiny_published_file_loads_strictly_with_its_architecture(key, tmp_path):
    config = rc.PUBLISHED[key]
    arch = config.shrunk(**TINY)
    path = rc.write(config, tmp_path, arch)
    assert path.name == f"{config.dataset}_model_{arch.patch_size}_64_2_1_{config.noise:g}.pth"
    model = load_model(path)
    assert model.architecture == arch  # patch, image size, classes inferred from names and shapes
    assert model.noise_std == pytest.approx(config.noise)
    assert sum(p.numel() for p in model.parameters()) == rc.parameter_count(arch)
    state = read_state_dict(path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    if key == "afhq":
        assert model.class_names == ["cat", "dog", "wild"]


def test_published_sizes_match_the_papers():
    """Parameter counts from shapes alone, against a built model for a shrunk copy and the paper's
    published size for AFHQ (about 463M)."""
    afhq = rc.PUBLISHED["afhq"].architecture
    assert 455e6 < rc.parameter_count(afhq) < 470e6
    assert rc.PUBLISHED["imagenet128"].architecture.img_size == 128
    assert {c.architecture.num_tokens for c in rc.PUBLISHED.values()} == {1024}
    small = dataclasses.replace(afhq, channels=64, num_blocks=1, layers_per_block=2)
    assert rc.parameter_count(small) == sum(p.numel() for p in rc.random_model(small).parameters())


def test_conversion_cli_and_app_picker(tmp_path, monkeypatch):
    config = rc.PUBLISHED["imagenet64-cond"]
    path = rc.write(config, tmp_path, config.shrunk(width=64, blocks=1, layers=1))
    folder = convert(path, tmp_path / "converted")
    converted, original = load_model(folder), load_model(path)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(converted.encode(x, torch.tensor([7])), original.encode(x, torch.tensor([7])))
    out = tmp_path / "s.npz"
    cli(["sample", "--model", str(path), "--num", "1", "--class", "5", "--no-denoise", "--quiet",
         "--decode", "jacobi", "--jacobi-tol", "1e-1", "--jacobi-max-iters", "3", "--out", str(out)])
    assert out.exists()
    monkeypatch.setenv("TARFLOW_ALLOW_LOCAL_PATHS", "1")
    from app.models import ModelCache

    picked = ModelCache().get(str(path))
    assert picked.num_classes == 1000 and picked.img_size == 64
