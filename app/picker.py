"""The model picker: what it offers, the card describing the picked model, every control set to
that model's defaults when it is picked, the examples of its own data, and going back to the
last working model when a pick fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app import limits
from app.checks import AUTO, NO_LABEL, load_model
from app.models import entries, pick_device
from app.tabs.generate import KIND_ATTN, KIND_CLASS, MAX_IMAGES
from tarflow.model import TarFlow

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# Example files per dataset (by file-name prefix); a dataset's variants (emoji2, "emoji2:subcategory")
# share the emoji pictures.
EXAMPLE_PREFIX = {"mnist": "mnist", "fashion-mnist": "fashion", "emoji": "emoji", "emoji2": "emoji"}
PAIRS = {"mnist": ("mnist-3", "mnist-7"), "fashion": ("fashion-sneaker", "fashion-ankle-boot"),
         "emoji": ("emoji-smileys-emotion", "emoji-animals-nature")}


def model_choices() -> list[tuple[str, str]]:
    return [(e.label, e.key) for e in entries()]


def describe(model: TarFlow, key: str) -> str:
    """The model card: data, architecture, size, training noise and device, in one line."""
    n = sum(p.numel() for p in model.parameters())
    params = f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n / 1e3:.0f} k"
    colour = "grey" if model.in_channels == 1 else "RGB"
    kind = f"{model.num_classes} classes" if model.num_classes else "unconditional"
    noise = f"trained with noise σ = {model.noise_std:g}" if model.noise_std else "trained without noise"
    name = model.dataset or Path(key).name
    return (f"**{name}** · {model.img_size}×{model.img_size} {colour} · {kind} · "
            f"{model.num_blocks} blocks × {model.layers_per_block} layers, width {model.channels} · "
            f"{model.num_tokens} tokens of {model.token_dim} values (patch {model.patch_size}) · "
            f"{params} parameters · {noise} · on {pick_device().type}")


def default_classes(model: TarFlow) -> list[str]:
    """The classes the model's card recommends (``sampling.classes`` in its config: the ones it draws
    best), else two spread over the list (digits 3 and 7 for MNIST)."""
    k = model.num_classes
    if not k:
        return []
    wanted = model.sampling.get("classes")
    if isinstance(wanted, list):
        known = [str(c) for c in wanted if str(c) in model.class_names]
        if known:
            return known
    picks = sorted({round(0.3 * k) % k, round(0.7 * k) % k})
    return [model.class_names[i] for i in picks]


def _prefix(model: TarFlow) -> str | None:
    return EXAMPLE_PREFIX.get((model.dataset or "").split(":")[0])


def examples_for(model: TarFlow) -> tuple[list[str], str]:
    """Example images of the model's own dataset and their heading; for a dataset without examples,
    all of them, said so."""
    prefix = _prefix(model)
    own = sorted(EXAMPLES.glob(f"{prefix}-*.png")) if prefix else []
    if own:
        return [str(p) for p in own], f"Examples (held-out {model.dataset} images)"
    return ([str(p) for p in sorted(EXAMPLES.glob("*.png"))],
            "Examples (from other datasets: none of this model's data is bundled)")


def pairs_for(model: TarFlow) -> list[list[str]]:
    """Interpolation example pairs of the model's own dataset (all pairs when it has none)."""
    prefix = _prefix(model)
    chosen = [PAIRS[prefix]] if prefix in PAIRS else list(PAIRS.values())
    return [[str(EXAMPLES / f"{a}.png"), str(EXAMPLES / f"{b}.png")] for a, b in chosen
            if (EXAMPLES / f"{a}.png").is_file() and (EXAMPLES / f"{b}.png").is_file()]


def model_info(model_key: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
    """Load (once) the picked model; returns its description and controls set to its defaults:
    (card, classes, guidance, kind, attn_temp, sigma, denoise, num, condition, interp_condition,
    add_noise, temperature)."""
    model = load_model(model_key, progress)
    names = list(model.class_names) if model.num_classes else []
    rec = model.sampling
    conditional = bool(model.num_classes)
    kind = KIND_CLASS if conditional else KIND_ATTN
    attn = float(rec.get("attn_temp", 1.0 if conditional else 1.5))
    big = model.num_tokens * model.num_blocks > 2048 and pick_device().type == "cpu"
    most = limits.sampling_job(model, 1, pick_device().type).max_images(MAX_IMAGES)
    cap = limits.cap_note(most, pick_device().type, MAX_IMAGES)
    condition_choices = ([("Most likely class", AUTO), ("No label", NO_LABEL)] + [(n, n) for n in names]
                         if conditional else [("No label (unconditional model)", NO_LABEL)])
    interp_choices = [("No label", NO_LABEL)] + [(n, n) for n in names]
    return (
        describe(model, model_key) + (f" · images: {cap}" if cap else ""),
        gr.update(choices=names, value=default_classes(model), interactive=conditional,
                  info=None if conditional else "this model is unconditional"),
        gr.update(value=float(rec.get("guidance", 0.0))),
        gr.update(value=kind),
        gr.update(value=attn),
        gr.update(value=float(model.noise_std)),
        gr.update(value=model.noise_std > 0),
        gr.update(value=max(1, min(4 if big else 16, most)), maximum=max(2, most), info=cap),
        gr.update(choices=condition_choices, value=AUTO if conditional else NO_LABEL),
        gr.update(choices=interp_choices, value=NO_LABEL),
        gr.update(value=model.noise_std > 0, interactive=model.noise_std > 0,
                  label=f"Add the training noise first (σ = {model.noise_std:g})"),
        gr.update(value=float(rec.get("temperature", 1.0))),
    )


def picked(model_key: str) -> tuple[str, Any, Any]:
    """After a successful pick: it becomes the model to return to, and the examples are its data's:
    (working key, invert examples, interpolation pairs)."""
    model = load_model(model_key)
    files, heading = examples_for(model)
    return (str(model_key), gr.Dataset(samples=[[f] for f in files], label=heading),
            gr.Dataset(samples=pairs_for(model)))


def back_to(working_key: str) -> str:
    """After a failed pick: the picker shows the model that still works (its card never changed)."""
    return working_key
