"""Generated runs, kept briefly so that inspecting image #i needs no resampling: at most
``RUNS_KEPT`` runs and ``RUNS_MAX_BYTES`` of their frames and tensors.

Each run's files (grids and images to download, its animation) live in a scratch folder of its
own (``app.storage``), removed with it.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from app import storage
from app.render import GridLayout

RUNS_KEPT = 24
# A 64-image emoji run records up to 8 MB of frames (generate.FRAME_BYTES) and ~1 MB of tensors.
RUNS_MAX_BYTES = int(float(os.environ.get("TARFLOW_RUNS_MB", "64")) * 2**20)


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
    folder: Path = field(default_factory=lambda: storage.new_folder("runs"))  # removed with the run

    @property
    def stages(self) -> list[np.ndarray]:
        """The batch after 0, 1, ..., num_blocks inverted blocks."""
        return [f for f, info in zip(self.frames, self.frame_info) if info.block_done]

    @property
    def nbytes(self) -> int:
        tensors = sum(t.numel() * t.element_size() for t in (self.images, self.raw, self.labels))
        return tensors + sum(f.nbytes for f in self.frames)


class RunStore:
    """The last few runs by id, oldest dropped first (with their files): at most ``capacity``
    runs and ``max_bytes`` of frames and tensors (the newest run always stays)."""

    def __init__(self, capacity: int = RUNS_KEPT, max_bytes: int = RUNS_MAX_BYTES):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(run.nbytes for run in self._runs.values())

    def put(self, run: Run) -> str:
        run_id = uuid.uuid4().hex[:12]
        dropped = []
        with self._lock:
            self._runs[run_id] = run
            total = sum(r.nbytes for r in self._runs.values())
            while len(self._runs) > 1 and (len(self._runs) > self.capacity or total > self.max_bytes):
                dropped.append(self._runs.popitem(last=False)[1])
                total -= dropped[-1].nbytes
        for old in dropped:
            shutil.rmtree(old.folder, ignore_errors=True)
        return run_id

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(str(run_id or "")[:32])
        if run is None:
            raise gr.Error("That result is no longer kept on the server; press Generate again.")
        return run

    def __len__(self) -> int:
        return len(self._runs)


RUNS = RunStore()

