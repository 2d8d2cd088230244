"""Pictures of the Train tab, drawn straight into pixel arrays (numpy and PIL, no matplotlib
figures): a frame has to take a few milliseconds to draw, several times a second.

The three playground panels share one view of the plane, [-BOX, BOX]^2 with y up.
"""

from __future__ import annotations

from functools import lru_cache

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw

from app.render import as_uint8, class_layout, layout_grid
from tarflow.points import BOX

PANEL = 300  # pixels per side
BACKGROUND = (255, 255, 255)
AXES = (226, 232, 240)
BORDER = (148, 163, 184)
DATA = (148, 163, 184)  # slate
SAMPLES = (109, 40, 217)  # the app's violet accent
VERTICAL = (109, 40, 217)
HORIZONTAL = (8, 145, 178)  # cyan
FAR = 1e4  # pixel coordinates are clipped here: a diverging flow must not break the drawing


@lru_cache(maxsize=1)
def _magma() -> np.ndarray:
    return (matplotlib.colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def to_pixels(xy: np.ndarray, size: int = PANEL) -> np.ndarray:
    """Plane coordinates (N, 2) -> pixel (column, row) floats; y grows upwards on the plane."""
    xy = np.nan_to_num(np.asarray(xy, dtype=np.float64), nan=FAR, posinf=FAR, neginf=-FAR)
    col = (xy[..., 0] + BOX) / (2 * BOX) * size
    row = (BOX - xy[..., 1]) / (2 * BOX) * size
    return np.clip(np.stack([col, row], -1), -FAR, FAR)


def _blank(size: int) -> np.ndarray:
    img = np.full((size, size, 3), BACKGROUND, np.uint8)
    mid = size // 2
    img[mid, :] = AXES
    img[:, mid] = AXES
    return img


def _dots(img: np.ndarray, xy: np.ndarray, colour: tuple[int, int, int], radius: int = 1) -> None:
    """Square dots of side 2 * radius at the points (in place); points off the panel are skipped."""
    size = img.shape[0]
    px = np.floor(to_pixels(xy, size)).astype(np.int64)
    inside = (px >= radius) & (px < size - radius)
    px = px[inside.all(-1)]
    for dc in range(-radius, radius):
        for dr in range(-radius, radius):
            img[px[:, 1] + dr, px[:, 0] + dc] = colour


def _border(img: np.ndarray) -> np.ndarray:
    img[[0, -1], :] = BORDER
    img[:, [0, -1]] = BORDER
    return img


def density_panel(logp: np.ndarray, size: int = PANEL) -> np.ndarray:
    """exp(log p) on its grid (row 0 at the top) as a heatmap: black = 0, the colour scale
    saturating at the 99.9th percentile so that one sharp peak does not hide the rest."""
    p = np.exp(np.nan_to_num(logp, nan=-np.inf, posinf=0.0))
    top = float(np.quantile(p, 0.999)) or 1.0
    levels = np.clip(p / top * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(_magma()[levels]).resize((size, size), Image.Resampling.BILINEAR)
    return _border(np.array(img))


def scatter_panel(data: np.ndarray, samples: np.ndarray, size: int = PANEL) -> np.ndarray:
    """The training points in grey under the flow's samples in violet."""
    img = _blank(size)
    _dots(img, data, DATA)
    _dots(img, samples, SAMPLES)
    return _border(img)


def warp_panel(lines: np.ndarray, points: np.ndarray, data: np.ndarray | None = None,
               size: int = PANEL) -> np.ndarray:
    """Grid lines (L, P, 2) as polylines, the first half (the latent grid's vertical lines) in
    violet and the rest in cyan, over faint ``data`` and the carried ``points``."""
    img = _blank(size)
    if data is not None:
        _dots(img, data, (215, 221, 230))
    _dots(img, points, (100, 116, 139), radius=1)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    half = len(lines) // 2
    for k, line in enumerate(to_pixels(lines, size)):
        draw.line([tuple(p) for p in line], fill=VERTICAL if k < half else HORIZONTAL, width=1)
    return _border(np.array(canvas))


def digit_grid(images: torch.Tensor, labels: list[int], class_names: list[str], scale: int = 2) -> np.ndarray:
    """Samples in [-1, 1] (B, 1, H, W), one row per class with its name."""
    per_row = max(labels.count(c) for c in set(labels))
    layout = class_layout(labels, class_names, most=per_row)
    return layout_grid(as_uint8(images), layout, scale)
