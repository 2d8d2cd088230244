"""Training one step at a time, to be watched: the 2D playground and digits from scratch.

A trainer owns its model, optimiser and data and does one optimiser step per ``step()`` call;
between steps anyone may read its numbers or copy its weights (the app does so from another
thread, under a lock of its own). Every random draw is a function of (seed, step), and the
initial weights of the seed, so a run is the same each time for a given seed (on one thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tarflow.data import ImageData, load
from tarflow.likelihood import DEQUANT_NATS, LOG_2PI, log_prob, to_bits_per_dim
from tarflow.model import SequenceFlow, TarFlow
from tarflow.points import TARGETS, PointFlow, gaussian_nll, make_points
from tarflow.sampling import SampleSettings, sample
from tarflow.train import EMA, TrainConfig, build_model, lr_at, make_batch

GRAD_CLIP = 10.0  # on the 2D NLL in nats per point; only the first, wild steps ever reach it


def _initial_weights(make: type | object, seed: int, *args: object, **kwargs: object) -> torch.nn.Module:
    """``make(*args, **kwargs)`` with weights that depend on ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(*args, **kwargs)  # type: ignore[operator]


def optimizer_step(model: SequenceFlow, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    """Backward and one step; a non-finite loss raises FloatingPointError before any weight moves."""
    if not torch.isfinite(loss):
        raise FloatingPointError("the loss is no longer finite: training diverged; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


@dataclass(frozen=True)
class PointSettings:
    """The playground's choices: the target, the flow's size and the optimisation."""

    target: str = "two moons"
    blocks: int = 6
    layers: int = 1
    width: int = 32
    lr: float = 1e-3
    batch: int = 256
    seed: int = 0
    train_points: int = 4000
    heldout_points: int = 2000

    def __post_init__(self) -> None:
        if self.target not in TARGETS and self.target != "drawn":
            raise ValueError(f"unknown target {self.target!r}")
        if self.width % 16:
            raise ValueError(f"width must be a multiple of 16 (the head size), got {self.width}")


class PointTrainer:
    """A :class:`PointFlow` learning a 2D point cloud by maximum likelihood (Adam, constant rate).

    ``points`` (train_points + heldout_points, 2) replaces the named target (a drawing's points);
    the first ``train_points`` train, the rest are held out.
    """

    def __init__(self, settings: PointSettings, points: torch.Tensor | None = None):
        self.settings = s = settings
        if points is None:
            points = make_points(s.target, s.train_points + s.heldout_points, s.seed)
        if points.shape != (s.train_points + s.heldout_points, 2):
            raise ValueError(f"expected {s.train_points + s.heldout_points} points, got {tuple(points.shape)}")
        self.train, self.heldout = points[: s.train_points], points[s.train_points :]
        self.model = _initial_weights(PointFlow, s.seed, s.width, s.blocks, s.layers)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr, fused=True)
        self.step_count = 0
        self.gaussian_nll = gaussian_nll(self.train, self.heldout)

    def step(self) -> float:
        """One optimiser step on a batch drawn from (seed, step); returns its NLL (nats per point)."""
        g = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + self.step_count)
        batch = self.train[torch.randint(len(self.train), (self.settings.batch,), generator=g)]
        loss = -log_prob(self.model, batch).mean()
        optimizer_step(self.model, self.optimizer, loss, GRAD_CLIP)
        self.step_count += 1
        return loss.item()

    @torch.no_grad()
    def heldout_nll(self) -> float:
        """Mean NLL of the held-out points, nats per point."""
        return float(-log_prob(self.model, self.heldout).mean())


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, H/f, W/f, C) by averaging f x f blocks."""
    n, h, w, c = images.shape
    blocks = images.reshape(n, h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


# Digits from scratch: MNIST at 14 x 14, patch 2 (49 tokens of 4 values), small enough that a
# step takes a fraction of a second on one core. See benchmarks/live_training.py for how soon
# the digits are readable.
DIGITS = TrainConfig(dataset="mnist", patch_size=2, channels=64, num_blocks=4, layers_per_block=2, head_dim=32,
                     noise="gaussian", noise_std=0.1, batch_size=64, lr=2e-3, min_lr=2e-3, warmup_steps=50,
                     total_steps=10**9, drop_label=0.1, ema_decay=0.99, guidance=1.0, seed=0)
DIGITS_FACTOR = 2  # 28 -> 14 pixels


@dataclass(frozen=True)
class DigitSettings:
    seed: int = 0
    data_dir: str = "data"


class DigitTrainer:
    """A small class-conditional TarFlow learning MNIST from random weights, with an averaged
    copy (EMA) that samples are drawn from."""

    def __init__(self, settings: DigitSettings, data: ImageData | None = None):
        self.settings = settings
        self.cfg = cfg = TrainConfig(**{**DIGITS.to_dict(), "seed": settings.seed})
        data = data if data is not None else load(cfg.dataset, settings.data_dir)
        small = downsample(data.images, DIGITS_FACTOR)
        self.data = ImageData(small, data.labels, data.class_names, data.test_mask, data.name, data.meta)
        self.images, self.labels = self.data.tensors("train")
        test_images, test_labels = self.data.tensors("test")
        self.test_images, self.test_labels = test_images[:200], test_labels[:200]
        self.model = _initial_weights(build_model, cfg.seed, cfg, self.data.image_size, self.data.channels,
                                      self.data.class_names)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step_count = 0

    def step(self) -> float:
        """One optimiser step; returns the batch's bits/dim (of the noisy 8-bit images)."""
        cfg = self.cfg
        x, y = make_batch(cfg, self.images, self.labels, self.step_count, num_classes=self.model.num_classes)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step_count)
        z, _, logdets = self.model(x, y)
        loss = self.model.get_loss(z, logdets)
        optimizer_step(self.model, self.optimizer, loss, cfg.grad_clip)
        self.ema.update(self.model)
        self.step_count += 1
        # get_loss is the NLL per dimension in nats but for the Gaussian's constant.
        return (loss.item() + 0.5 * LOG_2PI + DEQUANT_NATS) / math.log(2)

    def averaged(self) -> TarFlow:
        """A fresh model holding the averaged weights (for sampling while training goes on)."""
        model = build_model(self.cfg, self.data.image_size, self.data.channels, self.data.class_names)
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.ema.shadow.items()})
        return model.eval()


@torch.no_grad()
def heldout_bits(model: TarFlow, images: torch.Tensor, labels: torch.Tensor, noise_std: float, seed: int = 0
                 ) -> float:
    """Mean bits/dim of held-out uint8 images with the training noise added (one fixed draw)."""
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 127.5 - 1 + noise_std * torch.randn(images.shape, generator=g)
    return float(to_bits_per_dim(-log_prob(model, x, labels), model.num_dims).mean())


def digit_grid_samples(model: TarFlow, per_class: int, seed: int = 1234) -> torch.Tensor | None:
    """``per_class`` samples of every class, row by row (class 0 first), denoised, in [-1, 1];
    None when sampling overflows (a barely trained model can)."""
    classes = [c for c in range(model.num_classes) for _ in range(per_class)]
    try:
        return sample(model, SampleSettings(num=len(classes), classes=classes, seed=seed, denoise=True)).images
    except FloatingPointError:
        return None
