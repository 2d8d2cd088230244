"""The model picker: what it offers, the card describing the picked model, and every control
set to that model's defaults when it is picked."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.checks import AUTO, NO_LABEL, load_model
from app.models import entries, pick_device
from app.tabs.generate import KIND_ATTN, KIND_CLASS
from tarflow.model import TarFlow


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
    """Two classes spread over the list (digits 3 and 7 for MNIST)."""
    k = model.num_classes
    if not k:
        return []
    picks = sorted({round(0.3 * k) % k, round(0.7 * k) % k})
    return [model.class_names[i] for i in picks]


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
    condition_choices = ([("Most likely class", AUTO), ("No label", NO_LABEL)] + [(n, n) for n in names]
                         if conditional else [("No label (unconditional model)", NO_LABEL)])
    interp_choices = [("No label", NO_LABEL)] + [(n, n) for n in names]
    return (
        describe(model, model_key),
        gr.update(choices=names, value=default_classes(model), interactive=conditional,
                  info=None if conditional else "this model is unconditional"),
        gr.update(value=float(rec.get("guidance", 0.0))),
        gr.update(value=kind),
        gr.update(value=attn),
        gr.update(value=float(model.noise_std)),
        gr.update(value=model.noise_std > 0),
        gr.update(value=4 if big else 16),
        gr.update(choices=condition_choices, value=AUTO if conditional else NO_LABEL),
        gr.update(choices=interp_choices, value=NO_LABEL),
        gr.update(value=model.noise_std > 0, interactive=model.noise_std > 0,
                  label=f"Add the training noise first (σ = {model.noise_std:g})"),
        gr.update(value=float(rec.get("temperature", 1.0))),
    )
