"""The Train tab: a TarFlow learning live, on 2D points (the playground) or on MNIST digits.

Training runs on a background thread (``app.coach``); the handlers here only start, pause, step,
stop and reset a session's run, and draw what it looks like now. A stream of frames ends when
the run is paused, stopped or ended, or when a newer stream of the same run takes over.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from app import checks, train_plots
from app.coach import COACH, ENDED, PAUSED, TRAINING, WAITING, Coach, LiveRun, MachineFull, one_thread
from app.inputs import BadImage, sketch_to_image
from tarflow.likelihood import noise_bits
from tarflow.live import (
    DIGITS,
    DigitSettings,
    DigitTrainer,
    PointSettings,
    PointTrainer,
    digit_grid_samples,
    heldout_bits,
)
from tarflow.points import TARGETS, PointFlow, density_grid, latent_grid_lines, points_from_ink, warp_stages

FPS = float(os.environ.get("TARFLOW_TRAIN_FPS", "6"))  # playground frames per second, at most
# Pages streaming a run at once (each draws its frames: about half a core at 6 frames/s); more
# wait in Gradio's queue, which shows their place. Runs beyond the training slots wait in ours.
STREAMS = min(4, int(os.environ.get("TARFLOW_TRAIN_STREAMS", "4")))
DIGIT_GRID_S = float(os.environ.get("TARFLOW_DIGIT_GRID_S", "4"))  # seconds between digit sample grids
CELLS = 64  # the density is evaluated on CELLS x CELLS points and shown smoothed (bilinear)
SHOWN_SAMPLES = 600
SHOWN_DATA = 1000
INK_PX = 64  # a drawing is read at this resolution
DIGITS_PER_CLASS = 10
MAX_SEED = 2**32 - 1

DRAWN = "drawn"
TARGET_CHOICES = [(name.capitalize() if name != "8 gaussians" else "8 Gaussians", name) for name in TARGETS] + \
    [("Draw your own", DRAWN)]
WIDTHS = (16, 32, 48, 64, 96, 128)
DEFAULT = PointSettings()
STATE_WORDS = {WAITING: "Waiting in line", TRAINING: "Training", PAUSED: "Paused", ENDED: "Ended"}


def _session(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "local")


def point_settings(target: Any, blocks: Any, layers: Any, width: Any, lr: Any, batch: Any, seed: Any
                   ) -> PointSettings:
    width = checks.number(width, "Width", 16, 128, integer=True)
    if width % 16:
        raise gr.Error(f"Width must be a multiple of 16 (the attention head size), got {width}")
    return PointSettings(
        target=checks.choice(target, "Target", TARGET_CHOICES),
        blocks=checks.number(blocks, "Blocks", 1, 12, integer=True),
        layers=checks.number(layers, "Layers per block", 1, 4, integer=True),
        width=width, lr=checks.number(lr, "Learning rate", 1e-5, 0.05),
        batch=checks.number(batch, "Batch size", 8, 2048, integer=True),
        seed=checks.number(seed, "Seed", 0, MAX_SEED, integer=True),
    )


def drawn_points(drawing: Any, settings: PointSettings) -> torch.Tensor:
    """A drawing -> the playground's points (training and held-out), where the strokes are."""
    try:
        img = sketch_to_image(drawing)
    except BadImage as e:
        raise gr.Error(f"Draw the target on the canvas first: {e}") from None
    grey = np.asarray(img.convert("L").resize((INK_PX, INK_PX), Image.Resampling.BOX), dtype=np.float64)
    ink = np.where(grey < 247, 255 - grey, 0.0)
    if ink.sum() == 0:
        raise gr.Error("The canvas is empty: draw the shape the flow should learn.")
    return points_from_ink(ink, settings.train_points + settings.heldout_points, settings.seed)


def _point_run(session: str, settings: PointSettings, drawing: Any, coach: Coach) -> LiveRun:
    points = drawn_points(drawing, settings) if settings.target == DRAWN else None
    drawn_id = hashlib.sha1(points.numpy().tobytes()).hexdigest()[:12] if points is not None else ""

    def make() -> LiveRun:
        trainer = PointTrainer(settings, points)
        run = LiveRun(session, ("points", settings, drawn_id), trainer, evaluate=trainer.heldout_nll, eval_every=25)
        run.heldout.add(0, trainer.heldout_nll())
        return run

    try:
        return coach.run_for(session, ("points", settings, drawn_id), make)
    except MachineFull as e:
        raise gr.Error(str(e)) from None


