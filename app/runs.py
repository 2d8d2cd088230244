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
import torch

RUNS_KEPT = 24
OUT_DIR = Path(tempfile.gettempdir()) / "tarflow-app"


@dataclass
class Run:
    model_key: str
    stages: list[torch.Tensor]  # the whole batch after 0, 1, ..., num_blocks inverted blocks (CPU)
    images: torch.Tensor  # final images (denoised if asked), [-1, 1]
    raw: torch.Tensor
    labels: torch.Tensor
    denoised: bool
    class_names: list[str]
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


def new_folder(*parts: str) -> Path:
    """A fresh folder under ``OUT_DIR`` (inside ``parts``) for one result's files."""
    folder = OUT_DIR.joinpath(*parts) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder
