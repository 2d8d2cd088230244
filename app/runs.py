"""Generated runs, kept briefly so that inspecting image #i needs no resampling.

Files the app writes for visitors (grids to download, drawings) live under ``OUT_DIR``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from app.render import GridLayout

RUNS_KEPT = 24
OUT_DIR = Path(tempfile.gettempdir()) / "tarflow-app"


@dataclass(frozen=True)
class FrameInfo:
    """Where a recorded frame was taken: after ``tokens`` of ``num_tokens`` tokens of the
    ``stage``-th inverted block (stage 0: the prior sample)."""

    stage: int
    tokens: int
    num_tokens: int

    @property
    def block_done(self) -> bool:
        return self.tokens == self.num_tokens


@dataclass
class Run:
    model_key: str
    frames: list[np.ndarray]  # the whole batch as uint8 (B, H, W, C) at each recorded moment
    frame_info: list[FrameInfo]
    images: torch.Tensor  # final images (denoised if asked), [-1, 1]
    raw: torch.Tensor
    labels: torch.Tensor
    denoised: bool
    class_names: list[str]
    scale: int  # display enlargement of the grid, to map clicks to images
    layout: GridLayout
    margin: int = 0  # display pixels left of the grid (row names)
    num_blocks: int = 0
    folder: Path = field(default_factory=lambda: new_folder())  # this run's files, removed with it

    @property
    def stages(self) -> list[np.ndarray]:
        """The batch after 0, 1, ..., num_blocks inverted blocks."""
        return [f for f, info in zip(self.frames, self.frame_info) if info.block_done]


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
            shutil.rmtree(old.folder, ignore_errors=True)
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


def new_folder(*parts: str) -> Path:
    """A fresh folder under ``OUT_DIR`` (inside ``parts``) for one result's files."""
    folder = OUT_DIR.joinpath(*parts) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prune(folder: Path, keep: int) -> None:
    """Keep only the ``keep`` newest entries of ``folder`` (result folders written for visitors)."""
    if not folder.is_dir():
        return
    items = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    for old in items[:-keep] if keep > 0 else items:
        shutil.rmtree(old, ignore_errors=True)