class PointView:
    """Draws a playground run: its own copy of the flow, a fixed latent sample and grid."""

    def __init__(self, settings: PointSettings):
        self.model = PointFlow(settings.width, settings.blocks, settings.layers).eval()
        g = torch.Generator().manual_seed(settings.seed + 7)
        self.z = torch.randn(SHOWN_SAMPLES, 2, generator=g)
        self.lines = latent_grid_lines()
        self.last: tuple[float, int] | None = None  # (time, step) of the previous frame
        self.rate = 0.0
        self.shown: tuple[int, int | None, float] | None = None  # (step, stage, mass) last drawn

    def frame(self, run: LiveRun, stage: int | None = None, coach: Coach | None = None) -> tuple:
        """(density, samples, warped space, loss curves, status) as the run stands now; the
        pictures are gr.skip() when nothing they show has changed since this view's last frame
        (a waiting or paused run costs no drawing)."""
        coach = coach or COACH  # looked up now, not when the module was imported
        if self.shown is not None and self.shown[:2] == (run.step, stage):
            self._measure(run.step)
            return (gr.skip(),) * 4 + (self.status(run, run.step, self.shown[2], coach),)
        with run.between_steps() as trainer:
            self.model.load_state_dict(trainer.model.state_dict())
            step = trainer.step_count
        trainer = run.trainer
        with one_thread():
            logp, mass = density_grid(self.model, CELLS)
            stages = warp_stages(self.model, torch.cat([self.z, self.lines.reshape(-1, 2)]))
        shown = len(stages) - 1 if stage is None or stage < 0 else min(stage, len(stages) - 1)
        n = len(self.z)
        data = trainer.train[:SHOWN_DATA].numpy()
        density = train_plots.density_panel(logp)
        samples = train_plots.scatter_panel(data, stages[-1][:n].numpy())
        warped = train_plots.warp_panel(stages[shown][n:].reshape(self.lines.shape).numpy(), stages[shown][:n].numpy(),
                                        data if shown == len(stages) - 1 else None)
        self._measure(step)
        self.shown = (step, stage, mass)
        return density, samples, warped, loss_table(run), self.status(run, step, mass, coach)

    def _measure(self, step: int) -> None:
        now = time.monotonic()
        if self.last is not None and now > self.last[0] and step >= self.last[1]:
            rate = (step - self.last[1]) / (now - self.last[0])
            self.rate = rate if self.rate == 0 else 0.7 * self.rate + 0.3 * rate
        self.last = (now, step)

    def status(self, run: LiveRun, step: int, mass: float, coach: Coach) -> str:
        trainer = run.trainer
        held = run.heldout.values[-1] if run.heldout.values else float("nan")
        parts = [f"**{_state_word(run, coach)}** · step {step:,}"]
        if run.state == TRAINING and self.rate > 0:
            parts.append(f"{self.rate:.0f} steps/s")
        parts.append(f"held-out NLL **{held:.3f}** nats/point (one Gaussian: {trainer.gaussian_nll:.3f})")
        parts.append(f"density's mass on the grid **{mass:.3f}**")
        return " · ".join(parts)


def _state_word(run: LiveRun, coach: Coach) -> str:
    if run.state == WAITING:
        place = coach.position(run)
        return f"Waiting in line: {_ordinal(place)} (at most {coach.slots} runs train at once)"
    if run.state == ENDED:
        return f"Ended ({run.reason})"
    if run.state == PAUSED and run.step == 0:
        return "Ready"
    return STATE_WORDS[run.state]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def loss_table(run: LiveRun, reference: float | None = None) -> pd.DataFrame:
    """The run's curves for a gr.LinePlot: smoothed training loss, held-out, and a flat reference."""
    trainer = run.trainer
    reference = getattr(trainer, "gaussian_nll", None) if reference is None else reference
    rows = [(s, v, "training (smoothed)") for s, v in zip(run.loss.steps, run.loss.values)]
    rows += [(s, v, "held-out") for s, v in zip(run.heldout.steps, run.heldout.values)]
    if reference is not None:
        last = max(run.step, 1)
        name = "one Gaussian, held-out" if hasattr(trainer, "gaussian_nll") else "noise floor"
        rows += [(0, reference, name), (last, reference, name)]
    table = pd.DataFrame(rows, columns=["step", "value", "curve"])
    return table[np.isfinite(table["value"])]


