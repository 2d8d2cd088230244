"""The Generate tab: sample a batch, streaming it as the flow inverts and recording frames of it
for the step-through player and the animation, then inspect one image."""

from __future__ import annotations

import dataclasses
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

from app import captions, checks, estimate, limits, render
from app.inputs import to_model
from app.models import model_folder, pick_device
from app.runs import RUNS, FrameInfo, Run
from app.tabs.replay import frame_view
from tarflow.heldout import HeldOutRange, image_bits_per_dim
from tarflow.images import save_png
from tarflow.jacobi import Jacobi
from tarflow.likelihood import nll_map
from tarflow.model import TarFlow
from tarflow.sampling import Samples, SampleSettings, resolve_labels, sample_stream, to_uint8

MAX_IMAGES = int(os.environ.get("TARFLOW_MAX_IMAGES", "64"))
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0  # well past useful values, so that overflow can be seen (and is reported)
FRAMES_PER_BLOCK = 7  # streamed updates inside each block: visible filling without flooding the page
FRAME_INTERVAL = float(os.environ.get("TARFLOW_FRAME_INTERVAL", "0.03"))  # s; makes the animation watchable
SLOW_INTERVAL = 0.2  # "slow motion"
# Recorded frames (for the step-through player and the GIF) are uint8 and bounded per run: at most
# RECORD_PER_BLOCK per block, MAX_FRAMES in all, and FRAME_BYTES of pixels (runs kept: runs.RUNS_KEPT).
RECORD_PER_BLOCK = 24
MAX_FRAMES = 160
FRAME_BYTES = int(os.environ.get("TARFLOW_FRAME_BYTES", str(8 << 20)))
# A batch with more than SATURATED_SHARE of its raw values beyond +-SATURATED, or whose median
# bits/dim is above the held-out 99th percentile, is measurably off. Measured on the bundled models
# (16 samples, seed 0): at guidance 0-2 at most 0.02% of values pass 1.5; at 8, 0.6-2.7%.
SATURATED, SATURATED_SHARE = 1.5, 0.005
IMAGE_PX = 256  # single-image downloads are enlarged to about this size

KIND_CLASS, KIND_ATTN = "class", "attention"
# Jacobi decoding (tarflow/jacobi.py) at the tolerance measured to leave the judge's numbers unchanged
# on the bundled models; it is slower than sequential decoding on a CPU (benchmarks/jacobi.py).
DECODE_CHOICES = [("Sequential: one token per step", "sequential"),
                  ("Jacobi: whole blocks per pass, until they settle", "jacobi")]
JACOBI = Jacobi(tol=1e-3, sequential_first=True)
GUIDANCE_KINDS = [("Class: label vs. no label", KIND_CLASS), ("Attention temperature", KIND_ATTN)]
GUIDE_WHAT = [("scale a and shift b", "ab"), ("log-scale a only", "a"), ("shift b only", "b")]
NUM_OUTPUTS = 13


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
             slow: bool = False, rows_by_class: bool = True, decode: str = "sequential",
             progress: gr.Progress = gr.Progress(track_tqdm=True),
             request: gr.Request | None = None) -> Iterator[tuple]:
    """Sample, streaming the batch as the flow inverts (every few tokens and at each block's end).

    Yields 13 outputs: (samples grid, status, raw grid, latent strip, heatmap, heatmap caption,
    grid download, run id, inspect slider, frame slider, frame picture, frame caption, image
    download); streaming updates change only the first two. A failed run ends with every output
    cleared and the reason in the status line (then the error itself). The Stop button of the
    same page (``stop``) ends the run within about estimate.STOP_WITHIN seconds.
    """
    try:
        yield from _generate(model_key, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what,
                             temperature, denoise, sigma, slow, rows_by_class, progress,
                             getattr(request, "session_hash", None), decode)
    except gr.Error as e:
        yield (None, f"**Failed** · {e.message}", *_cleared())
        raise


