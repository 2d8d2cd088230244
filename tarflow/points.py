"""TarFlow on 2D points: the playground's model, its target distributions and what it draws.

A point (x0, x1) is a sequence of two tokens of one value each, and goes through the same
:class:`~tarflow.model.MetaBlock` stack as an image's patches. With two tokens a block is an
affine coupling layer: token 0 has nothing before it and passes unchanged, token 1 is scaled and
shifted by amounts the causal Transformer computes from token 0,

    z0 = x0,    z1 = (x1 - b(x0)) * exp(-a(x0)),

and the next block reads the sequence backwards, so it is token 1 that passes and token 0 that
moves. (One token of two values would be no flow at all: a first token is never transformed.)
Everything here is in nats, on the plane's own units.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from tarflow.likelihood import log_prob
from tarflow.model import SequenceFlow

BOX = 4.0  # the plane shown: [-BOX, BOX]^2; every target lies well inside it
TARGETS = ("two moons", "rings", "8 gaussians", "checkerboard", "spiral", "gaussian")


class PointFlow(SequenceFlow):
    """A TarFlow over 2D points (B, 2): two tokens of one value, unconditional, affine."""

    def __init__(self, channels: int = 32, num_blocks: int = 6, layers_per_block: int = 1, head_dim: int = 16,
                 expansion: int = 4):
        super().__init__(2, 1, channels, num_blocks, layers_per_block, nvp=True, head_dim=head_dim,
                         expansion=expansion)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (B, 2), got {tuple(x.shape)}")
        return x.unsqueeze(-1)

    def from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.squeeze(-1)


def make_points(target: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points (n, 2) from a named target distribution, the same for the same seed."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    rng = np.random.default_rng([seed, TARGETS.index(target)])
    u = rng.random(n)
    if target == "two moons":
        t = math.pi * u
        upper = rng.random(n) < 0.5
        xy = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1),
                      np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
        xy = 1.6 * (xy - [0.5, 0.25]) + 0.1 * rng.standard_normal((n, 2))
    elif target == "rings":
        radius = rng.integers(1, 4, n).astype(float)
        xy = radius[:, None] * np.stack([np.cos(2 * math.pi * u), np.sin(2 * math.pi * u)], 1)
        xy += 0.08 * rng.standard_normal((n, 2))
    elif target == "8 gaussians":
        angle = rng.integers(0, 8, n) * math.pi / 4
        xy = 2.5 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.15 * rng.standard_normal((n, 2))
    elif target == "checkerboard":
        col, row = rng.integers(0, 4, n), rng.integers(0, 2, n)
        row = 2 * row + (col % 2)  # dark squares only
        xy = (np.stack([col, row], 1) + rng.random((n, 2))) * 1.5 - 3.0
    elif target == "spiral":
        t = 3 * math.pi * np.sqrt(u) + 0.5
        arm = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
        xy = arm * (t[:, None] / (3.5 * math.pi) * 3.2) * np.stack([np.cos(t), np.sin(t)], 1)
        xy += 0.1 * rng.standard_normal((n, 2))
    else:  # "gaussian": correlated, off centre; the single-Gaussian fit is the right model here
        cov = np.array([[0.8, 0.5], [0.5, 0.6]])
        xy = [0.3, -0.2] + rng.standard_normal((n, 2)) @ np.linalg.cholesky(cov).T
    return torch.from_numpy(np.asarray(xy, dtype=np.float32))


def points_from_ink(ink: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """Points drawn where a square picture has ink: ``ink`` (H, W) >= 0 is each pixel's weight.
    A pixel is picked in proportion to its ink and the point lands uniformly inside it; the
    picture fills the plane's inner 90% (row 0 at the top)."""
    ink = np.asarray(ink, dtype=np.float64)
    if ink.ndim != 2 or ink.shape[0] != ink.shape[1]:
        raise ValueError(f"expected a square ink map, got shape {ink.shape}")
    total = ink.sum()
    if not np.isfinite(total) or total <= 0 or (ink < 0).any():
        raise ValueError("the drawing has no ink")
    rng = np.random.default_rng([seed, 99])
    size = ink.shape[0]
    pick = rng.choice(ink.size, size=n, p=(ink / total).ravel())
    row, col = np.divmod(pick, size)
    frac = rng.random((n, 2))
    span = 2 * 0.9 * BOX / size
    xy = np.stack([-0.9 * BOX + (col + frac[:, 0]) * span, 0.9 * BOX - (row + frac[:, 1]) * span], 1)
    return torch.from_numpy(xy.astype(np.float32))


def gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean NLL (nats per point) of ``test`` under the one Gaussian fitted to ``train`` (maximum
    likelihood: its mean and covariance): the yardstick a flow has to beat."""
    x = train.double()
    mean = x.mean(0)
    cov = torch.cov(x.T, correction=0) + 1e-6 * torch.eye(2, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return float(-dist.log_prob(test.double()).mean())


def grid_centres(cells: int, box: float = BOX) -> tuple[torch.Tensor, float]:
    """The centres (cells * cells, 2) of a regular grid over [-box, box]^2, row 0 at the top,
    and each cell's area."""
    step = 2 * box / cells
    ticks = -box + step * (torch.arange(cells, dtype=torch.float64) + 0.5)
    yy, xx = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), step * step


@torch.no_grad()
def density_grid(model: PointFlow, cells: int, box: float = BOX, chunk: int = 8192) -> tuple[np.ndarray, float]:
    """The model's exact log-density on a cells x cells grid over [-box, box]^2 (row 0 at the
    top), and its mass there: the midpoint-rule integral of exp(log p), 1 when the grid holds it all."""
    centres, area = grid_centres(cells, box)
    dtype = model.var.dtype
    logp = torch.cat([log_prob(model, centres[i : i + chunk].to(dtype)) for i in range(0, len(centres), chunk)])
    logp = logp.double()
    bad = ~torch.isfinite(logp)
    if bad.any():  # far from the data a float32 flow can overflow inside (nan): those cells again in float64
        logp[bad] = log_prob(copy.deepcopy(model).double(), centres[bad].double())
        # Still not finite: z left even float64's range, so the density there is 0 to any precision.
        logp = torch.nan_to_num(logp, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    logp = logp.view(cells, cells)
    return logp.numpy(), float(logp.exp().sum() * area)


def latent_grid_lines(count: int = 13, points_per_line: int = 60, extent: float = 3.0) -> torch.Tensor:
    """A regular grid in latent space as polylines (2 * count, points_per_line, 2): ``count``
    vertical then ``count`` horizontal lines over [-extent, extent]^2."""
    at = torch.linspace(-extent, extent, count)
    along = torch.linspace(-extent, extent, points_per_line)
    vertical = torch.stack([at[:, None].expand(-1, points_per_line), along[None].expand(count, -1)], -1)
    return torch.cat([vertical, vertical.flip(-1)])


@torch.no_grad()
def warp_stages(model: PointFlow, z: torch.Tensor) -> list[torch.Tensor]:
    """Latent points z (..., 2) carried back through the flow: z itself, then the points after
    each inverted block (the model's last block first); the final entry is data space."""
    flat = z.reshape(-1, 2).to(model.var.dtype).unsqueeze(-1)
    return [model.from_tokens(s).reshape(z.shape) for s in model.reverse_stages(flat)]
