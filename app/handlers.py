"""Request handlers: plain functions that the layout wires to events.

They take and return plain values (strings, numbers, numpy images, file paths, ``gr.update``
dicts), so tests call them directly without a server. User mistakes raise ``gr.Error`` with a
sentence saying what to change; the model math is all in ``tarflow``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app import render
from app.inputs import BadImage, Fitted, load_fitted, sketch_to_image
from app.models import MODELS, ModelLoadError, entries, pick_device
from tarflow.images import save_png
from tarflow.likelihood import classify, nll_map, noise_bits
from tarflow.model import TarFlow
from tarflow.sampling import Guidance, Samples, SampleSettings, reverse, reverse_stream, sample_stream, slerp

MAX_IMAGES = int(os.environ.get("TARFLOW_MAX_IMAGES", "64"))
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0  # well past useful values, so that overflow can be seen (and is reported)
SATURATED = 10.0  # |x| of a raw sample beyond this means guidance pushed far outside [-1, 1]
FRAMES_PER_BLOCK = 7  # streamed updates inside each block: visible filling without flooding the page
FRAME_TARGET_PX = 240  # streamed frames are sent small (cheap to encode and fetch); the page enlarges them crisply
FRAME_INTERVAL = float(os.environ.get("TARFLOW_FRAME_INTERVAL", "0.03"))  # s; makes the animation watchable
SLOW_INTERVAL = 0.2  # "slow motion"
MAX_CLASSIFY = 100  # classes; classifying needs one forward pass per class
MAX_INTERPOLATION_STEPS = 16
RUNS_KEPT = 24

KIND_CLASS, KIND_ATTN = "class", "attention"
GUIDANCE_KINDS = [("Class: label vs. no label", KIND_CLASS), ("Attention temperature", KIND_ATTN)]
GUIDE_WHAT = [("scale a and shift b", "ab"), ("log-scale a only", "a"), ("shift b only", "b")]
AUTO, NO_LABEL = "auto", "none"
PATHS = [("spherical (keeps |z|)", "slerp"), ("linear", "linear")]
PRECISIONS = [("float32", "float32"), ("float64 (exact to ~1e-15)", "float64")]

_OUT_DIR = Path(tempfile.gettempdir()) / "tarflow-app"


# ----------------------------------------------------------------------------------------------
# Validation: every value from the browser or the API is checked here, whatever the widgets allow.


def _number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float:
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


def _choice(value: Any, name: str, options: list[tuple[str, str]]) -> str:
    allowed = [v for _, v in options]
    if value not in allowed:
        raise gr.Error(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _model(key: str, progress: gr.Progress | None = None, dtype: torch.dtype = torch.float32) -> TarFlow:
    def report(frac: float | None, desc: str) -> None:
        if progress is not None:
            progress(frac, desc=desc)

    try:
        return MODELS.get(str(key or ""), report, dtype)
    except ModelLoadError as e:
        raise gr.Error(f"Could not load the model: {e}", title="Model not available") from None


def _class_indices(model: TarFlow, classes: Any) -> list[int]:
    """Class names (or their indices as strings) -> indices; an empty choice means no label."""
    if classes is None or classes == "" or classes == []:
        return []
    items = [classes] if isinstance(classes, (str, int)) else list(classes)
    if len(items) > max(MAX_IMAGES, model.num_classes):
        raise gr.Error(f"{len(items)} classes chosen; at most one per image is used")
    if not model.num_classes:
        raise gr.Error("This model is unconditional: it takes no classes. Clear the class choice.")
    out = []
    for c in items:
        name = str(c).strip()
        if name in model.class_names:
            out.append(model.class_names.index(name))
        elif name.isdigit() and int(name) < model.num_classes:
            out.append(int(name))
        else:
            known = ", ".join(model.class_names[:20]) + (" ..." if model.num_classes > 20 else "")
            raise gr.Error(f"Unknown class {name!r}. This model knows: {known}")
    return out


def _condition(model: TarFlow, condition: Any) -> int | None | str:
    """Invert's "condition on" choice -> a class index, None (no label) or AUTO."""
    condition = AUTO if condition in (None, "") else str(condition)
    if condition == AUTO:
        return AUTO if model.num_classes else None
    if condition == NO_LABEL or not model.num_classes:
        return None
    return _class_indices(model, [condition])[0]


