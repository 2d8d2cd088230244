"""Side-by-side comparisons from the same noise: one z per row, one column per value of a single
setting (guidance, prior temperature, denoising, class), streamed as the columns form."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np

from app import animation, checks, limits, storage
from app.models import pick_device
from app.tabs.generate import MAX_GUIDANCE, _settings
from tarflow.images import save_png
from tarflow.model import TarFlow
from tarflow.sampling import Samples, SampleSettings, resolve_labels, sample_stream, to_uint8

MAX_COLUMNS, MAX_ROWS = 6, 8
SWEEPS = [("Guidance scale w", "guidance"), ("Prior temperature", "temperature"), ("Denoise off / on", "denoise"),
          ("Class", "class")]
DEFAULT_VALUES = {"guidance": "0, 2, 4, 8", "temperature": "0.6, 0.8, 1, 1.2", "denoise": "off, on", "class": ""}


def _values(model: TarFlow, sweep: str, text: Any, classes: Any) -> list[Any]:
    """The swept values from the text box (comma-separated); class names default to the chosen
    classes."""
    parts = [p.strip() for p in re.split(r"[,;]", str(text or "")) if p.strip()]
    if sweep == "denoise":
        return [False, True]
    if sweep == "class":
        if not model.num_classes:
            raise gr.Error("This model is unconditional: there are no classes to compare.")
        names = parts or [str(c) for c in (classes or [])] or list(model.class_names[:2])
        labels = checks.class_labels(model, names, MAX_COLUMNS)
        values = list(dict.fromkeys(labels))
    else:
        name, lo, hi = ("Guidance scale", 0, MAX_GUIDANCE) if sweep == "guidance" else ("Prior temperature", 0.05, 3)
        values = [checks.number(p, name, lo, hi) for p in (parts or DEFAULT_VALUES[sweep].split(","))]
    if not 1 <= len(values) <= MAX_COLUMNS:
        raise gr.Error(f"Compare 1 to {MAX_COLUMNS} values, got {len(values)}.")
    return values


def _label(model: TarFlow, sweep: str, value: Any, sigma: float) -> str:
    if sweep == "guidance":
        return f"w = {value:g}"
    if sweep == "temperature":
        return f"T = {value:g}"
    if sweep == "denoise":
        return f"denoised (σ = {sigma:g})" if value else "raw (no denoising)"
    return model.class_names[value] if value >= 0 else "no label"


def compare(model_key: str, classes: list[str] | None, rows: int, seed: int, guidance: float, kind: str,
            attn_temp: float, annealed: bool, guide_what: str, temperature: float, denoise: bool, sigma: float,
            sweep: str = "guidance", values: str = "",
            progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """One z per row, one column per value of ``sweep``; every other setting as given. Streams
    (figure, status, download) as each column's blocks are inverted; a column whose sampling
    overflows is shown grey and labelled so, and the others go on."""
    model = checks.load_model(model_key, progress)
    rows = checks.number(rows, "Images per column", 1, MAX_ROWS, integer=True)
    sweep = checks.choice(sweep, "Sweep", SWEEPS)
    base = _settings(model, classes, rows, seed, guidance, kind, attn_temp, annealed, guide_what, temperature,
                     denoise, sigma)
    swept = _values(model, sweep, values, classes)
    runs = 1 if sweep == "denoise" else len(swept)  # denoise: one run gives both columns
    job = limits.sampling_job(model, rows * runs, pick_device().type, "Compare").check()
    labels = resolve_labels(model, base.classes, rows).tolist()
    row_names = None if sweep == "class" or not model.num_classes else [
        model.class_names[y] if y >= 0 else "no label" for y in labels]
    heads = [_label(model, sweep, v, base.sigma if base.sigma is not None else model.noise_std) for v in swept]
    title = f"{model.dataset or model_key} · seed {base.seed} · the same z in every column"
    columns: list[tuple[str, np.ndarray | None]] = [(h, None) for h in heads]

    def figure() -> np.ndarray:
        return animation.comparison(columns, model.img_size, model.in_channels, rows, row_names, title)

    skip = gr.skip()
    for k, status in sweep_columns(model, base, sweep, swept, heads, columns):
        yield figure(), f"Column {k + 1}/{len(heads)} · {heads[k]} · {status}", skip
        if job.stopped:
            yield figure(), f"**Stopped** · {job.reason}, in column {k + 1}/{len(heads)}: the rest is missing.", skip
            return
    final = figure()
    path = save_png(final, storage.new_folder("compare") / f"tarflow-compare-{sweep}-seed{base.seed}.png")
    done = sum(c[1] is not None for c in columns)
    status = (f"**Done** · {len(heads)} columns ({done} drawn) × {rows} rows from the same noise, "
              f"sweeping {dict((v, k) for k, v in SWEEPS)[sweep].lower()}")
    yield final, status, gr.update(value=str(path), interactive=True)


def sweep_columns(model: TarFlow, base: SampleSettings, sweep: str, swept: list[Any], heads: list[str],
                  columns: list[tuple[str, np.ndarray | None]]) -> Iterator[tuple[int, str]]:
    """Fill ``columns`` (uint8 (rows, H, W, C) each) from the same z, yielding (column, what happened)
    at each block's end and when a column is done. An overflowing column stays None, labelled so."""
    sweeps = swept[:1] if sweep == "denoise" else swept  # denoise: one run gives both columns
    for k, value in enumerate(sweeps):
        samples = None
        try:
            for item in sample_stream(model, _column_settings(base, sweep, value)):
                if isinstance(item, Samples):
                    samples = item
                elif item.block_done:
                    columns[k] = (heads[k], to_uint8(item.latent).numpy())
                    yield k, f"block {item.stage}"
        except FloatingPointError:
            columns[k] = (f"{heads[k]} · overflowed", None)
            yield k, "overflowed"
            continue
        if sweep == "denoise":
            columns[:] = [(heads[0], to_uint8(samples.raw).numpy()), (heads[1], to_uint8(samples.images).numpy())]
        else:
            columns[k] = (heads[k], to_uint8(samples.images).numpy())
        yield k, "done"


def _column_settings(base: SampleSettings, sweep: str, value: Any) -> SampleSettings:
    if sweep == "guidance":
        return dataclasses.replace(base, guidance=float(value))
    if sweep == "temperature":
        return dataclasses.replace(base, temperature=float(value))
    if sweep == "denoise":
        return dataclasses.replace(base, denoise=True)
    return dataclasses.replace(base, classes=[int(value)])
