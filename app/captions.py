"""The words under the pictures: status lines and captions, built from the numbers a handler
measured. No computation happens here beyond formatting."""

from __future__ import annotations

import math

import numpy as np

from tarflow.calibration import Calibration, describe_views, noise_copies
from tarflow.heldout import HeldOutRange
from tarflow.likelihood import noise_bits
from tarflow.model import TarFlow
from tarflow.sampling import Frame, SampleSettings


def noise_note(model: TarFlow) -> str:
    """Why bits/dim near the training noise's entropy are expected (empty for noise-free models)."""
    if model.noise_std <= 0 or noise_bits(model.noise_std) <= 0:
        return ""
    return (f" The model describes images with noise σ = {model.noise_std:g} added; that noise alone costs "
            f"{noise_bits(model.noise_std):.2f} bits/dim, so numbers near it are expected.")


# ---------------------------------------------------------------------------------------------- Generate


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def sampling_status(frame: Frame, model: TarFlow, seconds: float, temperature: float = 1.0) -> str:
    """The line above the streaming grid: which block is being inverted, and how far."""
    nb = model.num_blocks
    if frame.stage == 0:
        prior = "N(0, I)" if temperature == 1 else f"N(0, {temperature:g}² I)"
        return f"**Prior sample** z ~ {prior} · {plural(frame.latent.shape[0], 'image')} · now inverting {nb} blocks"
    block = model.blocks[frame.block]
    direction = "reading bottom-up ↑" if block.flip else "reading top-down ↓"
    return (f"**Block {frame.stage}/{nb}** ({direction}) · token {frame.tokens}/{frame.num_tokens} · "
            f"{seconds:.1f} s")


def paused_status(frame: Frame, model: TarFlow) -> str:
    """The line above the grid while a run is paused."""
    where = ("at the prior sample" if frame.stage == 0 else
             f"in block {frame.stage}/{model.num_blocks} at token {frame.tokens}/{frame.num_tokens}")
    return (f"**Paused** {where} · **Step** draws the next frame, **Resume** goes on, **Stop** ends the run "
            "(the grid shows the tokens decoded so far; the rest is still noise)")


def done_status(settings: SampleSettings, model: TarFlow, class_guidance: bool, seconds: float) -> str:
    g = settings.guidance_for(model)
    weak = "class" if class_guidance else f"attention temp {g.attn_temp:g}"
    guide = f"guidance {g.scale:g} ({weak}{', annealed' if g.annealed else ''})" if g.scale > 0 else "no guidance"
    noise = f"denoised with σ = {settings.sigma:g}" if settings.denoise else "not denoised"
    pick = "click an image (or use the slider) to inspect it" if settings.num > 1 else "inspected below"
    return f"**Done** · {plural(settings.num, 'image')} in {seconds:.2f} s · {guide} · {noise} · {pick}"


def inspect_caption(model: TarFlow, number: int, name: str, bpd: float) -> str:
    """Under the heatmap of generated image ``number`` (1-based) of class ``name``."""
    return (f"**Image {number}** ({name}): **{bpd:.3f} bits/dim**, the exact −log₂ p(x) of its 8-bit "
            f"pixels under the model, per dimension ({model.num_dims} dimensions). Brighter colours in the map "
            "cost more bits." + noise_note(model))


# ---------------------------------------------------------------------------------------------- Invert


def latent_title(zs: np.ndarray, noisy: bool) -> str:
    return f"z of this {'noisy ' if noisy else ''}image: mean {zs.mean():+.2f}, std {zs.std():.2f}"


def reconstruction(errors: list[float], num_dims: int, precision: str, eps: float) -> str:
    """``errors``: max |difference| after undoing each block, the last one against x itself."""
    return (f"**max |x − x̂| = {errors[-1]:.2e}** over {num_dims} values ({precision}, machine epsilon "
            f"{eps:.1e}): the flow is inverted exactly, up to floating-point rounding. "
            f"Intermediate states match the forward pass to {max(errors):.1e}.")


def heatmap_title(label: str | None, bpd: float) -> str:
    return f"{'label ' + label if label is not None else 'no label'} · {bpd:.3f} bits/dim"


