"""The command line: sample to PNG/.npz, convert, info, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_model
from PIL import Image

from tarflow.__main__ import main
from tarflow.hub import load_model
from tarflow.sampling import SampleSettings, sample

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_dir(tmp_path):
    model = make_model(num_classes=3, in_channels=3)
    model.class_names = ["red", "green", "blue"]
    model.noise_std = 0.05
    model.sampling = {"guidance": 1.0}
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_sample_npz_matches_the_library(model_dir, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(model_dir), "--class", "green", "0", "--num", "5", "--seed", "3",
                 "--out", str(out), "--quiet"]) == 0
    data = np.load(out, allow_pickle=False)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (5, 8, 8, 3)
    assert data["labels"].tolist() == [1, 0, 1, 0, 1]
    want = sample(load_model(model_dir), SampleSettings(num=5, classes=["green", "0"], seed=3)).uint8()
    assert np.array_equal(data["images"], want.numpy())


def test_sample_without_class_and_without_denoising(model_dir, tmp_path):
    out = tmp_path / "u.npz"
    assert main(["sample", "--model", str(model_dir), "--num", "2", "--no-denoise", "--guidance", "0",
                 "--out", str(out), "--quiet"]) == 0
    assert np.load(out)["labels"].tolist() == [-1, -1]


def test_sample_png_grid_via_the_real_entry_point(model_dir, tmp_path):
    out = tmp_path / "grid.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tarflow", "sample", "--model", str(model_dir), "--num", "4",
                        "--class", "blue", "--nrow", "2", "--out", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert "wrote 4 samples" in r.stdout


def test_errors_are_one_line_not_tracebacks(model_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["sample", "--model", str(model_dir), "--class", "purple", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["sample", "--model", str(model_dir), "--out", str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'purple'" in err and "must end in .png or .npz" in err
    assert "Traceback" not in err


def test_convert_and_info(tmp_path, capsys):
    model = make_model(num_classes=2, in_channels=3, patch_size=4, channels=64, head_dim=64)
    src = tmp_path / "toy_model_4_64_2_2_0.10.pth"
    torch.save(model.state_dict(), src)
    assert main(["convert", str(src), str(tmp_path / "conv")]) == 0
    assert main(["info", str(tmp_path / "conv")]) == 0
    out = capsys.readouterr().out
    assert "noise_std          0.1" in out and "num_classes        2" in out