# ----------------------------------------------------------------------------------------------
# Generated runs, kept briefly so that "inspect image #i" needs no resampling.


@dataclass
class Run:
    model_key: str
    stages: list[torch.Tensor]  # the whole batch after 0, 1, ..., num_blocks inverted blocks (CPU)
    images: torch.Tensor  # final images (denoised if asked), [-1, 1]
    raw: torch.Tensor
    labels: torch.Tensor
    denoised: bool
    class_names: list[str]
    num_dims: int
    scale: int  # display enlargement of the grid, to map clicks to images
    files: list[Path] = field(default_factory=list)


class RunStore:
    """The last few runs by id, oldest dropped first (with their files)."""

    def __init__(self, capacity: int = RUNS_KEPT):
        self.capacity = capacity
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, run: Run) -> str:
        run_id = uuid.uuid4().hex[:12]
        dropped = []
        with self._lock:
            self._runs[run_id] = run
            while len(self._runs) > self.capacity:
                dropped.append(self._runs.popitem(last=False)[1])
        for old in dropped:
            for f in old.files:
                shutil.rmtree(f.parent, ignore_errors=True)
        return run_id

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(str(run_id or ""))
        if run is None:
            raise gr.Error("That result is no longer kept on the server; press Generate again.")
        return run

    def __len__(self) -> int:
        return len(self._runs)


RUNS = RunStore()


# ----------------------------------------------------------------------------------------------
# Model picker


def model_choices() -> list[tuple[str, str]]:
    return [(e.label, e.key) for e in entries()]


def describe(model: TarFlow, key: str) -> str:
    n = sum(p.numel() for p in model.parameters())
    params = f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n / 1e3:.0f} k"
    colour = "grey" if model.in_channels == 1 else "RGB"
    kind = f"{model.num_classes} classes" if model.num_classes else "unconditional"
    noise = f"trained with noise σ = {model.noise_std:g}" if model.noise_std else "trained without noise"
    name = model.dataset or Path(key).name
    return (f"**{name}** · {model.img_size}×{model.img_size} {colour} · {kind} · "
            f"{model.num_blocks} blocks × {model.layers_per_block} layers, width {model.channels} · "
            f"{model.num_tokens} tokens of {model.token_dim} values (patch {model.patch_size}) · "
            f"{params} parameters · {noise} · on {pick_device().type}")


def default_classes(model: TarFlow) -> list[str]:
    """Two classes spread over the list (digits 3 and 7 for MNIST)."""
    k = model.num_classes
    if not k:
        return []
    picks = sorted({round(0.3 * k) % k, round(0.7 * k) % k})
    return [model.class_names[i] for i in picks]


