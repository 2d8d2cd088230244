"""User images in, model-sized arrays and inputs out: safe decoding and fitting, each step recorded.

Decoding is defensive because uploads are untrusted: the size is read from the header before any
pixels are decoded, so a 20000 x 20000 image (or a decompression bomb) is refused, or for JPEG
decoded at a reduced scale, without ever allocating the full bitmap.

After decoding, the work of fitting depends on the model's size, not on the upload's shape: the
image is first reduced to at most ``work_side(size)`` pixels on its longer side (256 for the
28-32 px models, 4x the model's size for larger ones), and every later copy, mask and canvas is
made from that. For the bundled models this is under 1 MB per copy and a few milliseconds,
whatever was uploaded: a 1 x 40000 strip is fitted as a 256 x 1 one, not as a 56000-pixel square.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Largest image decoded at full size: 40 MP is ~120 MB as RGB, enough for any photo. Larger JPEGs
# are decoded at a reduced scale; anything over Pillow's own limit (~179 MP) is refused on opening.
MAX_PIXELS = 40_000_000
# Drawings come from a 336 x 336 canvas: anything over 2048 x 2048 was not drawn there.
MAX_SKETCH_PIXELS = 2048 * 2048
SKETCH_SIDE = 512  # drawings are kept at most this large (the canvas is 336 px)

# Known datasets: do they draw light things on a dark background, and how much of the frame does
# the content fill (MNIST's digits sit in a 20 x 20 box inside 28 x 28)?
DARK_BACKGROUND = {"mnist": True, "fashion-mnist": True, "emoji": False, "emoji2": False, "afhq": False}
CONTENT_FILL = {"mnist": 20 / 28, "fashion-mnist": 26 / 28, "emoji": 30 / 32, "emoji2": 30 / 32}


class BadImage(ValueError):
    """An input image that cannot be used; the message is meant for the user."""


@dataclass
class Fitted:
    """An image fitted to a model: ``array`` is uint8 (H, W, C); ``steps`` are (label, RGB or L
    PIL image) snapshots of how it got there; ``notes`` are conversions worth mentioning."""

    array: np.ndarray
    steps: list[tuple[str, Image.Image]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def work_side(size: int) -> int:
    """Longest side, in pixels, at which an image is fitted to a model of ``size`` pixels."""
    return max(256, 4 * size)


def bounded(img: Image.Image, side: int) -> Image.Image:
    """``img`` reduced to at most ``side`` pixels on its longer side (unchanged if it fits). The
    reduction shrinks by whole factors first, so it never holds more than a few copies of the
    result; modes Lanczos cannot resample (16-bit) take the nearest pixel."""
    w, h = img.size
    if max(w, h) <= side:
        return img
    scale = side / max(w, h)
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    try:
        return img.resize(target, Image.LANCZOS, reducing_gap=2.0)
    except ValueError:
        return img.resize(target, Image.NEAREST)


def open_image(source: str | Path | bytes, max_side: int | None = None, max_pixels: int | None = None,
               name: str | None = None) -> tuple[Image.Image, list[str]]:
    """Decode an untrusted image (a file, or its bytes) to an 8-bit "L" or "RGB" PIL image (alpha
    composited on white), plus notes on the conversions made. With ``max_side`` the decoded
    image is reduced to that size before any conversion. Raises BadImage with a readable reason."""
    if isinstance(source, (bytes, bytearray)):
        name = name or "the image"
        fp: Any = io.BytesIO(source)
    else:
        name = name or Path(source).name
        fp = Path(source)
    limit = max_pixels or MAX_PIXELS
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; Pillow's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise BadImage(f"{name} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF...)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"{name} is far too large to decode safely ({e})") from None
    except OSError as e:
        raise BadImage(f"could not open {name}: {e}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(f"{name} has no pixels ({w} x {h})")
    if w * h > limit:
        if img.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly, never holding the full bitmap.
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            notes.append(f"decoded the {w} x {h} JPEG at reduced size {img.size[0]} x {img.size[1]}")
        if img.size[0] * img.size[1] > limit:
            raise BadImage(f"{name} is {w} x {h} = {w * h / 1e6:.0f} megapixels; the limit is "
                           f"{limit / 1e6:.0f} MP. Please downscale it first.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.seek(0)  # first frame of an animation
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"{name} is damaged or truncated ({e})") from None
    if getattr(img, "n_frames", 1) > 1:
        notes.append("used the first frame of the animation")
    if max_side is not None and max(img.size) > max_side:
        before = img.size
        img = bounded(img, max_side)
        notes.append(f"reduced from {before[0]} x {before[1]} to {img.size[0]} x {img.size[1]} before fitting")
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        pass
    return to_8bit(img, notes), notes


def to_8bit(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit "L" (greyscale sources) or "RGB"; transparency is composited on white."""
    notes = notes if notes is not None else []
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        top = finite.max() if finite.size else 0.0
        # 16-bit data is stored as 0..65535; float data as 0..1 (or 0..255 when larger).
        if mode == "F":
            scale = 255.0 if top <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if top > 255 else 1.0
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
        notes.append(f"{'32-bit float' if mode == 'F' else '16-bit'} greyscale reduced to 8 bits")
        return Image.fromarray(arr, "L")
    if mode in ("1", "L"):
        return img.convert("L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette image expanded to RGB")
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode in ("LA", "La"):
        img = img.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in mode or "a" in mode else "RGB")
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            notes.append("transparency composited on white")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img).convert("L" if mode in ("LA", "La") else "RGB")
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img


