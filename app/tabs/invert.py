"""The Invert tab: push an image through the flow to z and back, with its likelihood and its class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app import captions, checks, limits, render, storage
from app.checks import AUTO
from app.inputs import BadImage, Fitted, sketch_to_image, to_model
from app.models import model_folder, pick_device
from tarflow.calibration import (
    Calibration,
    margins_bits,
    noise_copies,
    noisy_class_log_likelihoods,
    posterior,
    views_per_image,
)
from tarflow.heldout import HeldOutRange, image_bits_per_dim
from tarflow.likelihood import nll_map
from tarflow.model import TarFlow
from tarflow.sampling import Guidance, reverse_stream

MAX_CLASSIFY = 100  # classes; classifying needs one forward pass per class
PRECISIONS = [("float32", "float32"), ("float64 (exact to ~1e-15)", "float64")]


def invert(model_key: str, image: str | None, condition: str = AUTO, precision: str = "float32",
           add_noise: bool = True, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
    """Push an image through the flow to z and back.

    With ``add_noise`` the model's training noise (a fixed draw) is added first: the flow was
    trained to map noisy images to N(0, I), and a clean image lands on a much narrower z.

    Returns 9 outputs: (fitting steps, forward strip, z histogram, reverse strip, reconstruction
    report, heatmap, likelihood caption, posterior chart, posterior caption).
    """
    precision = checks.choice(precision or "float32", "Precision", PRECISIONS)
    dtype = torch.float64 if precision == "float64" else torch.float32
    model32 = checks.load_model(model_key, progress)
    cond = checks.condition(model32, condition)
    fitted = checks.image(model32, image)
    model = checks.load_model(model_key, progress, dtype) if dtype != torch.float32 else model32
    progress(0.2, desc="pushing forward")
    x, shown, noisy = _input(model, fitted, add_noise)

    # Classify the image itself: one noise draw would make the answer jumpier (the smoothed
    # densities p_σ(x | y) are all defined at the clean image).
    folder = model_folder(model_key)
    cal = Calibration.load(folder) if folder else None
    scored = model32.num_classes if 0 < model32.num_classes <= MAX_CLASSIFY else 0
    views = views_per_image(noise_copies(model32.noise_std, cal.noise_draws), cal.shifts) if cal else 1
    job = limits.invert_job(model32, dtype == torch.float64, scored * views,
                            pick_device().type).check()
    scores = _class_scores(model32, to_model(fitted.array, model32), cal)
    if cond == AUTO:
        cond = int(np.argmax(scores)) if scores is not None else None
    y = None if cond is None else torch.tensor([cond], device=x.device)
    name = None if cond is None else model.class_names[cond]
    typical, unusual = _typicality(model32, fitted, folder)

    steps = render.strip(fitted.steps, height=96, caption="; ".join(fitted.notes) or None)
    forward_strip, hist, z, outputs = _push_forward(model, x, y, shown, noisy)
    progress(0.5, desc="pulling back")
    reverse_strip, recon = _pull_back(model, z, y, x, outputs, precision, job)
    progress(0.8, desc="likelihood")
    heat, heat_md = _likelihood(model, x, y, shown, name)
    chart, chart_md = _classification(model32, scores, cal, noisy, unusual)
    return steps, forward_strip, hist, reverse_strip, recon, heat, heat_md + typical, chart, chart_md


def _classification(model: TarFlow, scores: np.ndarray | None, cal: Calibration | None, noisy: bool,
                    unusual: bool) -> tuple[np.ndarray | None, str]:
    """(chart of the calibrated p(class | x) with each class's margin in bits, its caption)."""
    if scores is None:
        return None, captions.no_posterior(model)
    ll = torch.from_numpy(scores)[None]
    probs = posterior(ll, cal.temperature if cal else 1.0)[0].numpy()
    margins = margins_bits(ll)[0].numpy()
    chart = render.posterior(model.class_names, probs, margins, calibrated=cal is not None)
    raw = posterior(ll, 1.0)[0].numpy()
    return chart, captions.posterior(model, probs, raw, cal, noisy, unusual)


def _input(model: TarFlow, fitted: Fitted, add_noise: bool) -> tuple[torch.Tensor, np.ndarray, bool]:
    """The model's input x, its picture, and whether the training noise was added (a fixed draw,
    recorded as a fitting step)."""
    x = to_model(fitted.array, model)
    if not add_noise or model.noise_std <= 0:
        return x, fitted.array, False
    g = torch.Generator().manual_seed(0)
    x = x + model.noise_std * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    shown = render.as_uint8(x)[0]
    fitted.steps.append((f"+ noise σ={model.noise_std:g}", Image.fromarray(render.squeeze_grey(shown))))
    return x, shown, True


def _class_scores(model: TarFlow, x: torch.Tensor, cal: Calibration | None) -> np.ndarray | None:
    """log p(x | y) for every class, in nats, scored as the calibration was (its noise draws and
    moved copies); None when there are no classes, or too many to score here."""
    if not model.num_classes or model.num_classes > MAX_CLASSIFY:
        return None
    draws, shifts = (cal.noise_draws, cal.shifts) if cal else (0, 0)
    return noisy_class_log_likelihoods(model, x, draws=draws, shifts=shifts)[0].double().cpu().numpy()


def _typicality(model: TarFlow, fitted: Fitted, folder: Path | None) -> tuple[str, bool]:
    """The clean image's bits/dim against the model's held-out range ("" when none is stored), and
    whether it is above that range (out of distribution)."""
    held = HeldOutRange.load(folder) if folder else None
    if held is None:
        return "", False
    x8 = torch.from_numpy(np.array(fitted.array)).permute(2, 0, 1)[None]
    bpd = float(image_bits_per_dim(model, x8)[0])
    return captions.typicality(bpd, held), held.rank(bpd) in ("far above", "unusually high")


def _push_forward(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None, shown: np.ndarray,
                  noisy: bool) -> tuple[Any, np.ndarray, torch.Tensor, list[torch.Tensor]]:
    """(forward strip, histogram of z, the standard-normal latent z, each block's output)."""
    with torch.no_grad():
        _, outputs, _ = model.trace(x, y)
        z = model.encode(x, y)
    nb = model.num_blocks
    panels = [("x", shown)]
    for k, out in enumerate(outputs):
        arrow = "↑" if model.blocks[k].flip else "↓"
        label = f"z (block {k + 1} {arrow})" if k == nb - 1 else f"block {k + 1} {arrow}"
        panels.append((label, render.as_uint8(model.unpatchify(out))[0]))
    strip = render.strip(panels, height=render.panel_height(model.img_size))
    zs = z.double().cpu().numpy()
    return strip, render.histogram(zs, captions.latent_title(zs, noisy)), z, outputs


def _pull_back(model: TarFlow, z: torch.Tensor, y: torch.Tensor | None, x: torch.Tensor,
               outputs: list[torch.Tensor], precision: str, job: limits.Job) -> tuple[Any, str]:
    """(reverse strip from z back to x̂, report of how closely each state matches the forward pass);
    stops at the job's deadline."""
    frames = [f.latent for f in limits.watch(reverse_stream(model, z, y, Guidance()), job) if f.block_done]
    nb = model.num_blocks
    panels = [("z", render.as_uint8(frames[0])[0])]
    for s in range(1, nb + 1):
        panels.append((f"undo block {nb - s + 1}" if s < nb else "x̂ (undo block 1)", render.as_uint8(frames[s])[0]))
    strip = render.strip(panels, height=render.panel_height(model.img_size))
    errors = []
    for s in range(1, nb + 1):
        target = x if s == nb else model.unpatchify(outputs[nb - 1 - s])
        errors.append(float((frames[s].to(target.dtype) - target).abs().max()))
    eps = torch.finfo(x.dtype).eps
    return strip, captions.reconstruction(errors, model.num_dims, precision, eps)


def _likelihood(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None, shown: np.ndarray,
                name: str | None) -> tuple[np.ndarray, str]:
    """(heatmap of each pixel's share of −log₂ p(x | y), its caption)."""
    with torch.no_grad():
        bits = nll_map(model, x, y)[0].double().cpu().numpy()
    total = float(bits.sum())
    heat = render.heatmap(shown, bits, captions.heatmap_title(name, total / model.num_dims))
    return heat, captions.likelihood(model, name, total)


def drawing_to_file(sketch: Any) -> str:
    """A Sketchpad value -> a PNG path (for the Invert image input)."""
    try:
        img = sketch_to_image(sketch)
    except BadImage as e:
        raise gr.Error(str(e)) from None
    arr = np.asarray(img)
    if arr.size == 0 or int(arr.max()) - int(arr.min()) < 16:
        raise gr.Error("The canvas is empty: draw something first.")
    path = storage.new_folder("drawings") / "drawing.png"
    img.save(path)
    return str(path)
