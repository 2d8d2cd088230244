"""Likelihood as an out-of-distribution score: bits/dim of image sets, the AUROC of telling two sets
apart by it, and simple synthetic sets to try it on.

A model that knew what it does not know would give other data *more* bits/dim than its own; the
AUROC of "bits/dim above a threshold = outlier" says how well that works (1 = perfectly, 0.5 =
chance, below 0.5 = the other data looks *more* likely than the model's own, the effect that
Nalisnick et al., 2019, found for Glow and other flows).

Images are uint8 (N, C, H, W). Every score adds the model's training noise (a fixed draw), as the
model's held-out figures do, and uses no label: p(x) of the label-dropped pathway.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tarflow.likelihood import add_training_noise, nll_parts
from tarflow.model import TarFlow

Progress = Callable[[int, int], None]  # (images done, images in all)


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(outlier score > inlier score) + P(tie) / 2, from the Mann-Whitney rank sum (ties get
    average ranks), in O(n log n)."""
    a = np.asarray(inliers, dtype=np.float64).ravel()
    b = np.asarray(outliers, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both sets need at least one score")
    ranks = _average_ranks(np.concatenate([a, b]))
    u = ranks[a.size :].sum() - b.size * (b.size + 1) / 2
    return float(u / (a.size * b.size))


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of v, tied values sharing the mean of their ranks."""
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends + 1) / 2  # ranks starts+1 .. ends, averaged
    ranks = np.empty(v.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def constant_images(n: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """n images of one flat colour each (a uniformly random grey level or RGB colour)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (n, channels, 1, 1), generator=g, dtype=torch.int64)
    return colours.expand(n, channels, size, size).to(torch.uint8).contiguous()


def noise_images(n: int, size: int, channels: int, seed: int = 0, std: float = 64.0) -> torch.Tensor:
    """n images of independent Gaussian pixels around mid-grey (std in 8-bit levels, clipped)."""
    g = torch.Generator().manual_seed(seed)
    x = 127.5 + std * torch.randn(n, channels, size, size, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def upside_down(images: torch.Tensor) -> torch.Tensor:
    return images.flip(2)


def inverted(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> pixel centres in [-1, 1], as the app feeds images to a model."""
    return (images.double() + 0.5) / 128.0 - 1.0


@torch.no_grad()
def score_parts(model: TarFlow, images: torch.Tensor, batch: int = 100, seed: int = 0,
                progress: Progress | None = None) -> np.ndarray:
    """Bits/dim of each uint8 image (N, C, H, W) with the training noise added, split as
    ``nll_parts`` does (N, 2 + num_blocks); a row sums to the image's bits/dim."""
    param = next(model.parameters())
    x = add_training_noise(model, to_unit(images).to(param.dtype), seed)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(param.device)
        out.append(nll_parts(model, xb).double().cpu().numpy())
        if progress is not None:
            progress(min(i + batch, len(x)), len(x))
    return np.concatenate(out) if out else np.zeros((0, 2 + model.num_blocks))


def typicality_auroc(own: np.ndarray, other: np.ndarray, batch: int = 8, draws: int = 500, seed: int = 0) -> float:
    """AUROC of a two-sided typicality test (Nalisnick et al., 2019b): score a batch of ``batch``
    images by |its mean bits/dim - the typical value|, far either way = outlier. The typical value
    is the mean of one half of ``own``; the own batches are drawn (with replacement, ``draws`` of
    them per set) from the other half, so no image is scored against itself."""
    own, other = np.asarray(own, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if own.size < 2 or other.size == 0 or batch < 1:
        raise ValueError("need two or more own scores, one or more other scores and a batch of at least 1")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(own.size)
    reference, held = own[perm[: own.size // 2]], own[perm[own.size // 2 :]]
    typical = reference.mean()

    def distances(v: np.ndarray) -> np.ndarray:
        if batch == 1:
            return np.abs(v - typical)
        return np.abs(v[rng.integers(0, v.size, size=(draws, batch))].mean(axis=1) - typical)

    return auroc(distances(held), distances(other))
