"""Sampling: the guided, streaming inverse of a TarFlow, score-based denoising, and the friendly
layer (seeds, class names, recommended settings, output formats).

The inverse runs on the fast engine (:mod:`tarflow.engine`), which computes what
``TarFlow.reverse`` computes, faster. Every call owns its sampling state (the key/value cache,
the token buffer), so one model can serve several requests from several threads at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tarflow.engine import Inverter
from tarflow.jacobi import DECODE_CHOICES, DecodeReport, Jacobi, JacobiInverter
from tarflow.likelihood import log_prob
from tarflow.model import Guidance, TarFlow

DENOISE_CHUNK = 16  # images per backward pass in denoise()
OVERFLOW_MESSAGE = "sampling overflowed (non-finite values); lower the guidance scale or the prior temperature"


@dataclass
class Frame:
    """A snapshot during sampling.

    ``stage`` counts the blocks inverted so far (0 = the prior sample); ``block`` is the index in
    ``model.blocks`` of the block being inverted (None at stage 0); ``tokens`` of its
    ``num_tokens`` tokens are final; ``latent`` is the whole state as an image (B, C, H, W).
    """

    stage: int
    block: int | None
    tokens: int
    num_tokens: int
    latent: torch.Tensor

    @property
    def block_done(self) -> bool:
        """True at the end of a block (and for the prior sample, which is complete)."""
        return self.tokens == self.num_tokens

    @property
    def is_prior(self) -> bool:
        return self.stage == 0


def _last(items):
    """Run a generator to its end; return what it yielded last."""
    return deque(items, maxlen=1)[0]


def _inverter(batch: int, y: torch.Tensor | None, guidance: Guidance, device: torch.device, dtype: torch.dtype,
              jacobi: Jacobi | None, report: DecodeReport | None) -> Inverter | JacobiInverter:
    """The token-by-token engine, or Jacobi passes when settings are given."""
    if jacobi is None:
        return Inverter(batch, y, guidance, device, dtype)
    inverter = JacobiInverter(batch, y, guidance, device, dtype, jacobi)
    if report is not None:
        inverter.report = report
    return inverter


def reverse_stream(
    model: TarFlow,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    guidance: Guidance = Guidance(),
    every: int | None = None,
    dtype: torch.dtype | None = None,
    check_finite: bool = False,
    jacobi: Jacobi | None = None,
    report: DecodeReport | None = None,
) -> Iterator[Frame]:
    """Invert the flow from the latent z (B, T, D), yielding a Frame for the prior sample, after
    each block and, if ``every`` is set, every ``every`` tokens inside a block.

    With ``jacobi`` settings the blocks are decoded by Jacobi passes (:mod:`tarflow.jacobi`;
    a window never spans two frames), and ``report``, if given, receives the passes per window.

    The last frame's latent is the sample. Work happens in inference mode between yields only,
    so the consumer's own autograd state is never changed. With ``check_finite`` a block that
    ends with non-finite values raises FloatingPointError at once instead of running on.
    """
    model.check_latent(z)
    if every is not None and every < 1:
        raise ValueError("every must be a positive number of tokens")
    param = next(model.parameters())
    dtype = dtype or param.dtype
    # Frames are handed out in a type every consumer can use; float64 stays float64 for tests.
    out_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    B, T, _ = z.shape
    device = param.device
    y = model.check_labels(y, B, device)
    with torch.inference_mode():
        seq = (z.to(device=device, dtype=model.var.dtype) * model.var.sqrt()).to(dtype)
        seq = seq.transpose(0, 1).contiguous()  # (T, B, D), natural order
        frame = Frame(0, None, T, T, model.unpatchify(seq.transpose(0, 1).to(out_dtype)))
    yield frame
    inverter = _inverter(B, y, guidance, device, dtype, jacobi, report)
    for stage, k in enumerate(reversed(range(len(model.blocks))), start=1):
        block = model.blocks[k]
        where = {} if jacobi is None else {"index": k}  # Jacobi settings may differ per block
        with torch.inference_mode():
            seq = block.permute(seq, 0).contiguous()  # this block's order
        i = 0
        while i < T - 1:
            stop = T - 1 if every is None else min(T - 1, i + every)
            with torch.inference_mode():
                inverter.advance(block, seq, i, stop, **where)
                i = stop
                if i == T - 1:
                    seq = block.permute(seq, 0).contiguous()  # back to natural order
                    natural = seq
                    if check_finite and not bool(torch.isfinite(seq).all()):
                        raise FloatingPointError(OVERFLOW_MESSAGE)
                else:
                    natural = block.permute(seq, 0)
                latent = model.unpatchify(natural.transpose(0, 1).to(out_dtype))
            yield Frame(stage, k, i + 1, T, latent)
        if T == 1:
            yield Frame(stage, k, 1, T, model.unpatchify(seq.transpose(0, 1).to(out_dtype)))


def reverse(
    model: TarFlow,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    guidance: Guidance = Guidance(),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Invert the flow from the latent z (B, T, D); returns images (B, C, H, W)."""
    return _last(reverse_stream(model, z, y, guidance, dtype=dtype)).latent


