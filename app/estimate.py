"""How long a Generate request will take here, how often it can stop, and whether it fits in memory.

The time comes from the cost of one token step measured on this device for this model and this
number of images (a few steps of the first block, once per model, device and batch size, then
cached), times the steps a sample takes, or the frames the page is shown at their pace, whichever
is longer. A whole sample is the same token step repeated, so the token part is good to the growth
of attention with the sequence (a few percent at the bundled sizes, about 10% at 1024 tokens and
width 768); denoising and drawing are left out. Once a Generate of that model and batch has run
here, its own time is the estimate. The same measure sets how many tokens the sampler
inverts between checks of the Stop button, so that it answers within about STOP_WITHIN seconds.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from pathlib import Path

import torch

from tarflow.engine import Inverter
from tarflow.model import Guidance, TarFlow

STOP_WITHIN = 0.5  # seconds of sampling between two checks of Stop (and of the deadline)
TIMED_STEPS = 3  # token steps timed per measurement, after one untimed step
MEMORY_HEADROOM = 1.25  # what sampling needs besides the weights, times this, must be free

_lock = threading.Lock()
# model -> {(device, dtype, rows): seconds per token step}; an unloaded model takes its entries along
_measured: weakref.WeakKeyDictionary[TarFlow, dict[tuple, float]] = weakref.WeakKeyDictionary()
# model -> {(device, dtype, rows): seconds the last whole Generate of that batch took}
_observed: weakref.WeakKeyDictionary[TarFlow, dict[tuple, float]] = weakref.WeakKeyDictionary()


def _key(model: TarFlow, rows: int) -> tuple:
    param = next(model.parameters())
    return (str(param.device), str(param.dtype), rows)


def step_seconds(model: TarFlow, images: int, guided: bool = True) -> float:
    """Seconds per token step for ``images`` images on this model's device (measured once per
    model, device, dtype and batch size; later calls read the cache)."""
    rows = images * (2 if guided else 1)
    key = _key(model, rows)
    with _lock:
        known = _measured.get(model, {})
        if key in known:
            return known[key]
    block = model.blocks[-1]  # the first block sampled
    param = next(model.parameters())
    guidance = Guidance(1.0, attn_temp=0.5) if guided else Guidance()
    seq = torch.zeros(model.num_tokens, images, model.token_dim, device=param.device, dtype=param.dtype)
    steps = min(TIMED_STEPS, model.num_tokens - 2)
    inverter = Inverter(images, None, guidance, param.device, param.dtype)
    with torch.inference_mode():
        inverter.advance(block, seq, 0, 1)
        if param.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if steps > 0:
            inverter.advance(block, seq, 1, 1 + steps)
        if param.device.type == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, steps)
    with _lock:
        _measured.setdefault(model, {})[key] = seconds
    return seconds


def sample_seconds(model: TarFlow, images: int, guided: bool = True) -> float:
    """Estimated seconds to invert a batch (every block, every token)."""
    return step_seconds(model, images, guided) * model.num_blocks * (model.num_tokens - 1)


def observe(model: TarFlow, images: int, guided: bool, seconds: float) -> None:
    """Record how long a whole Generate of ``images`` images took here (start to finished page),
    so the next estimate for the same model and batch can say it."""
    with _lock:
        _observed.setdefault(model, {})[_key(model, images * (2 if guided else 1))] = seconds


def observed_seconds(model: TarFlow, images: int, guided: bool = True) -> float | None:
    """The last recorded whole Generate of this model and batch on this device, or None."""
    with _lock:
        return _observed.get(model, {}).get(_key(model, images * (2 if guided else 1)))


def paced_seconds(model: TarFlow, images: int, guided: bool, frames: int, interval: float) -> float:
    """Inverting while showing ``frames`` frames no faster than one per ``interval`` s: each frame
    costs its share of the token steps or the interval, whichever is longer."""
    compute = sample_seconds(model, images, guided)
    return max(1, frames) * max(compute / max(1, frames), interval)


def stop_every(model: TarFlow, images: int, guided: bool = True) -> int:
    """Tokens to invert between two checks of Stop, so that a check comes every STOP_WITHIN s."""
    return max(1, math.floor(STOP_WITHIN / max(step_seconds(model, images, guided), 1e-9)))


def duration(seconds: float) -> str:
    """'about 3 s', 'about 4 min', 'about 1.5 h'."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def sampling_bytes(model: TarFlow, images: int, guided: bool = True) -> int:
    """Memory sampling takes besides the weights: one block's key/value cache (every layer and
    token, both guidance passes), the token sequence and the frames handed out (a few copies)."""
    param = next(model.parameters())
    rows = images * (2 if guided else 1)
    width = model.blocks[0].proj_in.out_features
    layers = len(model.blocks[0].attn_blocks)
    cache = layers * model.num_tokens * 2 * rows * width
    tokens = 4 * images * model.num_tokens * model.token_dim
    return (cache + tokens) * param.element_size()


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory this process can still take: the system's available memory, bounded by the
    container's limit (a Space's 16 GB is a cgroup limit; /proc/meminfo shows the host's); None
    where neither can be read."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free = limit - used if free is None else min(free, limit - used)
    return free


def memory_problem(model: TarFlow, images: int, guided: bool = True) -> str | None:
    """A sentence when this machine has too little free memory to sample ``images`` images with this
    (already loaded) model, else None."""
    need = sampling_bytes(model, images, guided) * MEMORY_HEADROOM
    free = available_bytes()
    if free is None or need <= free:
        return None
    return (f"{images} images need about {need / 2**30:.1f} GB of memory to sample and this machine has "
            f"{free / 2**30:.1f} GB free; ask for fewer images")