def _cleared() -> tuple:
    """Every output after (grid, status) emptied: nothing of an earlier run stays on the page."""
    off = gr.update(value=None, interactive=False)
    return (None, None, None, "", off, "", gr.update(value=1, maximum=2, visible=False),
            gr.update(value=0, maximum=1, interactive=False), None, "", off)


def _generate(model_key: str, classes: Any, num: Any, seed: Any, guidance: Any, kind: Any, attn_temp: Any,
              annealed: Any, guide_what: Any, temperature: Any, denoise: Any, sigma: Any, slow: Any,
              rows_by_class: Any, progress: gr.Progress, session: str | None = None,
              decode: Any = "sequential") -> Iterator[tuple]:
    started = time.perf_counter()
    model = checks.load_model(model_key, progress)
    settings = _settings(model, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what,
                         temperature, denoise, sigma)
    decode = checks.choice(decode or "sequential", "Decoding", DECODE_CHOICES)
    if decode == "jacobi":
        settings = dataclasses.replace(settings, decode="jacobi", jacobi=JACOBI)
    labels = resolve_labels(model, settings.classes, settings.num).tolist()
    layout = (render.class_layout(labels, list(model.class_names)) if rows_by_class
              else render.plain_layout(settings.num))
    run = Run(model_key=str(model_key), frames=[], frame_info=[], images=torch.empty(0), raw=torch.empty(0),
              labels=torch.tensor(labels), denoised=settings.denoise, class_names=list(model.class_names),
              scale=render.display_scale(layout.cols * (model.img_size + 2) + 2), layout=layout,
              margin=render.label_margin(layout), num_blocks=model.num_blocks)
    job = limits.sampling_job(model, settings.num, pick_device().type, "Generate").check()
    short = estimate.memory_problem(model, settings.num, settings.guidance_for(model).active)
    if short:
        raise limits.WorkLimit(short)
    limits.track(job, session)
    sampling = time.perf_counter()
    try:
        samples = yield from _stream(model, settings, run, SLOW_INTERVAL if slow else FRAME_INTERVAL, started,
                                     progress, job)
    finally:
        limits.untrack(job, session)
    if samples is None:
        return  # stopped: the last frame and the reason are on the page
    run.images, run.raw = samples.images, samples.raw
    if samples.decode is not None:
        gr.Info(f"Jacobi decoding, passes per block: {samples.decode.summary()}")
    _warn_if_off(model, run, settings)
    progress(1.0, desc="denoising and drawing")
    yield _results(model, settings, run, kind == KIND_CLASS, started)
    if not (slow or job.was_paused or settings.decode == "jacobi"):  # a run like the estimate's
        estimate.observe(model, settings.num, settings.guidance_for(model).active, time.perf_counter() - sampling)


