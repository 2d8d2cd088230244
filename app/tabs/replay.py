"""Replaying a generated run from its recorded frames, without running the model again: the
step-through player for one image, and the animation of the whole grid as a GIF."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from app import checks, render
from app.animation import grid_gif, grid_mp4, mp4_available
from app.runs import RUNS, FrameInfo, Run

VIEW_PX = 224  # the stepped image is shown about this large
PLAY_INTERVAL = float(os.environ.get("TARFLOW_PLAY_INTERVAL", "0.12"))  # s between frames while playing


def frame_caption(info: FrameInfo, number: int, total: int, num_blocks: int) -> str:
    where = ("the prior sample z" if info.stage == 0 else
             f"block {info.stage}/{num_blocks} · token {info.tokens}/{info.num_tokens}")
    done = " (the flow's output x)" if info.stage == num_blocks and info.block_done else ""
    return f"**Frame {number} of {total}** · {where}{done}"


def frame_view(run: Run, i: int, f: int) -> tuple[np.ndarray, str]:
    """Image i (0-based) at recorded frame f (0-based), enlarged, with its caption."""
    img = run.frames[f][i]
    view = render.squeeze_grey(render.enlarge(img, render.display_scale(img.shape[1], VIEW_PX, most=32)))
    return view, frame_caption(run.frame_info[f], f + 1, len(run.frames), run.num_blocks)


def _where(run_id: str, index: Any, f: Any) -> tuple[Run, int, int]:
    run = RUNS.get(run_id)
    i = checks.number(index, "Image number", 1, run.images.shape[0], integer=True) - 1
    f = checks.number(f, "Frame", 0, len(run.frames) - 1, integer=True)
    return run, i, f


def frame(run_id: str, index: float, frame_number: float) -> tuple[np.ndarray, str]:
    """Recorded frame ``frame_number`` (0 = the prior sample) of image #index: (picture, caption)."""
    run, i, f = _where(run_id, index, frame_number)
    return frame_view(run, i, f)


def step(run_id: str, index: float, frame_number: float, delta: int) -> tuple[Any, np.ndarray, str]:
    """One frame back or forward (stopping at the ends): (slider value, picture, caption)."""
    run, i, f = _where(run_id, index, frame_number)
    f = min(max(f + int(delta), 0), len(run.frames) - 1)
    return (f, *frame_view(run, i, f))


def play(run_id: str, index: float, frame_number: float) -> Iterator[tuple[Any, np.ndarray, str]]:
    """Play from ``frame_number`` to the end (from the start when already at the end), one frame
    every PLAY_INTERVAL seconds; pausing cancels this event and leaves the slider where it was."""
    run, i, f = _where(run_id, index, frame_number)
    start = 0 if f >= len(run.frames) - 1 else f
    for k in range(start, len(run.frames)):
        if k > start:
            time.sleep(PLAY_INTERVAL)
        yield (k, *frame_view(run, i, k))


def animation(run_id: str, fmt: str = "gif") -> str:
    """The whole grid forming, every recorded frame, as a looping GIF or an MP4; returns its path."""
    if fmt not in ("gif", "mp4"):
        raise gr.Error(f"the animation comes as 'gif' or 'mp4', not {str(fmt)[:20]!r}")
    if fmt == "mp4" and not mp4_available():
        raise gr.Error("MP4 export needs the `av` package (pip install av); the GIF works without it")
    run = RUNS.get(run_id)
    path = run.folder / f"tarflow-animation.{fmt}"
    if not path.is_file():
        n = len(run.frames)
        captions = [frame_caption(info, k + 1, n, run.num_blocks).replace("**", "")
                    for k, info in enumerate(run.frame_info)]
        write = grid_mp4 if fmt == "mp4" else grid_gif
        write(run.frames, captions, [info.block_done for info in run.frame_info], run.layout, Path(path))
    return str(path)


def animation_mp4(run_id: str) -> str:
    """The animation as an H.264 MP4 (several times smaller than the GIF, every colour kept)."""
    return animation(run_id, "mp4")