def model_info(model_key: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
    """Load (once) the picked model; returns its description and controls set to its defaults:
    (card, classes, guidance, kind, attn_temp, sigma, denoise, num, condition, interp_condition,
    add_noise, temperature)."""
    model = _model(model_key, progress)
    names = list(model.class_names) if model.num_classes else []
    rec = model.sampling
    conditional = bool(model.num_classes)
    kind = KIND_CLASS if conditional else KIND_ATTN
    attn = float(rec.get("attn_temp", 1.0 if conditional else 1.5))
    big = model.num_tokens * model.num_blocks > 2048 and pick_device().type == "cpu"
    condition_choices = ([("Most likely class", AUTO), ("No label", NO_LABEL)] + [(n, n) for n in names]
                         if conditional else [("No label (unconditional model)", NO_LABEL)])
    interp_choices = [("No label", NO_LABEL)] + [(n, n) for n in names]
    return (
        describe(model, model_key),
        gr.update(choices=names, value=default_classes(model), interactive=conditional,
                  info=None if conditional else "this model is unconditional"),
        gr.update(value=float(rec.get("guidance", 0.0))),
        gr.update(value=kind),
        gr.update(value=attn),
        gr.update(value=float(model.noise_std)),
        gr.update(value=model.noise_std > 0),
        gr.update(value=4 if big else 16),
        gr.update(choices=condition_choices, value=AUTO if conditional else NO_LABEL),
        gr.update(choices=interp_choices, value=NO_LABEL),
        gr.update(value=model.noise_std > 0, interactive=model.noise_std > 0,
                  label=f"Add the training noise first (σ = {model.noise_std:g})"),
        gr.update(value=float(rec.get("temperature", 1.0))),
    )


# ----------------------------------------------------------------------------------------------
# Generate


def _settings(model: TarFlow, classes: Any, num: Any, seed: Any, guidance: Any, kind: Any, attn_temp: Any,
              annealed: Any, guide_what: Any, temperature: Any, denoise: Any, sigma: Any) -> SampleSettings:
    num = _number(num, "Number of images", 1, MAX_IMAGES, integer=True)
    seed = _number(seed, "Seed", 0, MAX_SEED, integer=True)
    guidance = _number(guidance, "Guidance scale", 0, MAX_GUIDANCE)
    kind = _choice(kind, "Guidance kind", GUIDANCE_KINDS)
    guide_what = _choice(guide_what or "ab", "Guide which", GUIDE_WHAT)
    temperature = _number(temperature, "Prior temperature", 0.05, 3)
    sigma = _number(sigma, "Noise level sigma", 0, 2)
    labels = _class_indices(model, classes)
    attn = 1.0
    if kind == KIND_ATTN:
        attn = _number(attn_temp, "Attention temperature", 0.05, 20)
    if guidance > 0 and not labels and kind == KIND_CLASS:
        gr.Warning("Class guidance compares 'with label' against 'no label'; with no class chosen both "
                   "passes are the same, so guidance does nothing. Choose a class or use attention temperature.")
    if guidance > 0 and kind == KIND_ATTN and attn == 1.0 and not labels:
        gr.Warning("An attention temperature of 1 makes the weak pass identical to the strong one, "
                   "so guidance does nothing. Try 1.5.")
    return SampleSettings(
        num=num, classes=labels or None, seed=seed, guidance=guidance, guide_what=guide_what,
        attn_temp=attn, annealed=bool(annealed), temperature=temperature, denoise=bool(denoise),
        sigma=sigma,
    )


def _status(frame, model: TarFlow, started: float, temperature: float = 1.0) -> str:
    nb = model.num_blocks
    if frame.stage == 0:
        prior = "N(0, I)" if temperature == 1 else f"N(0, {temperature:g}² I)"
        return f"**Prior sample** z ~ {prior} · {frame.latent.shape[0]} images · now inverting {nb} blocks"
    block = model.blocks[frame.block]
    direction = "reading bottom-up ↑" if block.flip else "reading top-down ↓"
    return (f"**Block {frame.stage}/{nb}** ({direction}) · token {frame.tokens}/{frame.num_tokens} · "
            f"{time.perf_counter() - started:.1f} s")


def generate(model_key: str, classes: list[str] | None, num: int, seed: int, guidance: float, kind: str,
             attn_temp: float, annealed: bool, guide_what: str, temperature: float, denoise: bool, sigma: float,
             slow: bool = False, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """Sample, streaming the batch as the flow inverts (every few tokens and at each block's end).

    Yields 9 outputs: (samples grid, status, raw grid, latent strip, heatmap, heatmap caption,
    download path, run id, inspect slider); streaming updates change only the first two.
    """
    started = time.perf_counter()
    model = _model(model_key, progress)
    settings = _settings(model, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what,
                         temperature, denoise, sigma)
    every = max(1, math.ceil(model.num_tokens / FRAMES_PER_BLOCK))
    interval = SLOW_INTERVAL if slow else FRAME_INTERVAL
    skip = (gr.skip(),) * 7
    stages: list[torch.Tensor] = []
    samples: Samples | None = None
    last = 0.0
    frame_scale = None
    try:
        for item in sample_stream(model, settings, every=every):
            if isinstance(item, Samples):
                samples = item
                break
            if item.block_done:
                latent = item.latent.detach().cpu()
                if not torch.isfinite(latent).all():
                    raise FloatingPointError("sampling overflowed (non-finite values)")
                stages.append(latent)
            wait = interval - (time.perf_counter() - last)
            if wait > 0 and item.stage > 0:
                time.sleep(wait)
            if item.block_done:  # the status line shows tokens; the progress bar moves per block
                progress(item.stage / model.num_blocks, desc=f"{item.stage}/{model.num_blocks} blocks inverted")
            if frame_scale is None:
                native = render.sample_grid(item.latent, scale=1)[0].shape[1]
                frame_scale = render.display_scale(native, FRAME_TARGET_PX)
            grid, _ = render.sample_grid(item.latent, scale=frame_scale)
            last = time.perf_counter()
            yield (grid, _status(item, model, started, settings.temperature_for(model))) + skip
    except FloatingPointError:
        raise gr.Error(f"Sampling overflowed: guidance {settings.guidance:g} is too strong for this model "
                       "(the values became infinite). Lower the guidance scale (try 1-4) or the prior "
                       "temperature.", title="Guidance too high") from None
    except ValueError as e:
        raise gr.Error(str(e)) from None
    assert samples is not None
    peak = float(samples.raw.abs().max())
    if peak > SATURATED:
        gr.Warning(f"Guidance pushed pixel values far outside [-1, 1] (up to {peak:.3g}); the images are "
                   "saturated. Lower the guidance scale.")
    progress(1.0, desc="denoising and drawing")
    final, scale = render.sample_grid(samples.images)
    raw_grid = render.sample_grid(samples.raw, scale=scale)[0] if settings.denoise else None

    out_dir = _OUT_DIR / uuid.uuid4().hex[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    native = render.sample_grid(samples.images, scale=1)[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", model.dataset).strip("-") or "samples"
    png = save_png(native.reshape(native.shape[0], native.shape[1], -1),
                   out_dir / f"tarflow-{name}-seed{settings.seed}.png", scale=scale)
    run = Run(model_key=str(model_key), stages=stages, images=samples.images, raw=samples.raw,
              labels=samples.labels, denoised=settings.denoise, class_names=list(model.class_names),
              num_dims=model.num_dims, scale=scale, files=[png])
    run_id = RUNS.put(run)
    strip, heat, caption = _inspect(run, model, 0)
    g = settings.guidance_for(model)
    guide = (f"guidance {g.scale:g} ({'class' if kind == KIND_CLASS else f'attention temp {g.attn_temp:g}'}"
             f"{', annealed' if g.annealed else ''})") if g.scale > 0 else "no guidance"
    noise = f"denoised with σ = {settings.sigma:g}" if settings.denoise else "not denoised"
    status = (f"**Done** · {settings.num} images in {time.perf_counter() - started:.2f} s · {guide} · {noise} · "
              "click an image (or use the slider) to inspect it")
    yield (
        final,
        status,
        raw_grid,
        strip,
        heat,
        caption,
        gr.update(value=str(png), interactive=True),
        run_id,
        gr.update(maximum=max(2, settings.num), value=1),  # a slider needs max > min
    )


def _noise_note(model: TarFlow) -> str:
    if model.noise_std <= 0 or noise_bits(model.noise_std) <= 0:
        return ""
    return (f" The model describes images with noise σ = {model.noise_std:g} added; that noise alone costs "
            f"{noise_bits(model.noise_std):.2f} bits/dim, so numbers near it are expected.")


def _heatmap(model: TarFlow, x8: np.ndarray, y: int | None, title: str) -> tuple[np.ndarray, float]:
    """x8: uint8 (H, W, C). Returns the heatmap figure and bits/dim."""
    x = _to_tensor(model, x8)
    labels = None if y is None or y < 0 else torch.tensor([y], device=x.device)
    with torch.no_grad():
        bits = nll_map(model, x, labels)[0].float().cpu().numpy()
    bpd = float(bits.sum()) / model.num_dims
    return render.heatmap(x8, bits, f"{title} · {bpd:.3f} bits/dim"), bpd


def _inspect(run: Run, model: TarFlow, i: int) -> tuple[Any, np.ndarray, str]:
    nb = len(run.stages) - 1
    native = run.images.shape[-1]
    panels = [("z ~ N(0, I)", render.as_uint8(run.stages[0][i : i + 1])[0])]
    for s in range(1, nb + 1):
        label = f"x (after block {s})" if s == nb else f"after block {s}"
        panels.append((label, render.as_uint8(run.stages[s][i : i + 1])[0]))
    if run.denoised:
        panels.append(("denoised", render.as_uint8(run.images[i : i + 1])[0]))
    strip = render.strip(panels, height=render.panel_height(native))
    label = int(run.labels[i])
    name = run.class_names[label] if label >= 0 else "no label"
    x8 = render.as_uint8(run.images[i : i + 1])[0]
    heat, bpd = _heatmap(model, x8, label, f"image {i + 1} · {'label ' + name if label >= 0 else name}")
    caption = (f"**Image {i + 1}** ({name}): **{bpd:.3f} bits/dim**, the exact −log₂ p(x) of its 8-bit "
               f"pixels under the model, per dimension ({run.num_dims} dimensions). Brighter colours in the map "
               "cost more bits." + _noise_note(model))
    return strip, heat, caption


def inspect(run_id: str, index: float) -> tuple[Any, np.ndarray, str]:
    """(latent strip, heatmap, caption) for image #index (1-based) of a generated run."""
    run = RUNS.get(run_id)
    num = run.images.shape[0]
    i = _number(index, "Image number", 1, num, integer=True) - 1
    model = _model(run.model_key)
    return _inspect(run, model, i)


def pick_from_grid(run_id: str, evt: gr.SelectData) -> Any:
    """A click on the samples grid -> that image's number for the inspect slider."""
    try:
        run = RUNS.get(run_id)
    except gr.Error:
        return gr.skip()
    num, _, size, _ = run.images.shape
    x, y = (evt.index or (0, 0))[:2]
    i = render.grid_index(int(x), int(y), num, size, run.scale)
    return gr.skip() if i is None else i + 1


# ----------------------------------------------------------------------------------------------
# Invert


def _fit(model: TarFlow, image: Any) -> Fitted:
    if image is None or image == "":
        raise gr.Error("Upload, draw or pick an image first.")
    try:
        return load_fitted(str(image), model.img_size, model.in_channels, model.dataset)
    except BadImage as e:
        raise gr.Error(str(e), title="Cannot use this image") from None


def _to_tensor(model: TarFlow, x8: np.ndarray) -> torch.Tensor:
    param = next(model.parameters())
    x = (torch.from_numpy(x8.astype(np.float64)) + 0.5) / 128.0 - 1.0
    return x.permute(2, 0, 1)[None].to(device=param.device, dtype=param.dtype)


def _posterior(model: TarFlow, x: torch.Tensor) -> np.ndarray | None:
    if not model.num_classes or model.num_classes > MAX_CLASSIFY:
        return None
    with torch.no_grad():
        return classify(model, x)[0].double().cpu().numpy()


def invert(model_key: str, image: str | None, condition: str = AUTO, precision: str = "float32",
           add_noise: bool = True, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
    """Push an image through the flow to z and back.

    With ``add_noise`` the model's training noise (a fixed draw) is added first: the flow was
    trained to map noisy images to N(0, I), and a clean image lands on a much narrower z.

    Returns 9 outputs: (fitting steps, forward strip, z histogram, reverse strip, reconstruction
    report, heatmap, likelihood caption, posterior chart, posterior caption).
    """
    precision = _choice(precision or "float32", "Precision", PRECISIONS)
    dtype = torch.float64 if precision == "float64" else torch.float32
    model32 = _model(model_key, progress)
    cond = _condition(model32, condition)
    fitted = _fit(model32, image)
    model = _model(model_key, progress, dtype) if dtype != torch.float32 else model32
    progress(0.2, desc="pushing forward")
    x = _to_tensor(model, fitted.array)
    shown = fitted.array  # the picture of x in the strips
    if add_noise and model.noise_std > 0:
        g = torch.Generator().manual_seed(0)
        x = x + model.noise_std * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
        shown = render.as_uint8(x)[0]
        fitted.steps.append((f"+ noise σ={model.noise_std:g}", Image.fromarray(render.squeeze_grey(shown))))

    # Classify the image itself: one noise draw would make the answer jumpier (the smoothed
    # densities p_σ(x | y) are all defined at the clean image).
    probs = _posterior(model32, _to_tensor(model32, fitted.array))
    if cond == AUTO:
        cond = int(np.argmax(probs)) if probs is not None else None
    y = None if cond is None else torch.tensor([cond], device=x.device)
    name = model.class_names[cond] if cond is not None else "no label"

    steps = render.strip(fitted.steps, height=96, caption="; ".join(fitted.notes) or None)
    with torch.no_grad():
        z, outputs, _ = model.trace(x, y)
    nb = model.num_blocks
    h = render.panel_height(model.img_size)
    fwd = [("x", shown)]
    for k, out in enumerate(outputs):
        arrow = "↑" if model.blocks[k].flip else "↓"
        label = f"z (block {k + 1} {arrow})" if k == nb - 1 else f"block {k + 1} {arrow}"
        fwd.append((label, render.as_uint8(model.unpatchify(out))[0]))
    forward_strip = render.strip(fwd, height=h)
    zs = (z / model.var.sqrt()).double().cpu().numpy()
    hist = render.histogram(zs, f"z of this {'noisy ' if shown is not fitted.array else ''}image: "
                                f"mean {zs.mean():+.2f}, std {zs.std():.2f}")

    progress(0.5, desc="pulling back")
    frames = [f.latent for f in reverse_stream(model, z / model.var.sqrt(), y, Guidance()) if f.block_done]
    back = [("z", render.as_uint8(frames[0])[0])]
    for s in range(1, nb + 1):
        back.append((f"undo block {nb - s + 1}" if s < nb else "x̂ (undo block 1)", render.as_uint8(frames[s])[0]))
    reverse_strip = render.strip(back, height=h)
    errors = []
    for s in range(1, nb + 1):
        target = x if s == nb else model.unpatchify(outputs[nb - 1 - s])
        errors.append(float((frames[s].to(target.dtype) - target).abs().max()))
    eps = torch.finfo(dtype).eps
    recon = (f"**max |x − x̂| = {errors[-1]:.2e}** over {model.num_dims} values ({precision}, machine epsilon "
             f"{eps:.1e}): the flow is inverted exactly, up to floating-point rounding. "
             f"Intermediate states match the forward pass to {max(errors):.1e}.")

    progress(0.8, desc="likelihood")
    with torch.no_grad():
        bits = nll_map(model, x, y)[0].double().cpu().numpy()
    bpd = float(bits.sum()) / model.num_dims
    heat = render.heatmap(shown, bits, f"{'label ' + name if cond is not None else name} · {bpd:.3f} bits/dim")
    heat_md = (f"**{bpd:.3f} bits/dim** given {'the label ' + repr(name) if cond is not None else 'no label'}: "
               f"−log₂ p(x) = {bits.sum():.1f} bits for {model.num_dims} dimensions; the map shows each "
               "pixel's share and sums to that total." + _noise_note(model))

    if probs is None:
        chart = None
        post_md = ("This model is unconditional: there are no classes to compare." if not model32.num_classes
                   else f"{model32.num_classes} classes are too many to score interactively here.")
    else:
        chart = render.posterior(model32.class_names, probs)
        best = int(np.argmax(probs))
        post_md = (f"Most likely: **{model32.class_names[best]}** ({probs[best]:.1%}). p(y | x) ∝ p(x | y): "
                   "one exact likelihood per class, normalised by Bayes' rule with equal priors"
                   f"{' (of the image without the added noise)' if shown is not fitted.array else ''}.")
    return steps, forward_strip, hist, reverse_strip, recon, heat, heat_md, chart, post_md


def drawing_to_file(sketch: Any) -> str:
    """A Sketchpad value -> a PNG path (for the Invert image input)."""
    try:
        img = sketch_to_image(sketch)
    except BadImage as e:
        raise gr.Error(str(e)) from None
    arr = np.asarray(img)
    if arr.size == 0 or int(arr.max()) - int(arr.min()) < 16:
        raise gr.Error("The canvas is empty: draw something first.")
    out_dir = _OUT_DIR / "drawings" / uuid.uuid4().hex[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "drawing.png"
    img.save(path)
    _prune(_OUT_DIR / "drawings", keep=64)
    return str(path)


def _prune(folder: Path, keep: int) -> None:
    items = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    for old in items[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Interpolation


def interpolate(model_key: str, image_a: str | None, image_b: str | None, steps: int = 8, path: str = "slerp",
                condition: str = NO_LABEL, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, str]:
    """Encode two images, blend their latents, decode the path. Returns (strip, caption)."""
    steps = _number(steps, "Steps", 2, MAX_INTERPOLATION_STEPS, integer=True)
    path = _choice(path or "slerp", "Path", PATHS)
    model = _model(model_key, progress)
    cond = _condition(model, condition if condition not in (None, "", AUTO) else NO_LABEL)
    if image_a in (None, "") or image_b in (None, ""):
        raise gr.Error("Choose two images (A and B) to interpolate between.")
    fa, fb = _fit(model, image_a), _fit(model, image_b)
    xs = torch.cat([_to_tensor(model, fa.array), _to_tensor(model, fb.array)])
    y = None if cond is None else torch.tensor([cond, cond], device=xs.device)
    progress(0.2, desc="encoding A and B")
    with torch.no_grad():
        z, _, _ = model.trace(xs, y)
    zs = z / model.var.sqrt()
    ts = [i / (steps - 1) for i in range(steps)]
    blend = [(slerp if path == "slerp" else torch.lerp)(zs[0], zs[1], t) for t in ts]
    progress(0.4, desc=f"decoding {steps} points")
    labels = None if y is None else y[:1].expand(steps)
    decoded = reverse(model, torch.stack(blend), labels)
    err = max(float((decoded[0] - xs[0]).abs().max()), float((decoded[-1] - xs[1]).abs().max()))
    panels = [("A", fa.array)] + [(f"t = {t:.2f}", render.as_uint8(decoded[i : i + 1])[0]) for i, t in enumerate(ts)]
    panels.append(("B", fb.array))
    strip = render.strip(panels, height=render.panel_height(model.img_size, 96), arrows=False)
    norms = [float(b.norm()) for b in blend]
    md = (f"{'Spherical' if path == 'slerp' else 'Linear'} path through latent space, {steps} points. "
          f"|z| is {norms[0]:.1f} at A and {norms[-1]:.1f} at B, {min(norms):.1f} at its lowest on the way "
          f"(a Gaussian sample has |z| ≈ √{model.num_dims} = {math.sqrt(model.num_dims):.1f}). "
          f"The ends reproduce A and B to {err:.1e}.")
    return strip, md