def _border(arr: np.ndarray) -> np.ndarray:
    return np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])


def _thumb(img: Image.Image, size: int = 96) -> Image.Image:
    """A snapshot for the steps strip; small images keep crisp pixels."""
    w, h = img.size
    scale = size / max(w, h)
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale >= 1:
        return img.resize(target, Image.NEAREST)
    return bounded(img, size)


def fit(img: Image.Image, size: int, channels: int, dataset: str = "", notes: list[str] | None = None) -> Fitted:
    """Fit an "L" or "RGB" image to a model's input: the model's channels, the dataset's polarity,
    a square crop (around the content when the background is plain), then a Lanczos resize."""
    out = Fitted(array=np.zeros((size, size, channels), np.uint8), notes=list(notes or []))
    w, h = img.size
    out.steps.append((f"input {w}×{h}", _thumb(img)))
    img = bounded(img, work_side(size))  # from here on, work depends on the model's size only
    if img.size != (w, h):
        w, h = img.size
        out.steps.append((f"reduced to {w}×{h}", _thumb(img)))
    wanted_mode = "L" if channels == 1 else "RGB"
    if img.mode != wanted_mode:
        img = img.convert(wanted_mode)
        out.steps.append(("greyscale" if channels == 1 else "grey → RGB", _thumb(img)))
    arr = np.asarray(img)
    border = _border(arr).astype(np.float64)
    dark_wanted = DARK_BACKGROUND.get(dataset)
    if dark_wanted is not None and (border.mean() < 128) != dark_wanted:
        img = ImageOps.invert(img)
        arr = np.asarray(img)
        border = 255 - border
        out.steps.append(("colours inverted", _thumb(img)))
        look = "light on dark" if dark_wanted else "dark on light"
        out.notes.append(f"colours inverted: {dataset} images are {look}")

    if (w, h) != (size, size):
        img = _square(img, arr, border, dataset, out)
        if img.size != (size, size):
            # reducing_gap first shrinks by whole factors cheaply, then resamples with Lanczos.
            img = img.resize((size, size), Image.LANCZOS, reducing_gap=3.0)
            out.steps.append((f"resized {size}×{size}", _thumb(img)))
    out.array = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return out


def _square(img: Image.Image, arr: np.ndarray, border: np.ndarray, dataset: str, out: Fitted) -> Image.Image:
    """A plain background (a drawing, a scanned digit) is cropped to its content and framed like the
    training data; anything else (a photo) is centre-cropped."""
    w, h = img.size
    if border.std() < 12:
        bg = np.median(border, axis=0)
        diff = np.abs(arr.astype(np.int16) - np.asarray(bg).astype(np.int16))
        mask = (diff.max(axis=-1) if diff.ndim == 3 else diff) > 40
        if mask.any():
            ys, xs = np.nonzero(mask)
            top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            side = max(bottom - top, right - left) / CONTENT_FILL.get(dataset, 0.9)
            cy, cx = (top + bottom) / 2, (left + right) / 2
            box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
            fill = tuple(int(v) for v in np.atleast_1d(bg))
            canvas = Image.new(img.mode, (box[2] - box[0], box[3] - box[1]), fill if len(fill) > 1 else fill[0])
            canvas.paste(img.crop((max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h))),
                         (max(-box[0], 0), max(-box[1], 0)))
            out.steps.append(("cropped to content", _thumb(canvas)))
            return canvas
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        out.steps.append(("centre crop", _thumb(img)))
    return img


def load_fitted(path: str | Path, size: int, channels: int, dataset: str = "") -> Fitted:
    img, notes = open_image(path, max_side=work_side(size))
    return fit(img, size, channels, dataset, notes)


def sketch_to_image(value: object) -> Image.Image:
    """A gr.Sketchpad / ImageEditor value -> its composite, 8-bit on white, at most SKETCH_SIDE
    pixels on a side. The composite may be a file, its bytes, a PIL image or an array."""
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise BadImage("draw something first")
    if isinstance(composite, (str, Path, bytes, bytearray)):
        img, _ = open_image(composite, max_side=SKETCH_SIDE, max_pixels=MAX_SKETCH_PIXELS, name="the drawing")
        return img
    if isinstance(composite, Image.Image):
        if composite.size[0] * composite.size[1] > MAX_SKETCH_PIXELS:
            raise BadImage("the drawing is far larger than the canvas")
        return to_8bit(bounded(composite, SKETCH_SIDE))
    arr = np.asarray(composite)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise BadImage("the drawing is empty")
    if arr.shape[0] * arr.shape[1] > MAX_SKETCH_PIXELS:
        raise BadImage("the drawing is far larger than the canvas")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return to_8bit(bounded(Image.fromarray(arr, "RGBA"), SKETCH_SIDE))
    return to_8bit(bounded(Image.fromarray(arr.squeeze()), SKETCH_SIDE))


def to_model(x8: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """uint8 (H, W, C) -> the model's input (1, C, H, W): pixel centres in [-1, 1], on the model's
    device and in its dtype (float64 pixels stay exact for a float64 model)."""
    param = next(model.parameters())
    x = (torch.from_numpy(x8.astype(np.float64)) + 0.5) / 128.0 - 1.0
    return x.permute(2, 0, 1)[None].to(device=param.device, dtype=param.dtype)
