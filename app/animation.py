"""Pictures made from a run's recorded frames: the animated GIF of the grid forming, and the
labelled side-by-side comparison figure.

GIF only. An MP4 needs an H.264 encoder: the `av` package (PyAV 18.1) bundles one (libx264) in a
36 MB wheel, without a system binary, but that is a new dependency of the Space for a second format
of the same animation; every browser and slide program plays GIFs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.render import GUTTER, INK, MUTED, GridLayout, _font, display_scale, enlarge, label_margin, layout_grid

GIF_TARGET_PX = 480  # slides want a picture that stays crisp when enlarged, not a huge file
FRAME_MS, BLOCK_END_MS, FIRST_MS, LAST_MS = 70, 350, 700, 2500
CAPTION_H = 26


def _captioned(grid: np.ndarray, caption: str, width: int) -> Image.Image:
    img = Image.fromarray(grid).convert("RGB")
    canvas = Image.new("RGB", (max(width, img.width), img.height + CAPTION_H), "white")
    canvas.paste(img, (0, CAPTION_H))
    ImageDraw.Draw(canvas).text((6, CAPTION_H // 2), caption, fill=INK, font=_font(13), anchor="lm")
    return canvas


def grid_gif(frames: list[np.ndarray], captions: list[str], block_ends: list[bool], layout: GridLayout,
             path: Path) -> Path:
    """Every recorded frame (uint8 (B, H, W, C) each) as one grid per GIF frame, captioned, held
    longer at the start, at each block's end and at the end; loops forever."""
    _, H, W, _ = frames[0].shape
    native = layout.cols * (W + 2) + 2
    scale = display_scale(native, GIF_TARGET_PX)
    margin = label_margin(layout)
    images = [_captioned(layout_grid(f, layout, scale, margin=margin), c, 0) for f, c in zip(frames, captions)]
    # One palette for the whole animation (from the last frame, which has the most colours), no
    # dithering: pixel art stays crisp and the frames do not flicker.
    palette = images[-1].quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    paletted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    durations = [BLOCK_END_MS if end else FRAME_MS for end in block_ends]
    durations[0], durations[-1] = FIRST_MS, LAST_MS
    path.parent.mkdir(parents=True, exist_ok=True)
    paletted[0].save(path, save_all=True, append_images=paletted[1:], duration=durations, loop=0,
                     optimize=False, disposal=1)
    return path


def comparison(columns: list[tuple[str, np.ndarray | None]], size: int, channels: int, rows: int,
               row_names: list[str] | None = None, title: str = "", target: int = 112) -> np.ndarray:
    """Labelled columns of images (uint8 (R, H, W, C) each; None for a column not drawn yet or that
    failed, shown as a grey panel) side by side, one header per column, optional row names."""
    scale = max(1, target // size)
    cell = size * scale
    gap, head = 10, 30
    top = 24 if title else 0
    names = row_names or []
    font = _font(13)
    left = (int(max(font.getlength(n) for n in names)) + 16) if names else gap
    width = left + len(columns) * (cell + gap)
    height = top + head + rows * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill=INK, font=font)
    for k, (label, images) in enumerate(columns):
        x = left + k * (cell + gap)
        draw.text((x + cell / 2, top + head / 2), label, fill=INK, font=_font(14), anchor="mm")
        for r in range(rows):
            y = top + head + r * (cell + gap)
            if images is None or r >= len(images):
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(GUTTER, GUTTER, GUTTER))
                continue
            tile = enlarge(images[r], scale)
            tile = tile[..., 0] if channels == 1 else tile
            canvas.paste(Image.fromarray(tile).convert("RGB"), (x, y))
    for r, name in enumerate(names[:rows]):
        draw.text((left - 8, top + head + r * (cell + gap) + cell / 2), name, fill=MUTED, font=font, anchor="rm")
    return np.asarray(canvas)