# ---------------------------------------------------------------------------- playground handlers
def train(target: str, blocks: float, layers: float, width: float, lr: float, batch: float, seed: float,
          drawing: Any = None, request: gr.Request = None) -> Iterator[tuple]:  # type: ignore[assignment]
    """Train (or go on training) the session's playground run, streaming frames as it learns."""
    settings = point_settings(target, blocks, layers, width, lr, batch, seed)
    run = _point_run(_session(request), settings, drawing, COACH)
    COACH.train(run)
    yield from _stream(run, PointView(settings), 1 / FPS)


# Reasons a run ends that leave the page to someone else: no last frame from the old run.
SILENT_ENDS = ("reset", "replaced", "page closed")


def _stream(run: LiveRun, view: PointView, period: float, coach: Coach | None = None) -> Iterator[tuple]:
    coach = coach or COACH
    viewer = coach.new_viewer(run)
    while True:
        started = time.monotonic()
        state = run.state
        if run.viewer != viewer or (state == ENDED and run.reason in SILENT_ENDS):
            return
        yield view.frame(run, run.view_stage, coach)
        if state in (PAUSED, ENDED):
            return
        time.sleep(max(0.0, period - (time.monotonic() - started)))


def step(target: str, blocks: float, layers: float, width: float, lr: float, batch: float, seed: float,
         drawing: Any = None, request: gr.Request = None) -> tuple:  # type: ignore[assignment]
    """One optimiser step of the session's run (paused or not started), and its frame."""
    settings = point_settings(target, blocks, layers, width, lr, batch, seed)
    run = _point_run(_session(request), settings, drawing, COACH)
    COACH.step_once(run)
    return PointView(settings).frame(run, run.view_stage)


def preview(target: str, blocks: float, layers: float, width: float, lr: float, batch: float, seed: float,
            drawing: Any = None, request: gr.Request = None) -> tuple:  # type: ignore[assignment]
    """Reset: the session's run is dropped and the untrained flow on the chosen target is shown."""
    COACH.forget(_session(request), "reset")
    settings = point_settings(target, blocks, layers, width, lr, batch, seed)
    if settings.target == DRAWN and _is_blank(drawing):
        return (*_empty_frame("Draw a shape on the canvas, then press **Train**."),
                gr.update(maximum=settings.blocks, value=settings.blocks))
    points = drawn_points(drawing, settings) if settings.target == DRAWN else None
    trainer = PointTrainer(settings, points)
    run = LiveRun("preview", ("preview",), trainer)
    run.heldout.add(0, trainer.heldout_nll())
    frame = PointView(settings).frame(run)
    return (*frame, gr.update(maximum=settings.blocks, value=settings.blocks))


def _is_blank(drawing: Any) -> bool:
    try:
        img = sketch_to_image(drawing)
    except BadImage:
        return True
    return int(np.asarray(img.convert("L")).min()) >= 247


def _empty_frame(status: str) -> tuple:
    blank = np.full((train_plots.PANEL, train_plots.PANEL, 3), 255, np.uint8)
    return blank, blank, blank, pd.DataFrame({"step": [], "value": [], "curve": []}), status


def pause(request: gr.Request = None) -> str:  # type: ignore[assignment]
    run = COACH.pause(_session(request))
    return f"**Paused** at step {run.step:,}: **Train** goes on, **Step** takes one step." if run else \
        "Nothing is training."


def stop(request: gr.Request = None) -> str:  # type: ignore[assignment]
    run = COACH.stop(_session(request))
    return f"**Stopped** at step {run.step:,}. **Train** starts a new run." if run else "Nothing is training."


