"""Classification by likelihood, made honest: noise-averaged scores, a fitted temperature, and
the numbers that say how far to trust it (accuracy, balanced accuracy, expected calibration error).

Bayes' rule turns class-conditional log-likelihoods into p(y | x). Over hundreds of dimensions the
differences between classes run to tens of nats, so the raw posterior is nearly always ~100% sure,
right or wrong. One temperature T on those differences, softmax(log p(x | y) / T), fitted on
held-out images, keeps the ranking (so the accuracy) and makes the stated confidence match how
often it is right. The margins in bits are reported beside it: they are the quantity the model
actually measures.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tarflow.likelihood import class_log_likelihoods
from tarflow.model import TarFlow

CALIBRATION_FILE = "calibration.json"


def shift_offsets(shifts: int) -> list[tuple[int, int]]:
    """The moves (dy, dx) of at most ``shifts`` pixels down or up and right or left, no move first:
    0 -> no move only; 1 -> the image and its eight moves by one pixel (diagonals included)."""
    moves = [(dy, dx) for dy in range(-shifts, shifts + 1) for dx in range(-shifts, shifts + 1) if dy or dx]
    return [(0, 0), *moves]


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x (B, C, H, W) moved down dy and right dx pixels; the uncovered edge repeats (the background)."""
    if dy == dx == 0:
        return x
    p = max(abs(dy), abs(dx))
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


@torch.no_grad()
def noisy_class_log_likelihoods(model: TarFlow, x: torch.Tensor, draws: int = 0, seed: int = 0,
                                batch_size: int = 256, shifts: int = 0) -> torch.Tensor:
    """log p(x | y) for every class (B, K) in nats; with ``draws`` > 0, the mean over that many
    copies of x with the model's training noise (sigma = model.noise_std) added; with ``shifts``
    > 0, the mean over x and its moves by up to that many pixels (shift_offsets), each scored
    (and noised) alike.

    A model trained on noisy images puts its density on a shell around the data; clean images sit
    off it. Scoring noisy copies asks the question the model was trained to answer. Scoring moved
    copies asks it of a few images near x, so one quirk of x's exact position counts for less: a
    mean of log-likelihoods is the log of their product, Bayes' rule applied to all the copies.
    """
    offsets = shift_offsets(shifts)
    copies = noise_copies(model.noise_std, draws)  # noisy copies per moved copy
    if not copies and len(offsets) == 1:
        return class_log_likelihoods(model, x, batch_size)
    g = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(x.shape[0], model.num_classes, dtype=torch.float64)
    for dy, dx in offsets:
        view = shifted(x, dy, dx)
        for _ in range(max(1, copies)):
            if copies:
                noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
                total += class_log_likelihoods(model, view + model.noise_std * noise, batch_size).double().cpu()
            else:
                total += class_log_likelihoods(model, view, batch_size).double().cpu()
    return (total / (len(offsets) * max(1, copies))).to(torch.float32)


def noise_copies(noise_std: float, draws: int) -> int:
    """How many noisy copies ``draws`` asks for are scored: none for a model trained without noise."""
    return draws if draws > 0 and noise_std > 0 else 0


def views_per_image(draws: int = 0, shifts: int = 0) -> int:
    """How many times noisy_class_log_likelihoods scores each image under each class."""
    return max(1, draws) * len(shift_offsets(shifts))


def describe_views(noise_std: float, draws: int = 0, shifts: int = 0) -> str:
    """What each class's score is the mean log-likelihood of, in words ("" for the clean image alone),
    e.g. "4 copies of the image with the training noise (sigma 0.1) added"."""
    noisy = noise_copies(noise_std, draws)
    moves = len(shift_offsets(shifts)) - 1
    moved = f"{moves} cop{'ies' if moves > 1 else 'y'} moved by up to {shifts} pixel{'s' if shifts > 1 else ''}"
    if noisy and moves:
        return (f"{noisy} noisy copies (the training noise, sigma {noise_std:g}, added) of the image and of "
                f"each of its {moved}")
    if noisy:
        return f"{noisy} copies of the image with the training noise (sigma {noise_std:g}) added"
    return f"the image and its {moved}" if moves else ""


