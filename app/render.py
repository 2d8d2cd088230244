"""Pictures for the browser: crisp enlarged grids, labelled strips and matplotlib figures.

Everything returns numpy uint8 arrays (H, W) or (H, W, 3) or PIL images, which Gradio sends as PNG.
Figures use matplotlib's object API (no pyplot), so concurrent requests never share a figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from tarflow.sampling import to_uint8

GRID_TARGET_PX = 560  # displayed grids aim for about this width
GUTTER = 48  # grey between grid cells: neutral next to both black (MNIST) and white (emoji) backgrounds
INK = (40, 44, 52)
MUTED = (110, 116, 128)
HEATMAP_CMAP = "magma"
ACCENT = "#6d28d9"


def display_scale(width: int, target: int = GRID_TARGET_PX, most: int = 8) -> int:
    """Whole-number enlargement so ``width`` pixels show at about ``target`` (nearest-neighbour)."""
    return int(max(1, min(most, round(target / max(width, 1)))))


def enlarge(arr: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor: every pixel becomes a k x k block."""
    if k <= 1:
        return arr
    return np.repeat(np.repeat(arr, k, axis=0), k, axis=1)


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensors (B, C, H, W) -> uint8 (B, H, W, C); latents outside [-1, 1] are clipped,
    so noise and pictures share one brightness scale."""
    return to_uint8(images).numpy()


def squeeze_grey(arr: np.ndarray) -> np.ndarray:
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def grid_layout(num: int) -> int:
    """Images per row for a batch: as square as possible, at most 8 wide."""
    return min(8, math.ceil(math.sqrt(num)))


@dataclass(frozen=True)
class GridLayout:
    """Where each image of a batch sits in a grid: ``cells[i]`` = (row, column) of image i;
    ``row_names`` label some rows (drawn in a margin on the left)."""

    rows: int
    cols: int
    cells: tuple[tuple[int, int], ...]
    row_names: tuple[tuple[int, str], ...] = ()

    def at(self, row: int, col: int) -> int | None:
        """The image in (row, col), or None for an empty cell."""
        for i, cell in enumerate(self.cells):
            if cell == (row, col):
                return i
        return None


def plain_layout(num: int) -> GridLayout:
    """Row-major, as square as possible, at most 8 wide (``grid_layout``)."""
    cols = grid_layout(num)
    return GridLayout(math.ceil(num / cols), cols, tuple(divmod(i, cols) for i in range(num)))


def class_layout(labels: list[int], names: list[str], most: int = 8) -> GridLayout:
    """One group of rows per class, in the order the classes first appear, named in the margin;
    a class with more than ``most`` images wraps onto more rows. Without labels: ``plain_layout``."""
    if not labels or all(y < 0 for y in labels):
        return plain_layout(len(labels))
    order: list[int] = []
    for y in labels:
        if y not in order:
            order.append(y)
    groups = {y: [i for i, v in enumerate(labels) if v == y] for y in order}
    cols = min(most, max(len(g) for g in groups.values()))
    cells: list[tuple[int, int]] = [(0, 0)] * len(labels)
    names_at, row = [], 0
    for y in order:
        names_at.append((row, names[y] if y >= 0 else "no label"))
        for k, i in enumerate(groups[y]):
            cells[i] = (row + k // cols, k % cols)
        row += math.ceil(len(groups[y]) / cols)
    return GridLayout(row, cols, tuple(cells), tuple(names_at))


def label_margin(layout: GridLayout, font_px: int = 14) -> int:
    """Width in display pixels of the margin for the row names (0 without names)."""
    if not layout.row_names:
        return 0
    font = _font(font_px)
    return int(max(font.getlength(name) for _, name in layout.row_names)) + 14


def layout_grid(images: np.ndarray, layout: GridLayout, scale: int, pad: int = 2,
                highlight: int | None = None, margin: int | None = None) -> np.ndarray:
    """uint8 images (B, H, W, C) placed by ``layout``, enlarged ``scale`` times, row names drawn in a
    left margin, image ``highlight`` framed in the accent colour. RGB when there are names or a
    frame, else like the images."""
    B, H, W, C = images.shape
    out = np.full((layout.rows * (H + pad) + pad, layout.cols * (W + pad) + pad, C), GUTTER, np.uint8)
    for i, (r, c) in enumerate(layout.cells[:B]):
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[y : y + H, x : x + W] = images[i]
    big = enlarge(out, scale)
    margin = label_margin(layout) if margin is None else margin
    if not margin and highlight is None:
        return squeeze_grey(big)
    canvas = Image.new("RGB", (big.shape[1] + margin, big.shape[0]), "white")
    canvas.paste(Image.fromarray(squeeze_grey(big)).convert("RGB"), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    cell = (H + pad) * scale
    for row, name in layout.row_names if margin else ():
        draw.text((margin - 8, pad * scale + row * cell + H * scale / 2), name, fill=INK, font=_font(14),
                  anchor="rm")
    if highlight is not None and 0 <= highlight < B:
        r, c = layout.cells[highlight]
        x0, y0 = margin + c * cell, r * cell
        width = max(2, pad * scale)
        draw.rectangle((x0, y0, x0 + cell + pad * scale - 1, y0 + cell + pad * scale - 1), outline=ACCENT,
                       width=width)
    return np.asarray(canvas)


def layout_index(x: int, y: int, layout: GridLayout, size: int, scale: int, pad: int = 2,
                 margin: int = 0) -> int | None:
    """Which image of a ``layout_grid`` the display pixel (x, y) falls in (None: margin, gutter, empty)."""
    x -= margin
    cell = (size + pad) * scale
    if x < pad * scale or y < pad * scale:
        return None
    col, row = (x - pad * scale) // cell, (y - pad * scale) // cell
    if (x - pad * scale) % cell >= size * scale or (y - pad * scale) % cell >= size * scale:
        return None
    if not (0 <= col < layout.cols and 0 <= row < layout.rows):
        return None
    return layout.at(int(row), int(col))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    # matplotlib ships DejaVu Sans, so strips match the figures without any system fonts.
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def strip(panels: list[tuple[str, np.ndarray | Image.Image]], height: int = 112, gap: int = 10,
          arrows: bool = True, caption: str | None = None) -> Image.Image:
    """Labelled panels in a row (each scaled to ``height``; small ones with crisp pixels), with
    arrows between them, on white."""
    font, small = _font(13), _font(12)
    tiles = []
    for label, img in panels:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(squeeze_grey(img) if img.ndim == 3 else img)
        img = img.convert("RGB")
        factor = height / img.height
        resample = Image.NEAREST if factor >= 1 else Image.LANCZOS
        img = img.resize((max(1, round(img.width * factor)), height), resample)
        tiles.append((label, img))
    arrow_w = 16 if arrows else 0
    label_h = 22
    top = 22 if caption else 0
    width = sum(t.width for _, t in tiles) + (len(tiles) - 1) * (gap + arrow_w) + 2 * gap
    canvas = Image.new("RGB", (max(width, 1), top + height + label_h + 2 * gap // 2 + 4), "white")
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((gap, gap // 2), caption, fill=INK, font=font)
    x = gap
    y = top + gap // 2
    for n, (label, t) in enumerate(tiles):
        canvas.paste(t, (x, y))
        draw.rectangle((x - 1, y - 1, x + t.width, y + t.height), outline=(210, 214, 222))
        tw = draw.textlength(label, font=small)
        draw.text((x + (t.width - tw) / 2, y + height + 5), label, fill=MUTED, font=small)
        x += t.width
        if arrows and n < len(tiles) - 1:
            cx, cy = x + (gap + arrow_w) / 2, y + height / 2
            draw.line((cx - 7, cy, cx + 5, cy), fill=MUTED, width=2)
            draw.polygon([(cx + 8, cy), (cx + 2, cy - 5), (cx + 2, cy + 5)], fill=MUTED)
            x += gap + arrow_w
    return canvas


def panel_height(native: int, target: int = 112) -> int:
    """Strip panel height: a whole multiple of small images (crisp pixels), ``target`` for big ones."""
    return native * (target // native) if native <= target else target


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _to_array(fig: Figure) -> np.ndarray:
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8, colors="#444")


def heatmap(image: np.ndarray, bits: np.ndarray, title: str) -> np.ndarray:
    """The image next to its bits-per-pixel map (a colour bar in bits), titled with ``title``."""
    fig = _figure(6.4, 3.1)
    ax_img, ax_map = fig.subplots(1, 2, gridspec_kw={"wspace": 0.12})
    img = squeeze_grey(image)
    ax_img.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax_img.set_title("image", fontsize=9, color="#444")
    shown = ax_map.imshow(bits, cmap=HEATMAP_CMAP, interpolation="nearest")
    ax_map.set_title("bits per pixel (−log₂ p, each pixel's share)", fontsize=9, color="#444")
    for ax in (ax_img, ax_map):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=ax_map, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=8)
    bar.set_label("bits", fontsize=8)
    fig.suptitle(title, fontsize=10.5, color="#222")
    fig.subplots_adjust(left=0.02, right=0.92, bottom=0.03, top=0.82)
    return _to_array(fig)


def histogram(values: np.ndarray, title: str) -> np.ndarray:
    """Histogram of standardised latent values against the N(0, 1) density."""
    values = values[np.isfinite(values)].ravel()
    fig = _figure(4.6, 3.1)
    ax = fig.subplots()
    lim = max(4.0, float(np.abs(values).max()) if values.size else 4.0)
    lim = min(lim, 8.0)
    bins = np.linspace(-lim, lim, 41)
    ax.hist(np.clip(values, -lim, lim), bins=bins, density=True, color="#a78bfa", edgecolor="white",
            linewidth=0.6, label="z of this image")
    t = np.linspace(-lim, lim, 300)
    ax.plot(t, np.exp(-t**2 / 2) / math.sqrt(2 * math.pi), color="#1f2937", lw=1.6, label="N(0, 1)")
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("latent value", fontsize=8)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(title, fontsize=9.5, color="#222")
    _style(ax)
    fig.tight_layout()
    return _to_array(fig)


def posterior(names: list[str], probs: np.ndarray, margins: np.ndarray | None = None, calibrated: bool = False,
              top: int = 10) -> np.ndarray:
    """Horizontal bar chart of p(class | image), most likely first (at most ``top`` bars); with
    ``margins``, each bar also says how many bits less likely the image is under that class."""
    order = np.argsort(-probs)[:top]
    labels = [names[i] for i in order][::-1]
    values = probs[order][::-1]
    behind = None if margins is None else margins[order][::-1]
    fig = _figure(4.6, 0.34 * len(order) + 0.9)
    ax = fig.subplots()
    colors = ["#c4b5fd"] * (len(order) - 1) + [ACCENT]
    ax.barh(range(len(order)), values, color=colors, height=0.7)
    ax.set_yticks(range(len(order)), labels, fontsize=8.5)
    ax.set_xlim(0, 1.45 if behind is not None else 1.12)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    for i, v in enumerate(values):
        text = f"{v:.1%}" if v >= 0.001 else f"{v:.0e}"
        if behind is not None:
            text += "  · best" if behind[i] == 0 else f"  · −{behind[i]:.1f} bits"
        ax.text(v + 0.01, i, text, va="center", fontsize=8, color="#333")
    ax.set_xlabel("p(class | image), " + ("calibrated on held-out images" if calibrated else
                                          "uniform prior, not calibrated"), fontsize=8)
    _style(ax)
    fig.tight_layout()
    return _to_array(fig)
