"""Exact likelihoods: log p(x), bits per dimension, per-pixel and per-patch maps, and
classification by Bayes' rule.

Images live in [-1, 1]. The model's density is that of the prior N(0, var) pushed through the
flow: log p(x) = log N(z; 0, var) - sum over blocks and positions of the log-scales a.
For 8-bit data dequantized with uniform noise, x = 2 (k + u) / 256 - 1, the discrete
log-likelihood is the continuous one plus N log(2/256) = -N log(128).
"""

from __future__ import annotations

import math

import torch

from tarflow.model import TarFlow, at_least_fp32

LOG_2PI = math.log(2 * math.pi)
DEQUANT_NATS = math.log(128.0)  # per dimension: [-1, 1] spans 256 levels of width 2/256


def _prior_terms(model: TarFlow, z: torch.Tensor) -> torch.Tensor:
    """-log N(z; 0, var) per position (B, T, D), in nats."""
    z = at_least_fp32(z)
    var = model.var.to(z.dtype)
    return 0.5 * (z.pow(2) / var + torch.log(var) + LOG_2PI)


def nll_terms(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Each position's contribution (B, T, D) to -log p(x) in nats: its prior term plus every
    block's log-scale there. The terms sum to -log p(x) exactly."""
    z, _, logscales = model.trace(x, y)
    terms = _prior_terms(model, z)
    for a in logscales:
        if a is not None:
            terms = terms + at_least_fp32(a)
    return terms


def log_prob(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) per image in nats (continuous density on [-1, 1] units)."""
    return -nll_terms(model, x, y).sum(dim=(1, 2))


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> [-1, 1] floats with uniform dequantization noise."""
    if images.dtype != torch.uint8:
        raise TypeError(f"dequantize expects uint8 images, got {images.dtype}")
    u = torch.rand(images.shape, generator=generator, device=images.device)
    return (images.float() + u) / 128.0 - 1.0


def noise_bits(sigma: float) -> float:
    """Bits per value that Gaussian noise of std ``sigma`` ([-1, 1] scale) costs in 8-bit units: its
    differential entropy plus log2(128) for the bin width 2/256. A noise-augmented model's
    bits/dim on noisy images cannot go below this."""
    return 0.5 * math.log2(2 * math.pi * math.e * sigma**2) + 7.0 if sigma > 0 else 0.0


def to_bits_per_dim(nll_nats: torch.Tensor, num_dims: int, dequantized: bool = True) -> torch.Tensor:
    """Per-image NLL of the continuous density (nats) -> bits per dimension (of 8-bit data if
    ``dequantized``)."""
    per_dim = nll_nats / num_dims + (DEQUANT_NATS if dequantized else 0.0)
    return per_dim / math.log(2)


def bits_per_dim(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None,
                 dequantized: bool = True) -> torch.Tensor:
    """Bits per dimension per image. ``x`` is in [-1, 1], already dequantized when
    ``dequantized`` (then the result is the 8-bit discrete NLL bound)."""
    return to_bits_per_dim(-log_prob(model, x, y), model.num_dims, dequantized)


def nll_map(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None,
            dequantized: bool = True) -> torch.Tensor:
    """Per-pixel -log p(x) in bits (B, H, W), summed over channels; the map of an image sums to
    its total NLL in bits (including the 8-bit dequantization term when ``dequantized``)."""
    terms = nll_terms(model, x, y)
    if dequantized:
        terms = terms + DEQUANT_NATS
    return model.unpatchify(terms).sum(dim=1) / math.log(2)


def patch_map(model: TarFlow, pixel_map: torch.Tensor) -> torch.Tensor:
    """(B, H, W) per-pixel map -> (B, H/p, W/p) per-patch sums."""
    p = model.patch_size
    B, H, W = pixel_map.shape
    return pixel_map.view(B, H // p, p, W // p, p).sum(dim=(2, 4))


def class_log_likelihoods(model: TarFlow, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """log p(x | y) for every class (B, K), in nats, evaluated in batches of image-class pairs."""
    if not model.num_classes:
        raise ValueError("classifying by likelihood needs a class-conditional model")
    B, K = x.shape[0], model.num_classes
    xs = x.repeat_interleave(K, dim=0)
    ys = torch.arange(K, device=x.device).repeat(B)
    out = [log_prob(model, xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, B * K, batch_size)]
    return torch.cat(out).view(B, K)


def classify(model: TarFlow, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """p(y | x) (B, K) under a uniform class prior, by Bayes' rule."""
    return torch.softmax(class_log_likelihoods(model, x, batch_size), dim=1)


@torch.no_grad()
def noisy_bits_per_dim(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0
                       ) -> torch.Tensor:
    """Bits/dim of images x in [-1, 1] with the model's training noise added (one fixed draw per
    ``seed``): the density the model was trained on, as its card's held-out figure measures it.
    An evaluation: no gradient is kept."""
    return to_bits_per_dim(-log_prob(model, add_training_noise(model, x, seed), y), model.num_dims)


def add_training_noise(model: TarFlow, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x plus the model's training noise, drawn on the CPU from ``seed`` (the same on any device)."""
    g = torch.Generator().manual_seed(int(seed))
    return x + model.noise_std * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)


def nll_parts(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Where the bits go: bits/dim per image (B, 2 + num_blocks) split into the 8-bit bin width
    (a constant), the prior term -log N(z) and each block's -log-determinant (the sum of its
    log-scales; zero in VP mode). The parts sum to ``bits_per_dim(model, x, y)``."""
    z, _, logscales = model.trace(x, y)
    scale = 1.0 / (model.num_dims * math.log(2))
    prior = _prior_terms(model, z).sum(dim=(1, 2)) * scale
    parts = [torch.full_like(prior, DEQUANT_NATS / math.log(2)), prior]
    for a in logscales:
        parts.append(torch.zeros_like(prior) if a is None else at_least_fp32(a).sum(dim=(1, 2)) * scale)
    return torch.stack(parts, dim=1)
