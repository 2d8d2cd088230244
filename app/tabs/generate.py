"""The Generate tab: sample a batch, streaming it as the flow inverts, then inspect one image."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from app import captions, checks, render
from app.inputs import to_model
from app.runs import RUNS, Run, new_folder
from tarflow.images import save_png
from tarflow.likelihood import nll_map
from tarflow.model import TarFlow
from tarflow.sampling import Samples, SampleSettings, sample_stream

MAX_IMAGES = int(os.environ.get("TARFLOW_MAX_IMAGES", "64"))
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0  # well past useful values, so that overflow can be seen (and is reported)
SATURATED = 10.0  # |x| of a raw sample beyond this means guidance pushed far outside [-1, 1]
FRAMES_PER_BLOCK = 7  # streamed updates inside each block: visible filling without flooding the page
FRAME_TARGET_PX = 240  # streamed frames are sent small (cheap to encode and fetch); the page enlarges them crisply
FRAME_INTERVAL = float(os.environ.get("TARFLOW_FRAME_INTERVAL", "0.03"))  # s; makes the animation watchable
SLOW_INTERVAL = 0.2  # "slow motion"

KIND_CLASS, KIND_ATTN = "class", "attention"
GUIDANCE_KINDS = [("Class: label vs. no label", KIND_CLASS), ("Attention temperature", KIND_ATTN)]
GUIDE_WHAT = [("scale a and shift b", "ab"), ("log-scale a only", "a"), ("shift b only", "b")]


def _settings(model: TarFlow, classes: Any, num: Any, seed: Any, guidance: Any, kind: Any, attn_temp: Any,
              annealed: Any, guide_what: Any, temperature: Any, denoise: Any, sigma: Any) -> SampleSettings:
    num = checks.number(num, "Number of images", 1, MAX_IMAGES, integer=True)
    seed = checks.number(seed, "Seed", 0, MAX_SEED, integer=True)
    guidance = checks.number(guidance, "Guidance scale", 0, MAX_GUIDANCE)
    kind = checks.choice(kind, "Guidance kind", GUIDANCE_KINDS)
    guide_what = checks.choice(guide_what or "ab", "Guide which", GUIDE_WHAT)
    temperature = checks.number(temperature, "Prior temperature", 0.05, 3)
    sigma = checks.number(sigma, "Noise level sigma", 0, 2)
    labels = checks.class_labels(model, classes, MAX_IMAGES)
    attn = 1.0
    if kind == KIND_ATTN:
        attn = checks.number(attn_temp, "Attention temperature", 0.05, 20)
    _warn_if_guidance_idle(guidance, kind, attn, labels)
    return SampleSettings(
        num=num, classes=labels or None, seed=seed, guidance=guidance, guide_what=guide_what,
        attn_temp=attn, annealed=bool(annealed), temperature=temperature, denoise=bool(denoise),
        sigma=sigma,
    )


def _warn_if_guidance_idle(guidance: float, kind: str, attn: float, labels: list[int]) -> None:
    """Settings under which guidance changes nothing are allowed, but deserve a word."""
    if guidance > 0 and not labels and kind == KIND_CLASS:
        gr.Warning("Class guidance compares 'with label' against 'no label'; with no class chosen both "
                   "passes are the same, so guidance does nothing. Choose a class or use attention temperature.")
    if guidance > 0 and kind == KIND_ATTN and attn == 1.0 and not labels:
        gr.Warning("An attention temperature of 1 makes the weak pass identical to the strong one, "
                   "so guidance does nothing. Try 1.5.")


def generate(model_key: str, classes: list[str] | None, num: int, seed: int, guidance: float, kind: str,
             attn_temp: float, annealed: bool, guide_what: str, temperature: float, denoise: bool, sigma: float,
             slow: bool = False, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """Sample, streaming the batch as the flow inverts (every few tokens and at each block's end).

    Yields 9 outputs: (samples grid, status, raw grid, latent strip, heatmap, heatmap caption,
    download path, run id, inspect slider); streaming updates change only the first two.
    """
    started = time.perf_counter()
    model = checks.load_model(model_key, progress)
    settings = _settings(model, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what,
                         temperature, denoise, sigma)
    stages: list[torch.Tensor] = []
    interval = SLOW_INTERVAL if slow else FRAME_INTERVAL
    samples = yield from _stream(model, settings, stages, interval, started, progress)
    _warn_if_saturated(samples.raw)
    progress(1.0, desc="denoising and drawing")
    final, scale = render.sample_grid(samples.images)
    run = Run(model_key=str(model_key), stages=stages, images=samples.images, raw=samples.raw,
              labels=samples.labels, denoised=settings.denoise, class_names=list(model.class_names), scale=scale,
              files=[_save_grid(model, samples.images, settings.seed, scale)])
    yield _results(model, settings, run, final, kind == KIND_CLASS, started)


def _stream(model: TarFlow, settings: SampleSettings, stages: list[torch.Tensor], interval: float, started: float,
            progress: gr.Progress) -> Generator[tuple, None, Samples]:
    """Yield (grid, status) for the batch every few tokens and at each block's end, paced by
    ``interval`` seconds; append the batch after each block to ``stages``; return the samples."""
    every = max(1, math.ceil(model.num_tokens / FRAMES_PER_BLOCK))
    skip = (gr.skip(),) * 7
    last, frame_scale = 0.0, None
    try:
        for item in sample_stream(model, settings, every=every):
            if isinstance(item, Samples):
                return item
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
            yield (grid, captions.sampling_status(item, model, last - started, settings.temperature_for(model))) + skip
    except FloatingPointError:
        raise gr.Error(f"Sampling overflowed: guidance {settings.guidance:g} is too strong for this model "
                       "(the values became infinite). Lower the guidance scale (try 1-4) or the prior "
                       "temperature.", title="Guidance too high") from None
    except ValueError as e:
        raise gr.Error(checks.sentence(str(e))) from None
    raise RuntimeError("the sampler stopped without returning its samples")


def _warn_if_saturated(raw: torch.Tensor) -> None:
    peak = float(raw.abs().max())
    if peak > SATURATED:
        gr.Warning(f"Guidance pushed pixel values far outside [-1, 1] (up to {peak:.3g}); the images are "
                   "saturated. Lower the guidance scale.")


def _results(model: TarFlow, settings: SampleSettings, run: Run, final: np.ndarray, class_guidance: bool,
             started: float) -> tuple:
    """The final 9 outputs, the first image inspected; keeps ``run`` so that its images can be inspected."""
    raw_grid = render.sample_grid(run.raw, scale=run.scale)[0] if run.denoised else None
    run_id = RUNS.put(run)
    strip, heat, caption = _inspect(run, model, 0)
    status = captions.done_status(settings, model, class_guidance, time.perf_counter() - started)
    download = gr.update(value=str(run.files[0]), interactive=True)
    pick = gr.update(maximum=max(2, settings.num), value=1)  # a slider needs max > min
    return final, status, raw_grid, strip, heat, caption, download, run_id, pick


def _save_grid(model: TarFlow, images: torch.Tensor, seed: int, scale: int) -> Path:
    """The grid as a PNG to download, named after the data and the seed."""
    native = render.sample_grid(images, scale=1)[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", model.dataset).strip("-") or "samples"
    return save_png(native.reshape(native.shape[0], native.shape[1], -1),
                    new_folder() / f"tarflow-{name}-seed{seed}.png", scale=scale)


def _bits(model: TarFlow, x8: np.ndarray, label: int) -> np.ndarray:
    """Each pixel's share of −log₂ p(x8 | label) (no label when negative), as an (H, W) map."""
    x = to_model(x8, model)
    y = None if label < 0 else torch.tensor([label], device=x.device)
    with torch.no_grad():
        return nll_map(model, x, y)[0].float().cpu().numpy()


def _inspect(run: Run, model: TarFlow, i: int) -> tuple[Any, np.ndarray, str]:
    nb = len(run.stages) - 1
    panels = [("z ~ N(0, I)", render.as_uint8(run.stages[0][i : i + 1])[0])]
    for s in range(1, nb + 1):
        label = f"x (after block {s})" if s == nb else f"after block {s}"
        panels.append((label, render.as_uint8(run.stages[s][i : i + 1])[0]))
    if run.denoised:
        panels.append(("denoised", render.as_uint8(run.images[i : i + 1])[0]))
    strip = render.strip(panels, height=render.panel_height(run.images.shape[-1]))
    label = int(run.labels[i])
    name = run.class_names[label] if label >= 0 else None
    x8 = render.as_uint8(run.images[i : i + 1])[0]
    bits = _bits(model, x8, label)
    bpd = float(bits.sum()) / model.num_dims
    heat = render.heatmap(x8, bits, f"image {i + 1} · {captions.heatmap_title(name, bpd)}")
    return strip, heat, captions.inspect_caption(model, i + 1, name or "no label", bpd)


def inspect(run_id: str, index: float) -> tuple[Any, np.ndarray, str]:
    """(latent strip, heatmap, caption) for image #index (1-based) of a generated run."""
    run = RUNS.get(run_id)
    num = run.images.shape[0]
    i = checks.number(index, "Image number", 1, num, integer=True) - 1
    model = checks.load_model(run.model_key)
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
