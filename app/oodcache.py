"""The out-of-distribution explorer's numbers: bits/dim of a few hundred images of every bundled
dataset and of synthetic sets, for one model, computed once and kept on disk.

Other datasets are fitted to the model exactly as Invert fits an upload (``app.inputs.fit``:
channels, the dataset's polarity, crop to content, Lanczos resize). The model's own held-out
images are used as they are. A results file is named by a fingerprint of the model's weights and
of these settings, so a retrained model never reads stale numbers. A file shipped beside a
bundled checkpoint (``ood.npz``) is used when its fingerprint matches; the Space has no datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.inputs import fit
from app.models import ROOT, _cache_dir
from tarflow import ood
from tarflow.data import DataSourceError, load, split_name
from tarflow.model import TarFlow
from tarflow.sampling import SampleSettings, sample

DATASETS = ("mnist", "fashion-mnist", "emoji")  # the bundled models' data
# Datasets that hold another one's images (emoji2 is emoji plus a second style): not "other data"
# for a model of the larger one.
CONTAINS = {"emoji2": ("emoji",)}
PER_SET = int(os.environ.get("TARFLOW_OOD_PER_SET", "300"))  # images per set
VERSION = 1  # of the recipe below; a change makes every cached file stale
OWN = "held-out"  # the name of the model's own held-out set
SYNTHETIC = ("samples", "upside down", "inverted", "constant", "noise")
FILE = "ood.npz"

Progress = Callable[[float, str], None]


@dataclass
class OODTable:
    """Per set: each image's bits/dim split into parts (n, 2 + num_blocks), ``nll_parts`` order."""

    parts: dict[str, np.ndarray]
    kinds: dict[str, str]  # "own", "dataset" or "synthetic"
    notes: list[str] = field(default_factory=list)

    def totals(self, name: str) -> np.ndarray:
        return self.parts[name].sum(axis=1)

    def auroc(self, name: str) -> float | None:
        """AUROC of bits/dim telling set ``name`` from the model's own held-out images."""
        if OWN not in self.parts or name == OWN:
            return None
        return ood.auroc(self.totals(OWN), self.totals(name))

    def save(self, path: Path, fingerprint: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"fingerprint": fingerprint, "kinds": self.kinds, "notes": self.notes, "order": list(self.parts)}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)),
                            **{f"set{i}": v.astype(np.float32) for i, v in enumerate(self.parts.values())})
        tmp.replace(path)  # readers never see half a file

    @classmethod
    def read(cls, path: Path, fingerprint: str) -> OODTable | None:
        """The table in ``path`` if it exists and was made for ``fingerprint``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("fingerprint") != fingerprint:
                    return None
                parts = {name: z[f"set{i}"].astype(np.float64) for i, name in enumerate(meta["order"])}
        except (OSError, ValueError, KeyError):
            return None
        return cls(parts, meta["kinds"], meta.get("notes", []))


def data_dir() -> Path:
    return Path(os.environ.get("TARFLOW_DATA_DIR", ROOT / "data"))


def fingerprint(model: TarFlow) -> str:
    """A hash of the weights and of what else decides the numbers: this module's recipe (the set
    size included), the training noise, the dataset and the settings the samples are drawn with.
    Other metadata (a card's wording, default classes) may change without invalidating it."""
    settings = SampleSettings()
    g = settings.guidance_for(model)
    recipe = [VERSION, PER_SET, DATASETS, model.noise_std, model.dataset, g.scale, g.what, g.attn_temp,
              settings.temperature_for(model), model.num_classes]
    h = hashlib.sha256(json.dumps(recipe).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _held_out(name: str, n: int) -> torch.Tensor:
    """Up to n held-out images (N, C, H, W) of a prepared dataset, a fixed random choice."""
    images, _ = load(name, data_dir()).tensors("test")
    g = torch.Generator().manual_seed(0)
    return images[torch.randperm(len(images), generator=g)[:n]]


def fitted(images: torch.Tensor, model: TarFlow) -> torch.Tensor:
    """uint8 (N, C, H, W) of any dataset -> the model's size and channels, as Invert fits uploads."""
    out = []
    for arr in images.permute(0, 2, 3, 1).numpy():
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        out.append(fit(img, model.img_size, model.in_channels, split_name(model.dataset)[0]).array)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def image_sets(model: TarFlow, progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str],
                                                                           list[str]]:
    """The sets to score: the model's own held-out images, the other bundled datasets fitted to
    the model, its own samples, and synthetic sets. Missing datasets are skipped with a note."""
    own_name = split_name(model.dataset)[0]
    sets: dict[str, torch.Tensor] = {}
    kinds: dict[str, str] = {}
    notes: list[str] = []
    for name in dict.fromkeys((own_name, *DATASETS)):
        if not name or name in CONTAINS.get(own_name, ()):
            continue
        try:
            images = _held_out(name, PER_SET)
        except DataSourceError:
            notes.append(f"{name}: not prepared here (python -m tarflow prepare-data {name})")
            continue
        if name == own_name:
            sets[OWN], kinds[OWN] = images, "own"
        else:
            sets[name], kinds[name] = fitted(images, model), "dataset"
    if progress:
        progress(0.05, f"drawing {PER_SET} samples from the model")
    classes = list(range(model.num_classes)) if model.num_classes else None
    drawn = sample(model, SampleSettings(num=PER_SET, classes=classes, seed=0))
    sets["samples"] = drawn.uint8().permute(0, 3, 1, 2).contiguous()
    if OWN in sets:
        sets["upside down"], sets["inverted"] = ood.upside_down(sets[OWN]), ood.inverted(sets[OWN])
    sets["constant"] = ood.constant_images(PER_SET, model.img_size, model.in_channels, seed=1)
    sets["noise"] = ood.noise_images(PER_SET, model.img_size, model.in_channels, seed=2)
    kinds.update({k: "synthetic" for k in SYNTHETIC if k in sets})
    return sets, kinds, notes


def build(model: TarFlow, progress: Progress | None = None) -> OODTable:
    """Score every set (the slow part: a few thousand likelihoods)."""
    sets, kinds, notes = image_sets(model, progress)
    total = sum(len(v) for v in sets.values())
    parts, done = {}, 0
    for name, images in sets.items():
        def report(k: int, n: int, name: str = name, before: int = done) -> None:
            if progress:
                progress(0.1 + 0.9 * (before + k) / total, f"bits/dim of {name}: {k}/{n}")
        parts[name] = ood.score_parts(model, images, progress=report)
        done += len(images)
    return OODTable(parts, kinds, notes)


_locks: dict[str, threading.Lock] = {}
_memory: dict[str, OODTable] = {}
_guard = threading.Lock()


def cached(model: TarFlow, folder: Path | None = None) -> OODTable | None:
    """The model's table if it is already computed (in memory, in the cache folder, or shipped in
    ``folder``); None otherwise. Never computes."""
    key = fingerprint(model)
    with _guard:
        if key in _memory:
            return _memory[key]
    found = OODTable.read(_cache_dir() / "ood" / f"{key}.npz", key) or (
        OODTable.read(folder / FILE, key) if folder else None)
    if found is not None:
        with _guard:
            _memory[key] = found
    return found


def table(model: TarFlow, folder: Path | None = None, progress: Progress | None = None) -> OODTable:
    """The model's table: already computed (``cached``), or built (once, even when several
    requests ask at the same time) and written to the cache folder."""
    key = fingerprint(model)
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        found = cached(model, folder)
        if found is None:
            found = build(model, progress)
            found.save(_cache_dir() / "ood" / f"{key}.npz", key)
            with _guard:
                _memory[key] = found
        return found