def record_every(model: TarFlow, num: int) -> int:
    """Tokens between recorded frames, so that a run's frames stay within MAX_FRAMES and FRAME_BYTES."""
    fit = FRAME_BYTES // max(1, num * model.num_dims)
    per_block = min(RECORD_PER_BLOCK, (min(MAX_FRAMES, fit) - 1) // model.num_blocks)
    return math.ceil(model.num_tokens / max(1, per_block))


def _stream(model: TarFlow, settings: SampleSettings, run: Run, interval: float, started: float,
            progress: gr.Progress, job: limits.Job) -> Generator[tuple, None, Samples | None]:
    """Record frames into ``run`` and yield (grid, status) every few tokens and at each block's end,
    paced by ``interval`` seconds; return the samples, or None when the job was stopped (after
    yielding the unfinished grid and the reason)."""
    recorded = record_every(model, settings.num)
    # The sampler hands back control every `every` tokens: often enough to answer Stop (and the
    # deadline) within about STOP_WITHIN s whatever the model's size, and to record frames.
    # Jacobi decoding refines one window of tokens per hand-back: it gets the longest windows that
    # still answer Stop in time (its recorded frames are fewer).
    every = estimate.stop_every(model, settings.num, settings.guidance_for(model).active)
    if settings.decode != "jacobi":
        every = min(recorded, every)
    shown_every = shown_tokens(model)
    cap = max(MAX_FRAMES, model.num_blocks + 1)
    last, last_bucket, last_recorded, first = 0.0, None, None, True
    try:
        for item in sample_stream(model, settings, every=every):
            if isinstance(item, Samples):
                return item
            record, bucket = (item.stage, item.tokens // recorded), (item.stage, item.tokens // shown_every)
            keep = item.block_done or record != last_recorded
            show = job.stopped or job.paused or item.block_done or bucket != last_bucket
            last_recorded = record
            if item.stage > 0:
                progress(_done_share(item, model), desc=_time_left(item, model, time.perf_counter() - started))
            if not (keep or show):
                continue
            frame = to_uint8(item.latent).numpy()
            if keep and (item.block_done or len(run.frames) < cap - model.num_blocks):
                run.frames.append(frame)
                run.frame_info.append(FrameInfo(item.stage, item.tokens, item.num_tokens))
            if not show:
                continue
            last_bucket = bucket
            wait = interval - (time.perf_counter() - last)
            if wait > 0 and item.stage > 0:
                time.sleep(wait)
            grid = render.layout_grid(frame, run.layout, run.scale, margin=run.margin)
            last = time.perf_counter()
            status = captions.sampling_status(item, model, last - started, settings.temperature_for(model))
            yield (grid, status, *(_cleared() if first else (gr.skip(),) * (NUM_OUTPUTS - 2)))
            first = False
            if job.stopped:
                yield (grid, f"**Stopped** · {job.reason}, in block {item.stage}/{model.num_blocks} at token "
                       f"{item.tokens}/{item.num_tokens}: the images above are unfinished. Ask for fewer images.",
                       *_cleared())
                return None
            if job.paused:
                yield (gr.skip(), captions.paused_status(item, model), *(gr.skip(),) * (NUM_OUTPUTS - 2))
                job.hold()
    except FloatingPointError:
        raise gr.Error(f"Sampling overflowed: guidance {settings.guidance:g} is too strong for this model "
                       "(the values became infinite). Lower the guidance scale (try 1-4) or the prior "
                       "temperature.", title="Guidance too high") from None
    except ValueError as e:
        raise gr.Error(checks.sentence(str(e))) from None
    raise RuntimeError("the sampler stopped without returning its samples")


def shown_tokens(model: TarFlow) -> int:
    """Tokens between two streamed updates of the page (FRAMES_PER_BLOCK or so per block)."""
    return max(1, math.ceil(model.num_tokens / FRAMES_PER_BLOCK))


def shown_frames(model: TarFlow) -> int:
    """Streamed updates of a whole run: the frames inside each block and each block's end."""
    return model.num_blocks * (math.ceil(model.num_tokens / shown_tokens(model)) + 1)


def _done_share(item: Any, model: TarFlow) -> float:
    """Share of the token steps of a sample done at this frame."""
    return ((item.stage - 1) * item.num_tokens + item.tokens) / (model.num_blocks * item.num_tokens)


def _time_left(item: Any, model: TarFlow, elapsed: float) -> str:
    share = _done_share(item, model)
    left = elapsed * (1 - share) / max(share, 1e-9)
    return f"block {item.stage}/{model.num_blocks} · {estimate.duration(left)} left"


def estimate_note(model_key: str, num: Any, guidance: Any = 1.0) -> str:
    """The time a Generate of ``num`` images should take on this device, from a measured token step
    (measured on first use per model, device and batch size)."""
    try:
        model = checks.load_model(model_key)
        n = checks.number(num, "Number of images", 1, MAX_IMAGES, integer=True)
    except gr.Error:
        return ""
    guided = float(guidance or 0) > 0
    device = next(model.parameters()).device.type.upper()
    images = f"{n} image{'s' if n != 1 else ''}"
    seen = estimate.observed_seconds(model, n, guided)
    if seen is not None:
        note = (f"Estimated on this {device}: {estimate.duration(seen)} for {images} "
                f"(the last such run here took {seen:.1f} s)")
    else:
        frames = shown_frames(model)
        seconds = estimate.paced_seconds(model, n, guided, frames, FRAME_INTERVAL)
        note = (f"Estimated on this {device}: {estimate.duration(seconds)} for {images} "
                f"({estimate.step_seconds(model, n, guided) * 1e3:.1f} ms per token step, "
                f"{model.num_blocks} x {model.num_tokens - 1} steps"
                + (f", shown as {frames} frames at most {1 / FRAME_INTERVAL:.0f} a second)" if FRAME_INTERVAL > 0
                   else ")"))
    short = estimate.memory_problem(model, n, guided)
    return note + (f" · {short}" if short else "")


def stop(request: gr.Request | None = None) -> str:
    """The Stop button: cancel this page's running Generate (it stops within about a second)."""
    if limits.stop(getattr(request, "session_hash", None)):
        return "Stopping…"
    return "Nothing is running."


def pause(request: gr.Request | None = None) -> str:
    """Pause this page's running Generate after the frame on screen (Step and Resume go on)."""
    return _control(request, "pause")


def step(request: gr.Request | None = None) -> str:
    """Let this page's Generate draw one more frame, then pause (pauses a running one)."""
    return _control(request, "step")


def resume(request: gr.Request | None = None) -> str:
    return _control(request, "resume")


def _control(request: gr.Request | None, action: str) -> str:
    job = limits.running(getattr(request, "session_hash", None))
    if job is None:
        return "Nothing is running."
    getattr(job, action)()
    return action


def _warn_if_off(model: TarFlow, run: Run, settings: SampleSettings) -> None:
    """Warn when the batch is measurably unlike the model's data: raw values far outside [-1, 1],
    or bits/dim far above the held-out range (when the model folder has one)."""
    share = float((run.raw.abs() > SATURATED).float().mean())
    stored = model_folder(run.model_key)
    held = HeldOutRange.load(stored) if stored else None
    bpd = float(image_bits_per_dim(model, to_uint8(run.images).permute(0, 3, 1, 2)).median()) if held else None
    problems = []
    if share > SATURATED_SHARE:
        problems.append(f"{share:.1%} of the raw pixel values lie beyond ±{SATURATED:g} (the image range is ±1)")
    if held is not None and bpd is not None and bpd > held.pct(99):
        problems.append(f"their median is {bpd:.2f} bits/dim, above 99% of this model's held-out images "
                        f"({held.pct(1):.2f}-{held.pct(99):.2f})")
    if problems and settings.guidance > 0:
        gr.Warning("These samples are measurably off: " + "; ".join(problems) + ". Guidance extrapolates "
                   "each step past what the model predicts, w times the gap to the weak prediction; large w "
                   "pushes pixels past the range the model learnt, and the errors compound token by token. "
                   "Lower the guidance scale.", title="Guidance too strong")
    elif problems:
        gr.Warning("These samples are measurably off: " + "; ".join(problems) + ".")


def _results(model: TarFlow, settings: SampleSettings, run: Run, class_guidance: bool, started: float) -> tuple:
    """The final 13 outputs, the first image inspected; keeps ``run`` so that its images can be inspected."""
    final8 = to_uint8(run.images).numpy()
    raw_grid = (render.layout_grid(to_uint8(run.raw).numpy(), run.layout, run.scale, margin=run.margin)
                if run.denoised else None)
    grid_file = _save_grid(model, final8, settings.seed, run)
    run_id = RUNS.put(run)
    grid, strip, heat, caption, frames, view, view_md, image = _inspect(run, model, 0)
    status = captions.done_status(settings, model, class_guidance, time.perf_counter() - started)
    download = gr.update(value=str(grid_file), interactive=True)
    pick = gr.update(maximum=max(2, settings.num), value=1, visible=settings.num > 1)  # a slider needs max > min
    return grid, status, raw_grid, strip, heat, caption, download, run_id, pick, frames, view, view_md, image


def _slug(model: TarFlow) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", model.dataset).strip("-") or "samples"


def _save_grid(model: TarFlow, final8: np.ndarray, seed: int, run: Run) -> Path:
    """The grid as it is shown (row names included, nothing highlighted), to download."""
    grid = render.layout_grid(final8, run.layout, run.scale, margin=run.margin)
    path = run.folder / f"tarflow-{_slug(model)}-seed{seed}.png"
    return save_png(grid.reshape(grid.shape[0], grid.shape[1], -1), path)


def image_file(run: Run, i: int) -> Path:
    """Image ``i`` of the run as a PNG (enlarged with crisp pixels), written once."""
    path = run.folder / f"image-{i + 1}.png"
    if not path.is_file():
        x8 = to_uint8(run.images[i : i + 1]).numpy()[0]
        save_png(x8, path, scale=render.display_scale(x8.shape[1], IMAGE_PX, most=32))
    return path


def _bits(model: TarFlow, x8: np.ndarray, label: int) -> np.ndarray:
    """Each pixel's share of −log₂ p(x8 | label) (no label when negative), as an (H, W) map."""
    x = to_model(x8, model)
    y = None if label < 0 else torch.tensor([label], device=x.device)
    with torch.no_grad():
        return nll_map(model, x, y)[0].float().cpu().numpy()


def _journey(run: Run, i: int, native: int) -> Any:
    stages = run.stages
    nb = len(stages) - 1
    panels = [("z ~ N(0, I)", stages[0][i])]
    for s in range(1, nb + 1):
        panels.append((f"x (after block {s})" if s == nb else f"after block {s}", stages[s][i]))
    if run.denoised:
        panels.append(("denoised", to_uint8(run.images[i : i + 1]).numpy()[0]))
    return render.strip(panels, height=render.panel_height(native))


def _inspect(run: Run, model: TarFlow, i: int) -> tuple:
    """(grid with image i framed, strip, heatmap, caption, frame slider, frame picture, frame caption,
    image download) for image i (0-based)."""
    label = int(run.labels[i])
    name = run.class_names[label] if label >= 0 else None
    x8 = to_uint8(run.images[i : i + 1]).numpy()[0]
    bits = _bits(model, x8, label)
    bpd = float(bits.sum()) / model.num_dims
    heat = render.heatmap(x8, bits, f"image {i + 1} · {captions.heatmap_title(name, bpd)}")
    grid = render.layout_grid(to_uint8(run.images).numpy(), run.layout, run.scale, highlight=i, margin=run.margin)
    last = len(run.frames) - 1
    view, view_md = frame_view(run, i, last)
    frames = gr.update(minimum=0, maximum=last, value=last, interactive=True)
    image = gr.update(value=str(image_file(run, i)), interactive=True, label=f"Download image {i + 1} (PNG)")
    caption = captions.inspect_caption(model, i + 1, name or "no label", bpd)
    return grid, _journey(run, i, model.img_size), heat, caption, frames, view, view_md, image


def inspect(run_id: str, index: float) -> tuple:
    """For image #index (1-based) of a generated run: (grid with it framed, latent strip, heatmap,
    caption, frame slider, frame picture, frame caption, image download)."""
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
    x, y = (evt.index or (0, 0))[:2]
    i = render.layout_index(int(x), int(y), run.layout, run.images.shape[-1], run.scale, margin=run.margin)
    return gr.skip() if i is None else i + 1
