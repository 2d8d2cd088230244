"""Latent interpolation (on the Invert page): encode two images, walk between their latents,
decode every point."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import torch

from app import captions, checks, limits, render
from app.checks import AUTO, NO_LABEL
from app.inputs import to_model
from app.models import pick_device
from tarflow.model import TarFlow
from tarflow.sampling import reverse_stream, slerp

MAX_INTERPOLATION_STEPS = 16
PATHS = [("spherical (keeps |z|)", "slerp"), ("linear", "linear")]


def interpolate(model_key: str, image_a: str | None, image_b: str | None, steps: int = 8, path: str = "slerp",
                condition: str = NO_LABEL, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, str]:
    """Encode two images, blend their latents, decode the path. Returns (strip, caption)."""
    steps = checks.number(steps, "Steps", 2, MAX_INTERPOLATION_STEPS, integer=True)
    path = checks.choice(path or "slerp", "Path", PATHS)
    model = checks.load_model(model_key, progress)
    cond = checks.condition(model, condition if condition not in (None, "", AUTO) else NO_LABEL)
    if image_a in (None, "") or image_b in (None, ""):
        raise gr.Error("Choose two images (A and B) to interpolate between.")
    job = limits.interpolate_job(model, steps, pick_device().type).check()
    fa, fb = checks.image(model, image_a), checks.image(model, image_b)
    xs = torch.cat([to_model(fa.array, model), to_model(fb.array, model)])
    y = None if cond is None else torch.tensor([cond, cond], device=xs.device)
    progress(0.2, desc="encoding A and B")
    with torch.no_grad():
        zs = model.encode(xs, y)
    ts = [i / (steps - 1) for i in range(steps)]
    blend = [(slerp if path == "slerp" else torch.lerp)(zs[0], zs[1], t) for t in ts]
    progress(0.4, desc=f"decoding {steps} points")
    labels = None if y is None else y[:1].expand(steps)
    decoded = [f for f in limits.watch(reverse_stream(model, torch.stack(blend), labels), job)][-1].latent
    err = max(float((decoded[0] - xs[0]).abs().max()), float((decoded[-1] - xs[1]).abs().max()))
    strip = _path_strip(model, fa.array, fb.array, decoded, ts)
    return strip, captions.interpolation(model, path == "slerp", [float(b.norm()) for b in blend], err)


def _path_strip(model: TarFlow, a8: np.ndarray, b8: np.ndarray, decoded: torch.Tensor, ts: list[float]) -> Any:
    """A, the decoded points labelled by t, then B."""
    panels = [("A", a8)] + [(f"t = {t:.2f}", render.as_uint8(decoded[i : i + 1])[0]) for i, t in enumerate(ts)]
    panels.append(("B", b8))
    return render.strip(panels, height=render.panel_height(model.img_size, 96), arrows=False)
