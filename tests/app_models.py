"""Tiny models for the app tests, saved in our format (config.json + model.safetensors).

They are random but not trivial (every weight non-zero, so no block is an identity), and small
enough that a whole generate request takes a few hundredths of a second on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tarflow import TarFlow

TINY_CLASSES = ["circle", "square", "star"]


def noop(*args, **kwargs) -> None:
    """A progress callback that ignores its calls."""
    return None


def randomise(model: TarFlow, seed: int, scale: float = 0.07, class_scale: float = 0.2) -> TarFlow:
    """Random weights of about ``scale``; class embeddings of ``class_scale``, which makes guidance
    well-behaved up to w = 5 and overflow by w = 10 (the tests rely on both)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("class_embed"):
                p.copy_(class_scale * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    return model.eval()


def make_tiny_models(root: Path) -> dict[str, Path]:
    """Two models under ``root``: "tiny-cond" (8x8 grey, 3 classes, 2 blocks of 16 tokens) and
    "tiny-rgb" (8x8 RGB, unconditional, 2 blocks of 4 tokens)."""
    root = Path(root)
    cond = TarFlow(1, 8, 2, 32, 2, 1, num_classes=3, head_dim=16, noise_std=0.1, class_names=TINY_CLASSES,
                   dataset="tiny", sampling={"guidance": 1.0, "temperature": 0.9})
    rgb = TarFlow(3, 8, 4, 32, 2, 1, num_classes=0, head_dim=16, noise_std=0.05, dataset="tiny-rgb",
                  sampling={"guidance": 0.0, "attn_temp": 1.5})
    paths = {"tiny-cond": root / "tiny-cond", "tiny-rgb": root / "tiny-rgb"}
    randomise(cond, 0).save_pretrained(paths["tiny-cond"])
    randomise(rgb, 1).save_pretrained(paths["tiny-rgb"])
    return paths


def write_dataset(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], test_every: int = 2
                  ) -> Path:
    """A prepared-dataset cache (tarflow.data's .npz layout) of the given uint8 (N, H, W, C) images;
    every ``test_every``-th image is held out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.arange(len(images)) % test_every == 0
    np.savez(path, images=images.astype(np.uint8), labels=labels.astype(np.int64), class_names=np.array(class_names),
             test_mask=mask, meta=np.array(json.dumps({"name": path.stem})))
    return path


def make_tiny_datasets(root: Path, n: int = 24) -> list[str]:
    """Fabricated held-out sets for the tiny models' out-of-distribution tests: "tiny" (8x8 grey,
    the tiny models' own data), "tiny-rgb", "mnist" (28x28 strokes on black) and "emoji" (32x32
    discs on white). fashion-mnist is left out on purpose (a missing dataset is skipped)."""
    rng = np.random.default_rng(0)
    root = Path(root)
    yy, xx = np.mgrid[:32, :32]
    discs = np.full((n, 32, 32, 3), 255, np.uint8)
    for i in range(n):
        inside = (yy - 16) ** 2 + (xx - 16) ** 2 < (6 + i % 8) ** 2
        discs[i][inside] = rng.integers(0, 200, 3)
    strokes = np.zeros((n, 28, 28, 1), np.uint8)
    for i in range(n):
        strokes[i, 6:22, 10 + i % 8 : 13 + i % 8] = 255
    labels = np.arange(n) % 3
    write_dataset(root / "tiny.npz", rng.integers(0, 256, (n, 8, 8, 1)), labels, TINY_CLASSES)
    write_dataset(root / "tiny-rgb.npz", rng.integers(0, 256, (n, 8, 8, 3)), labels, TINY_CLASSES)
    write_dataset(root / "mnist.npz", strokes, labels, TINY_CLASSES)
    write_dataset(root / "emoji.npz", discs, labels, TINY_CLASSES)
    return ["tiny", "tiny-rgb", "mnist", "emoji"]