def view(stage: float, target: str, blocks: float, layers: float, width: float, lr: float, batch: float,
         seed: float, drawing: Any = None, request: gr.Request = None) -> Any:  # type: ignore[assignment]
    """The warped-space slider: remembered for the run's stream, and redrawn now if none runs."""
    stage = checks.number(stage, "Block", 0, 12, integer=True)
    session = _session(request)
    COACH.set_view(session, stage)
    run = COACH.get(session)
    if run is not None and run.state in (TRAINING, WAITING):
        return gr.skip()  # the stream draws it
    if run is None or run.key[0] != "points":
        return preview(target, blocks, layers, width, lr, batch, seed, drawing, request)[2]
    return PointView(run.key[1]).frame(run, stage)[2]


def end_session(request: gr.Request = None) -> None:  # type: ignore[assignment]
    """The page closed: its run ends and is dropped."""
    COACH.forget(_session(request), "page closed")


# ---------------------------------------------------------------------------- digits handlers
def data_dir() -> str:
    return os.environ.get("TARFLOW_DATA_DIR", "data")


def _digit_run(session: str, seed: int) -> LiveRun:
    def make() -> LiveRun:
        try:
            trainer = DigitTrainer(DigitSettings(seed=seed, data_dir=data_dir()))
        except (OSError, ValueError) as e:
            raise gr.Error(f"MNIST is not available on this server: {checks.sentence(str(e))}") from None
        noise = trainer.cfg.noise_std
        evaluate = lambda: heldout_bits(trainer.averaged(), trainer.test_images, trainer.test_labels, noise)  # noqa: E731
        return LiveRun(session, ("digits", seed), trainer, evaluate=evaluate, eval_every=50)

    try:
        return COACH.run_for(session, ("digits", seed), make)
    except MachineFull as e:
        raise gr.Error(str(e)) from None


def digits(seed: float, request: gr.Request = None) -> Iterator[tuple]:  # type: ignore[assignment]
    """Train the session's digits run from random weights, streaming a sample grid (one row per
    class) every few seconds and the bits/dim curve every second."""
    seed = checks.number(seed, "Seed", 0, MAX_SEED, integer=True)
    run = _digit_run(_session(request), seed)
    COACH.train(run)
    viewer = COACH.new_viewer(run)
    grid_at, grid, overflowed = -math.inf, None, False
    while True:
        state = run.state
        if run.viewer != viewer or (state == ENDED and run.reason in SILENT_ENDS):
            return
        if time.monotonic() - grid_at >= DIGIT_GRID_S or state in (PAUSED, ENDED):
            fresh, grid_at = _digit_grid(run), time.monotonic()
            overflowed = fresh is None
            grid = grid if overflowed else fresh
        note = " · (the last grid overflowed: an untrained flow can; the next one tries again)" if overflowed else ""
        yield grid, loss_table(run, noise_bits(DIGITS.noise_std)), _digit_status(run) + note
        if state in (PAUSED, ENDED):
            return
        time.sleep(1.0)


def digits_reset(seed: float, request: gr.Request = None) -> tuple:  # type: ignore[assignment]
    """Drop the session's run; the next Train starts from random weights."""
    COACH.forget(_session(request), "reset")
    return None, pd.DataFrame({"step": [], "value": [], "curve": []}), "Press **Train** to start from random weights."


def _digit_grid(run: LiveRun) -> np.ndarray | None:
    with run.between_steps() as trainer:
        model = trainer.averaged()
    with one_thread():
        images = digit_grid_samples(model, DIGITS_PER_CLASS)
    if images is None:
        return None
    labels = [c for c in range(model.num_classes) for _ in range(DIGITS_PER_CLASS)]
    return train_plots.digit_grid(images, labels, model.class_names, scale=2)


def _digit_status(run: LiveRun) -> str:
    parts = [f"**{_state_word(run, COACH)}** · step {run.step:,} · {run.trained_s:.0f} s of training"]
    if run.loss.values:
        parts.append(f"{run.loss.values[-1]:.2f} bits/dim (training batches, smoothed)")
    if run.heldout.values:
        parts.append(f"held-out **{run.heldout.values[-1]:.2f}**")
    parts.append(f"noise floor {noise_bits(DIGITS.noise_std):.2f}")
    return " · ".join(parts)
