"""Inpainting and repair by the exact score: Langevin steps on log p(x | y) over chosen pixels only.

A flow gives the exact gradient of log p(x) with one backward pass. To refill erased pixels we run
Langevin dynamics on the free pixels while the kept ones stay put:

    x_E <- x_E + eta * grad_E log p(x | y) + sqrt(2 eta) * tau * noise,

with the step eta shrinking geometrically from ``start`` to ``end`` times sigma^2 and the noise
temperature tau from ``temperature`` to 0, where sigma is the model's training noise. The model's
density is that of images with that noise added, so the chain lives among noisy images: the kept
pixels enter with one fixed noise draw (what the model saw in training) and the result is the
chain's last state after one Tweedie step (x + sigma^2 grad log p), the score's clean estimate.

Where the chain starts matters more than how it walks (benchmarks/inpainting.py): from uniform
noise the score climbs to the nearest textured blob and stays there, because p is only smooth at
the scale of sigma. So the measured scheme starts from the best of a few samples of the model:
each sample's pixels are pasted into the hole, the exact log p(x | y) of every composite picks the
one that fits the kept pixels best, and a short Langevin run smooths the seam.

The kept pixels of the result are copied from the input, never recomputed, so they are bit-exact.

"Repair" climbs with every pixel free, started from a damaged (noised or blurred) image, by plain
gradient ascent with small steps: the score pulls it back toward images the model finds likely.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tarflow.likelihood import add_training_noise, log_prob
from tarflow.model import TarFlow

MASKS = ("bottom", "top", "left", "right", "centre", "patches")
FALLBACK_SIGMA = 0.05  # step scale for a model trained without noise (no sigma of its own)


@dataclass(frozen=True)
class Climb:
    """How the free pixels move. The defaults refine a fill that is already plausible (the best of
    a few samples); ``FROM_NOISE`` and ``REPAIR`` below are the other measured schedules
    (benchmarks/inpainting.py)."""

    steps: int = 40
    start: float = 1.0  # first step size, in units of sigma^2
    end: float = 0.05  # last step size, in units of sigma^2
    temperature: float = 1.0  # Langevin noise at the first step (0 = plain gradient ascent); falls to 0
    guidance: float = 0.0  # w: climb (1 + w) log p(x | y) - w log p(x) (needs a class)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if not 0 < self.end <= self.start:
            raise ValueError("step sizes must satisfy 0 < end <= start")
        if self.temperature < 0 or self.guidance < 0:
            raise ValueError("temperature and guidance must be non-negative")

    def schedule(self, k: int) -> tuple[float, float]:
        """(step size in units of sigma^2, noise temperature) at step k."""
        t = k / max(self.steps - 1, 1)
        return self.start * (self.end / self.start) ** t, self.temperature * (1 - t)


# Annealed Langevin from uniform noise: big steps first, to travel; the score alone rarely finds a
# digit's shape this way (it settles on textured blobs), which the benchmark shows.
FROM_NOISE = Climb(steps=100, start=10.0, end=0.05)
# Repair: plain ascent from the damaged image, small steps so that it stays near it.
REPAIR = Climb(steps=40, start=0.5, end=0.1, temperature=0.0)


@dataclass
class ClimbStep:
    """One streamed step: ``estimate`` is the clean estimate of the whole image (kept pixels copied
    from the input), ``log_prob`` its per-image log p in nats of the noisy state the chain holds."""

    step: int
    steps: int
    estimate: torch.Tensor
    log_prob: torch.Tensor


def preset_mask(name: str, size: int, seed: int = 0) -> torch.Tensor:
    """A bool (size, size) mask, True where pixels are erased: a half ("top", "bottom", "left",
    "right"), the "centre" square (half the side), or random square "patches" covering about a
    third of the image."""
    m = torch.zeros(size, size, dtype=torch.bool)
    h = size // 2
    if name == "bottom":
        m[h:] = True
    elif name == "top":
        m[:h] = True
    elif name == "left":
        m[:, :h] = True
    elif name == "right":
        m[:, h:] = True
    elif name == "centre":
        q = size // 4
        m[q : q + h, q : q + h] = True
    elif name == "patches":
        g = torch.Generator().manual_seed(seed)
        side = max(1, size // 5)
        while m.float().mean() < 1 / 3:
            top, left = torch.randint(0, size - side + 1, (2,), generator=g).tolist()
            m[top : top + side, left : left + side] = True
    else:
        raise ValueError(f"unknown mask {name!r}; choose one of {', '.join(MASKS)}")
    return m


def _score(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None, guidance: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x | y) per image, gradient of the guided objective) at x."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        lp = log_prob(model, x, y)
        objective = lp.sum()
        if guidance > 0 and y is not None:
            objective = (1 + guidance) * objective - guidance * log_prob(model, x, None).sum()
        (grad,) = torch.autograd.grad(objective, [x])
    return lp.detach(), grad.detach()


def climb_stream(model: TarFlow, x: torch.Tensor, free: torch.Tensor, y: torch.Tensor | None = None,
                 climb: Climb = Climb(), start: torch.Tensor | None = None, every: int = 1
                 ) -> Iterator[ClimbStep]:
    """Move the ``free`` pixels of images ``x`` (B, C, H, W) in [-1, 1] up log p(x | y).

    ``free`` is a bool mask broadcastable to ``x`` (True = may change). The free pixels start from
    ``start`` (default: uniform noise in [-1, 1]). Yields every ``every`` steps and always after the
    last; the last step's ``estimate`` is the result. Its kept pixels are those of ``x``, bit-exact.
    """
    free = free.to(device=x.device).expand_as(x)
    if not free.any():
        raise ValueError("no pixel is free to change")
    sigma = model.noise_std if model.noise_std > 0 else FALLBACK_SIGMA
    anchor = add_training_noise(model, x, climb.seed)  # the kept pixels as the model saw images in training
    g = torch.Generator().manual_seed(int(climb.seed) + 1)
    state = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device) * 2 - 1 if start is None else start
    state = torch.where(free, state.to(x.dtype), anchor)
    for k in range(climb.steps + 1):
        lp, grad = _score(model, state, y, climb.guidance)
        if k == climb.steps or (k % every == 0 and k > 0):
            clean = (state + model.noise_std**2 * grad).clamp(-1, 1)
            yield ClimbStep(k, climb.steps, torch.where(free, clean, x), lp)
        if k == climb.steps:
            return
        scale, temp = climb.schedule(k)
        eta = scale * sigma**2
        move = eta * grad
        if temp > 0:
            noise = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
            move = move + temp * math.sqrt(2 * eta) * noise
        # A generous box: far outside [-1, 1] the density is meaningless and the score can blow up.
        state = torch.where(free, (state + move).clamp(-1 - 4 * sigma, 1 + 4 * sigma), anchor)


def climb_to_end(model: TarFlow, x: torch.Tensor, free: torch.Tensor, y: torch.Tensor | None = None,
                 climb: Climb = Climb(), start: torch.Tensor | None = None) -> torch.Tensor:
    """The final clean estimate of ``climb_stream``."""
    *_, last = climb_stream(model, x, free, y, climb, start, every=climb.steps)
    return last.estimate


def best_of_samples(model: TarFlow, x: torch.Tensor, free: torch.Tensor, y: torch.Tensor | None = None,
                    candidates: int = 8, seed: int = 0, guidance: float | None = None) -> torch.Tensor:
    """A starting fill: per image, ``candidates`` samples of the model (of class y, at the model's
    recommended settings), each pasted into the free pixels, and the composite with the highest
    exact log p(x | y) kept. All candidates of an image are scored with the same training-noise
    draw, so they differ only in their fill."""
    from tarflow.sampling import SampleSettings, sample

    B = x.shape[0]
    free = free.to(x.device).expand_as(x)
    labels = None if y is None else y.repeat_interleave(candidates).tolist()
    drawn = sample(model, SampleSettings(num=B * candidates, classes=labels, seed=seed, guidance=guidance))
    drawn = drawn.images.to(device=x.device, dtype=x.dtype).clamp(-1, 1).view(B, candidates, *x.shape[1:])
    composite = torch.where(free[:, None], drawn, x[:, None])
    noisy = composite + add_training_noise(model, torch.zeros_like(x), seed)[:, None]
    ys = None if y is None else y.repeat_interleave(candidates)
    with torch.no_grad():
        score = log_prob(model, noisy.flatten(0, 1), ys).view(B, candidates)
    return drawn[torch.arange(B), score.argmax(1)]


def corrupt(x: torch.Tensor, kind: str, strength: float, seed: int = 0) -> torch.Tensor:
    """A damaged copy of x in [-1, 1]: "noise" adds Gaussian noise of std ``strength`` (clipped),
    "blur" is a Gaussian blur of std ``strength`` pixels."""
    if kind == "noise":
        g = torch.Generator().manual_seed(int(seed))
        return (x + strength * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)).clamp(-1, 1)
    if kind == "blur":
        if strength <= 0:
            return x.clone()
        radius = max(1, math.ceil(3 * strength))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * strength**2))
        k = k / k.sum()
        c = x.shape[1]
        padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        rows = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(rows, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    raise ValueError(f"unknown damage {kind!r}; choose 'noise' or 'blur'")
