"""Pictures made from a run's recorded frames: the animation of the grid forming (GIF, and MP4
when the `av` package is installed) and the labelled side-by-side comparison figure.

MP4 is written with PyAV, whose wheel bundles an H.264 encoder (libx264): no system binary. It is
several times smaller than the GIF (164 kB against 1.2 MB for 16 mnist digits) and keeps every
colour; slide programs and browsers play both.
"""

from __future__ import annotations

from fractions import Fraction
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


def _grid_pictures(frames: list[np.ndarray], captions: list[str], block_ends: list[bool],
                   layout: GridLayout) -> tuple[list[Image.Image], list[int]]:
    """One captioned grid picture per recorded frame, and how long each is shown (ms): longer at
    the start, at each block's end and at the end."""
    _, H, W, _ = frames[0].shape
    native = layout.cols * (W + 2) + 2
    scale = display_scale(native, GIF_TARGET_PX)
    margin = label_margin(layout)
    images = [_captioned(layout_grid(f, layout, scale, margin=margin), c, 0) for f, c in zip(frames, captions)]
    durations = [BLOCK_END_MS if end else FRAME_MS for end in block_ends]
    durations[0], durations[-1] = FIRST_MS, LAST_MS
    return images, durations


def grid_gif(frames: list[np.ndarray], captions: list[str], block_ends: list[bool], layout: GridLayout,
             path: Path) -> Path:
    """Every recorded frame (uint8 (B, H, W, C) each) as one grid per GIF frame, captioned, held
    longer at the start, at each block's end and at the end; loops forever."""
    images, durations = _grid_pictures(frames, captions, block_ends, layout)
    # One palette for the whole animation (from the last frame, which has the most colours), no
    # dithering: pixel art stays crisp and the frames do not flicker.
    palette = images[-1].quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    paletted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    paletted[0].save(path, save_all=True, append_images=paletted[1:], duration=durations, loop=0,
                     optimize=False, disposal=1)
    return path


def mp4_available() -> bool:
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def grid_mp4(frames: list[np.ndarray], captions: list[str], block_ends: list[bool], layout: GridLayout,
             path: Path) -> Path:
    """The same animation as ``grid_gif`` as an H.264 MP4 with the same timing (each frame keeps
    its own duration; the last is held by repeating it at the end)."""
    import av  # optional: only this export needs it

    images, durations = _grid_pictures(frames, captions, block_ends, layout)
    width, height = images[0].width + images[0].width % 2, images[0].height + images[0].height % 2  # yuv420p: even
    ms = Fraction(1, 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = ms
        pts = 0
        for image, duration in [*zip(images, durations), (images[-1], 0)]:
            canvas = Image.new("RGB", (width, height), "white")
            canvas.paste(image, (0, 0))
            frame = av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")
            frame.pts, frame.time_base = pts, ms
            pts += duration
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
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
