"""Tiny models for the app tests, saved in our format (config.json + model.safetensors).

They are random but not trivial (every weight non-zero, so no block is an identity), and small
enough that a whole generate request takes a few hundredths of a second on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tarflow import TarFlow

TINY_CLASSES = ["circle", "square", "star"]


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