def posterior(log_likelihoods: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p(y | x) under a uniform class prior, with the log-likelihoods divided by ``temperature``."""
    return torch.softmax(log_likelihoods.double() / temperature, dim=1).to(log_likelihoods.dtype)


def margins_bits(log_likelihoods: torch.Tensor) -> torch.Tensor:
    """log2 p(x | best) - log2 p(x | y) for every class (B, K): 0 for the winner, bits behind otherwise."""
    ll = log_likelihoods.double()
    return ((ll.max(dim=1, keepdim=True).values - ll) / math.log(2)).to(log_likelihoods.dtype)


def nll_of_labels(log_likelihoods: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean -log p(true y | x) at a temperature."""
    logp = torch.log_softmax(log_likelihoods.double() / temperature, dim=1)
    return float(-logp.gather(1, labels.view(-1, 1)).mean())


def fit_temperature(log_likelihoods: torch.Tensor, labels: torch.Tensor, lo: float = 1e-2,
                    hi: float = 1e4) -> float:
    """The temperature minimising the held-out negative log-likelihood of the true labels.

    The loss is convex in 1/T, so a golden-section search over log T on a wide bracket finds it.
    """
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2

    def f(t: float) -> float:
        return nll_of_labels(log_likelihoods, labels, math.exp(t))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by the bins' sizes."""
    conf, pred = probs.double().max(dim=1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin k holds (edges[k], edges[k+1]]
    ece = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            ece += float(sel.double().mean() * (conf[sel].mean() - right[sel].mean()).abs())
    return ece


def accuracy(log_likelihoods: torch.Tensor, labels: torch.Tensor) -> float:
    return float((log_likelihoods.argmax(dim=1) == labels).double().mean())


def balanced_accuracy(log_likelihoods: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present of the share of that class classified right."""
    pred = log_likelihoods.argmax(dim=1)
    per_class = [float((pred[labels == k] == k).double().mean()) for k in labels.unique()]
    return sum(per_class) / len(per_class)


@dataclass
class Calibration:
    """What a model's likelihood classifier measured on held-out images, stored beside its weights."""

    temperature: float
    accuracy: float
    balanced_accuracy: float
    ece_before: float
    ece_after: float
    mean_confidence_before: float
    mean_confidence_after: float
    images: int
    noise_draws: int
    note: str = ""
    shifts: int = 0  # each image scored as the mean over it and its moves by up to this many pixels

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Calibration | None:
        """The stored calibration, or None when the folder has none (or it cannot be read)."""
        path = Path(folder) / CALIBRATION_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError):
            return None


def calibrate(log_likelihoods: torch.Tensor, labels: torch.Tensor, noise_draws: int = 0,
              shifts: int = 0) -> Calibration:
    """Fit the temperature and measure before/after; the ECE "after" is cross-fitted (each half of
    the images is scored with the temperature fitted on the other half), so it is not flattered by
    fitting and scoring on the same images."""
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    halves = (perm[: n // 2], perm[n // 2 :])
    cross = torch.empty(n, log_likelihoods.shape[1], dtype=torch.float64)
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_temperature(log_likelihoods[fit_on], labels[fit_on])
        cross[score_on] = posterior(log_likelihoods[score_on].double(), t)
    before = posterior(log_likelihoods.double(), 1.0)
    return Calibration(
        temperature=fit_temperature(log_likelihoods, labels),
        accuracy=accuracy(log_likelihoods, labels),
        balanced_accuracy=balanced_accuracy(log_likelihoods, labels),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(cross, labels),
        mean_confidence_before=float(before.max(dim=1).values.mean()),
        mean_confidence_after=float(cross.max(dim=1).values.mean()),
        images=n,
        noise_draws=noise_draws,
        shifts=shifts,
    )
