"""Input checks: every value from the browser or the API becomes what a handler needs, or a
``gr.Error`` whose one sentence says what to change.

The widgets limit what a visitor can pick, but the API accepts anything, so nothing here trusts
the widgets.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import torch

from app.inputs import BadImage, Fitted, load_fitted
from app.models import MODELS, ModelLoadError
from tarflow.model import TarFlow
from tarflow.sampling import resolve_labels

AUTO, NO_LABEL = "auto", "none"  # "condition on" choices besides the class names
LONGEST_MESSAGE = 200  # characters; a core error listing 1000 class names is cut to its start


def number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float:
    """``value`` as a finite number in [lo, hi] (an int when ``integer``)."""
    if isinstance(value, bool):
        raise gr.Error(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise gr.Error(f"{name} must be a finite number, got {value!r}")
    if integer and v != int(v):
        raise gr.Error(f"{name} must be a whole number, got {v:g}")
    if not lo <= v <= hi:
        span = f"{int(lo)} and {int(hi)}" if integer else f"{lo:g} and {hi:g}"
        raise gr.Error(f"{name} must be between {span}, got {v:g}")
    return int(v) if integer else v


def choice(value: Any, name: str, options: list[tuple[str, str]]) -> str:
    """``value`` if it is one of the (label, value) ``options``."""
    allowed = [v for _, v in options]
    if value not in allowed:
        raise gr.Error(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def load_model(key: str, progress: gr.Progress | None = None, dtype: torch.dtype = torch.float32) -> TarFlow:
    """The model picked (loaded once per process), reporting download and load progress."""
    def report(frac: float | None, desc: str) -> None:
        if progress is not None:
            progress(frac, desc=desc)

    try:
        return MODELS.get(str(key or ""), report, dtype)
    except ModelLoadError as e:
        raise gr.Error(f"Could not load the model: {e}", title="Model not available") from None


def sentence(message: str) -> str:
    """A core error as a message for the page: capitalised, and cut short at a comma when long."""
    text = message[:1].upper() + message[1:]
    if len(text) <= LONGEST_MESSAGE:
        return text
    cut = text.rfind(", ", 0, LONGEST_MESSAGE)
    return (text[:cut] if cut > 0 else text[:LONGEST_MESSAGE]) + " ..."


def class_labels(model: TarFlow, classes: Any, most: int) -> list[int]:
    """Class names (or indices, as numbers or strings) -> indices, -1 meaning no label; an empty
    choice is no label at all. The naming itself is the core's (``resolve_labels``)."""
    if classes is None or classes == "" or classes == []:
        return []
    items = [classes] if isinstance(classes, (str, int)) else list(classes)
    if len(items) > max(most, model.num_classes):
        raise gr.Error(f"{len(items)} classes chosen; at most one per image is used")
    # Strings only: the core reads True as class 1, the page means a name.
    names = [str(c).strip() for c in items]
    try:
        return resolve_labels(model, names, len(names)).tolist()
    except ValueError as e:
        raise gr.Error(sentence(str(e))) from None


def condition(model: TarFlow, value: Any) -> int | None | str:
    """A "condition on" choice -> a class index, None (no label) or AUTO (the most likely class)."""
    value = AUTO if value in (None, "") else str(value)
    if value == AUTO:
        return AUTO if model.num_classes else None
    if value == NO_LABEL or not model.num_classes:
        return None
    label = class_labels(model, [value], 1)[0]
    return None if label < 0 else label


def image(model: TarFlow, path: Any) -> Fitted:
    """An uploaded or drawn image file, fitted to the model's size and channels."""
    if path is None or path == "":
        raise gr.Error("Upload, draw or pick an image first.")
    try:
        return load_fitted(str(path), model.img_size, model.in_channels, model.dataset)
    except BadImage as e:
        raise gr.Error(str(e), title="Cannot use this image") from None