def likelihood(model: TarFlow, label: str | None, bits: float) -> str:
    """Under an inverted image's heatmap: ``bits`` = −log₂ p(x | label) in total."""
    given = "the label " + repr(label) if label is not None else "no label"
    return (f"**{bits / model.num_dims:.3f} bits/dim** given {given}: "
            f"−log₂ p(x) = {bits:.1f} bits for {model.num_dims} dimensions; the map shows each "
            "pixel's share and sums to that total." + noise_note(model))


def no_posterior(model: TarFlow) -> str:
    return ("This model is unconditional: there are no classes to compare." if not model.num_classes
            else f"{model.num_classes} classes are too many to score interactively here.")


def posterior(model: TarFlow, probs: np.ndarray, raw: np.ndarray, cal: Calibration | None, noisy: bool,
              unusual: bool = False) -> str:
    """Beside the p(class | x) chart: the answer, how often such answers are right, and why the
    margins in bits are the honest quantity."""
    best = int(np.argmax(probs))
    order = np.argsort(-raw)
    second = (f"; the runner-up, {model.class_names[order[1]]}, is "
              f"{(math.log2(raw[order[0]]) - math.log2(max(raw[order[1]], 1e-300))):.1f} bits behind"
              if len(order) > 1 else "")
    head = ("**Out of distribution**: the class below means little for an image unlike the model's data. "
            if unusual else "")
    answer = f"{head}Most likely: **{model.class_names[best]}**{second}."
    if cal is None:
        trust = (f" Not calibrated (no held-out measurement stored with this model): the raw posterior says "
                 f"{raw[best]:.1%}, and over hundreds of dimensions such posteriors are nearly always ~100%, "
                 "right or wrong; trust the margins in bits more.")
    else:
        balanced = (f" ({cal.balanced_accuracy:.1%} averaged over classes, which are unevenly represented)"
                    if abs(cal.balanced_accuracy - cal.accuracy) >= 0.01 else "")
        trust = (f" Measured on {cal.images} held-out images, this classifier is right **{cal.accuracy:.1%}** of "
                 f"the time{balanced}. Shown: {probs[best]:.1%}, calibrated (log-likelihoods divided by "
                 f"T = {cal.temperature:.3g}, fitted on those images); the raw Bayes posterior would say "
                 f"{raw[best]:.1%}. Expected calibration error {cal.ece_before:.3f} raw, {cal.ece_after:.3f} "
                 "calibrated.")
    views = describe_views(model.noise_std, cal.noise_draws, cal.shifts) if cal is not None else ""
    moved = f" Each class's score is the mean log-likelihood of {views}, as measured." if views else ""
    fresh = cal is not None and noise_copies(model.noise_std, cal.noise_draws) > 0  # its own noisy copies
    return (answer + trust + " p(y | x) ∝ p(x | y): one exact likelihood per class, equal priors"
            f"{' (of the image without the added noise)' if noisy and not fresh else ''}.{moved}")


def typicality(bpd: float, held: HeldOutRange) -> str:
    """An image's clean bits/dim against the model's held-out range, and what that does (not) show."""
    word = held.rank(bpd)
    where = (f" The clean image scores **{bpd:.2f} bits/dim**; {held.images} held-out {held.dataset} images "
             f"score {held.pct(1):.2f}-{held.pct(99):.2f} (1st-99th percentile, median {held.pct(50):.2f}), "
             "no label.")
    if word in ("far above", "unusually high"):
        return (where + f" That is {word} that range: this image is **unlike the model's data** "
                "(out of distribution), so its class and latent say little.")
    if word == "unusually low":
        return where + (" That is below the range: unusually *likely*, which flows give to simple, smooth "
                        "images even from other datasets (Nalisnick et al., 2019).")
    return where + (" Typical, though a typical likelihood does not prove the image is like the data: "
                    "flows can score other datasets just as well.")


def interpolation(model: TarFlow, spherical: bool, norms: list[float], error: float) -> str:
    """Under the decoded path: the latent norms along it and how well its ends reproduce A and B."""
    return (f"{'Spherical' if spherical else 'Linear'} path through latent space, {len(norms)} points. "
            f"|z| is {norms[0]:.1f} at A and {norms[-1]:.1f} at B, {min(norms):.1f} at its lowest on the way "
            f"(a Gaussian sample has |z| ≈ √{model.num_dims} = {math.sqrt(model.num_dims):.1f}). "
            f"The ends reproduce A and B to {error:.1e}.")
