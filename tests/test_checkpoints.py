"""The bundled checkpoints: each loads strictly, matches its config, samples the right shape and
classes, and has a model card with its numbers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tarflow.hub import load_model
from tarflow.sampling import SampleSettings, sample

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = sorted(p.parent for p in (ROOT / "checkpoints").glob("*/config.json"))


def test_the_readme_model_is_bundled():
    assert (ROOT / "checkpoints" / "mnist" / "config.json").is_file()
    assert "checkpoints/mnist" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_checkpoint(folder):
    cfg = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size < 26e6
    model = load_model(folder)  # strict: every tensor present and shaped as the config says
    assert set(weights) == set(model.state_dict())
    T = (cfg["img_size"] // cfg["patch_size"]) ** 2
    assert weights["var"].shape == (T, cfg["in_channels"] * cfg["patch_size"] ** 2)
    assert weights["blocks.0.class_embed"].shape[0] == cfg["num_classes"] == len(cfg["class_names"])
    # named after its data: the emoji folder's model may be trained on emoji2 (the emoji in a second style too)
    assert cfg["noise_std"] > 0 and cfg["sampling"]["guidance"] > 0 and cfg["dataset"] in (folder.name,
                                                                                         f"{folder.name}2")
    classes = [0, cfg["num_classes"] - 1, cfg["class_names"][1]]
    out = sample(model, SampleSettings(num=3, classes=classes, seed=0))
    assert out.images.shape == (3, cfg["in_channels"], cfg["img_size"], cfg["img_size"])
    assert out.labels.tolist() == [0, cfg["num_classes"] - 1, 1]
    assert torch.isfinite(out.images).all() and out.images.std() > 0.1
    card = (folder / "README.md").read_text()
    for needed in ["python -m tarflow train", "bits/dim", "class-consistent", "samples.png", "samples_raw.png"]:
        assert needed in card, needed
    assert (folder / "samples.png").is_file() and (folder / "samples_raw.png").is_file()
