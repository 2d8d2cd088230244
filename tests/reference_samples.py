"""Samples of the bundled models at fixed settings, stored before a refactoring of the sampler and
compared after it (tests/test_reference_samples.py).

    python tests/reference_samples.py      # (re)writes tests/reference_samples.npz

Only rewrite the file when a change is meant to alter samples, and say so in the commit.
Each setting draws a few images; the raw samples and, where asked, the denoised ones are stored
as float16 values and as uint8 pixels (about 150 kB in all), with a stamp of the arithmetic that
made them (torch version, CPU kernels, CPU model): on the same stamp a fresh draw must give the
same pixels exactly.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "reference_samples.npz"

# (model folder, setting name, SampleSettings keywords): every guidance kind the app offers
# (class, attention temperature, annealed; on a and/or b), with and without denoising, and the
# models' recommended settings.
SETTINGS: list[tuple[str, str, dict]] = [
    ("mnist", "class-ab-denoised", dict(classes=[0, 3, 7, 9], seed=11, guidance=2.0)),
    ("mnist", "unguided-denoised", dict(classes=[1, 4, 5, 8], seed=12, guidance=0.0)),
    ("mnist", "attn-temp", dict(classes=[2, 6], seed=13, guidance=1.0, attn_temp=0.5, denoise=False)),
    ("mnist", "annealed-b", dict(classes=[0, 5], seed=14, guidance=3.0, annealed=True, guide_what="b",
                                 temperature=0.8, denoise=False)),
    ("fashion-mnist", "recommended-denoised", dict(classes=[0, 5, 8, 9], seed=21)),
    ("fashion-mnist", "class-a", dict(classes=[1, 7], seed=22, guidance=1.5, guide_what="a", denoise=False)),
    ("emoji", "recommended-denoised", dict(classes=[0, 2, 7, 8], seed=31)),
    ("emoji", "attn-temp-annealed", dict(classes=[1, 6], seed=32, guidance=1.0, attn_temp=1.5, annealed=True,
                                         sigma=0.05)),
]

_models: dict = {}


def _model(folder: str):
    from tarflow.hub import load_model

    if folder not in _models:
        _models[folder] = load_model(ROOT / "checkpoints" / folder)
    return _models[folder]


def draw(folder: str, settings: dict) -> dict[str, np.ndarray]:
    """The samples of one setting: ``raw`` and, when denoising, ``images`` ((B, C, H, W) float32).

    Drawn on one intra-op thread, so that the whole batch is one set of products whatever the
    machine's thread count: at guidance 3 the emoji model turns the last-bit differences of
    another summation order into 1e-2.
    """
    from tarflow.sampling import SampleSettings, sample

    model = _model(folder)
    s = SampleSettings(num=len(settings["classes"]), **settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = sample(model, s)
    finally:
        torch.set_num_threads(threads)
    arrays = {"raw": out.raw.numpy()}
    if s.denoise:
        arrays["images"] = out.images.numpy()
    return arrays


def pixels(a: np.ndarray) -> np.ndarray:
    """(B, C, H, W) values in [-1, 1] -> the uint8 pixels (B, H, W, C) a user gets."""
    from tarflow.sampling import to_uint8

    return to_uint8(torch.from_numpy(a)).numpy()


def key(folder: str, name: str, kind: str) -> str:
    return f"{folder}/{name}/{kind}"


def arithmetic_stamp() -> str:
    """What decides the last bits of float32 products here: torch, its CPU kernels, the CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {cpu}"


def write(path: Path = REFERENCE) -> None:
    arrays = {"stamp": np.array(arithmetic_stamp())}
    for folder, name, settings in SETTINGS:
        for kind, a in draw(folder, settings).items():
            arrays[key(folder, name, kind)] = a.astype(np.float16)
            arrays[key(folder, name, kind) + "_u8"] = pixels(a)
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path} ({path.stat().st_size / 1e3:.0f} kB), made on {arrays['stamp']}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the package lives in the root
    write()
