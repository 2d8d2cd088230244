"""Small image helpers shared by the CLI, training and the app: grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tarflow.sampling import to_uint8


def grid(images: torch.Tensor | np.ndarray, nrow: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """A batch of images, [-1, 1] floats (B, C, H, W) or uint8 (B, H, W, C), -> one uint8 grid
    (H', W', C) with ``nrow`` images per row (default: as square as possible)."""
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        images = to_uint8(images)
    arr = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    if arr.ndim != 4:
        raise ValueError(f"expected a batch of images (B, H, W, C), got shape {arr.shape}")
    B, H, W, C = arr.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    out = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), fill, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[y : y + H, x : x + W] = arr[i]
    return out


def to_pil(arr: np.ndarray) -> Image.Image:
    """(H, W, 1|3) uint8 -> a PIL image (greyscale or RGB)."""
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_png(arr: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a uint8 (H, W, C) array as PNG, optionally enlarged with nearest-neighbour pixels."""
    img = to_pil(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