def denoise(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None,
            sigma: float | None = None) -> torch.Tensor:
    """One score step x + sigma^2 * grad_x log p(x) per image (Tweedie's formula).

    ``sigma`` defaults to the model's training noise level. Each image's result depends only on
    that image (the gradient of the sum of per-image log-densities).
    """
    sigma = model.noise_std if sigma is None else float(sigma)
    if sigma < 0:
        raise ValueError("sigma must be non-negative")
    x = x.detach().to(model.var.dtype)
    if sigma == 0:
        return x.clone()
    # Backpropagation keeps every layer's activations: ~15 MB per 32 x 32 image. In chunks of
    # DENOISE_CHUNK images the peak stays flat (64 emoji images: +950 MB at once, +240 MB in
    # chunks of 16); the result is the same, since each image's gradient is its own.
    out = []
    for i in range(0, x.shape[0], DENOISE_CHUNK):
        part, labels = x[i : i + DENOISE_CHUNK], None if y is None else y[i : i + DENOISE_CHUNK]
        with torch.inference_mode(False), torch.enable_grad():
            part = part.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(model, part, labels).sum(), [part])
        out.append((part + sigma**2 * grad).detach())
    return torch.cat(out)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latents. Gaussian latents concentrate near a sphere;
    a straight line between two of them cuts through its inside (too small |z|: washed-out images)."""
    af, bf = a.flatten(), b.flatten()
    cos = torch.clamp(af @ bf / (af.norm() * bf.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-4:
        return torch.lerp(a, b, t)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


# ----------------------------------------------------------------------------------------------
# The friendly layer: seeds, class names, recommended settings, output formats.


@dataclass
class Samples:
    """Images in [-1, 1] (B, C, H, W); ``raw`` are the samples before denoising (or the same
    tensor when denoising is off); ``labels`` the class each image was conditioned on (-1: none)."""

    images: torch.Tensor
    raw: torch.Tensor
    labels: torch.Tensor
    decode: DecodeReport | None = None  # Jacobi decoding's passes per window; None when sequential

    def uint8(self, which: str = "images") -> torch.Tensor:
        """(B, H, W, C) uint8 of the denoised ("images") or raw ("raw") samples."""
        return to_uint8(getattr(self, which))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, C, H, W) -> uint8 (B, H, W, C); non-finite values become 0."""
    x = torch.nan_to_num(x.detach().float().cpu(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resolve_labels(model: TarFlow, classes: int | str | Sequence[int | str] | None, num: int) -> torch.Tensor:
    """Class names or indices (one, or several cycled over the images) -> labels (num,), -1 for none."""
    if classes is None or (isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) == 0):
        return torch.full((num,), -1, dtype=torch.long)
    if not model.num_classes:
        raise ValueError("this model is unconditional: it takes no classes")
    items = [classes] if isinstance(classes, (int, str)) else list(classes)
    labels = []
    for c in items:
        # Only short ASCII digits are an index: "²" passes str.isdigit() but not int(), and a
        # million digits would take int() seconds (or exceed Python's limit).
        digits = c[1:] if isinstance(c, str) and c.startswith("-") else c
        if isinstance(c, str) and not (digits.isascii() and digits.isdigit() and len(digits) <= 9):
            if c not in model.class_names:
                shown = c if len(c) <= 40 else c[:37] + "..."
                raise ValueError(f"unknown class {shown!r}; this model knows: {', '.join(model.class_names)}")
            labels.append(model.class_names.index(c))
        else:
            c = int(c)
            if not -1 <= c < model.num_classes:
                raise ValueError(f"class index {c} is out of range 0..{model.num_classes - 1}")
            labels.append(c)
    return torch.tensor([labels[i % len(labels)] for i in range(num)], dtype=torch.long)


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides a batch of samples besides the model."""

    num: int = 16
    classes: int | str | Sequence[int | str] | None = None
    seed: int = 0
    guidance: float | None = None  # None: the model's recommended value (or 0)
    guide_what: str = "ab"
    attn_temp: float | None = None
    annealed: bool = False
    temperature: float | None = None  # prior temperature, z ~ N(0, T^2); None: the model's recommended (or 1)
    denoise: bool = True
    sigma: float | None = None  # None: the model's training noise level
    decode: str = "sequential"  # or "jacobi": parallel decoding with the ``jacobi`` settings
    jacobi: Jacobi = Jacobi()

    def __post_init__(self) -> None:
        if self.decode not in DECODE_CHOICES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_CHOICES)}, got {self.decode!r}")

    def jacobi_for(self) -> Jacobi | None:
        """The Jacobi settings when decoding in parallel, else None."""
        return self.jacobi if self.decode == "jacobi" else None

    def guidance_for(self, model: TarFlow) -> Guidance:
        rec = model.sampling
        scale = rec.get("guidance", 0.0) if self.guidance is None else self.guidance
        temp = rec.get("attn_temp", 1.0) if self.attn_temp is None else self.attn_temp
        if scale < 0:
            raise ValueError("guidance must be non-negative")
        return Guidance(float(scale), self.guide_what, float(temp), self.annealed)

    def temperature_for(self, model: TarFlow) -> float:
        return float(model.sampling.get("temperature", 1.0) if self.temperature is None else self.temperature)


def prior_noise(model: TarFlow, num: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Latent noise (num, T, D) drawn on the CPU from ``seed``, so results match across devices."""
    if num < 1:
        raise ValueError("number of images must be at least 1")
    if temperature <= 0:
        raise ValueError("prior temperature must be positive")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(num, model.num_tokens, model.token_dim, generator=g) * temperature


def sample_stream(
    model: TarFlow, settings: SampleSettings = SampleSettings(), every: int | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[Frame | Samples]:
    """Frames as the flow inverts, then one final Samples (denoised if asked)."""
    labels = resolve_labels(model, settings.classes, settings.num)
    guidance = settings.guidance_for(model)
    z = prior_noise(model, settings.num, settings.seed, settings.temperature_for(model))
    device = model.var.device
    y = labels.to(device) if model.num_classes else None
    frame = None
    jacobi = settings.jacobi_for()
    report = DecodeReport() if jacobi is not None else None
    for frame in reverse_stream(model, z, y, guidance, every=every, dtype=dtype, check_finite=True,
                                jacobi=jacobi, report=report):
        yield frame
    assert frame is not None
    raw = frame.latent  # finite: checked at every block's end
    images = denoise(model, raw, y, settings.sigma) if settings.denoise else raw
    yield Samples(images=images.cpu(), raw=raw.cpu(), labels=labels, decode=report)


def sample(model: TarFlow, settings: SampleSettings = SampleSettings(), dtype: torch.dtype | None = None) -> Samples:
    """Draw samples; see SampleSettings."""
    return _last(sample_stream(model, settings, dtype=dtype))
