"""The Likelihood tab: what an exact log p(x) buys. Out-of-distribution histograms, inpainting and
repair by the exact score, and the bits of one image split block by block.

Every bits/dim here is scored as the model was trained: the model's training noise added (one
fixed draw), so a number is comparable with the histograms and with the model card.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app import checks, limits, oodcache, render
from app import likelihood_plots as plots
from app.inputs import MAX_PIXELS, to_model
from app.models import pick_device, resolve
from app.storage import new_folder
from tarflow import inpaint
from tarflow.likelihood import add_training_noise, nll_map, nll_parts, noisy_bits_per_dim, to_bits_per_dim
from tarflow.model import TarFlow
from tarflow.ood import typicality_auroc
from tarflow.sampling import SampleSettings, sample, to_uint8

MAX_STEPS = 200
DEFAULT_STEPS = inpaint.Climb().steps
CANDIDATES = 8
CANVAS = 336  # px: the mask editor's canvas; any square mask is scaled to the model's size
PAINTED = 0.3  # share of a model pixel that must be painted for it to count as erased
# Forward-pass equivalents: a Langevin step is a forward and a backward pass (about 3), each of the
# CANDIDATES samples about 2 (its sequential inverse and its score).
STEP_PASSES, SAMPLE_PASSES = 3, 2
MASK_CHOICES = [("Bottom half", "bottom"), ("Top half", "top"), ("Left half", "left"), ("Right half", "right"),
                ("Centre", "centre"), ("Random patches", "patches"), ("What you painted", "painted")]
STARTS = [("Best of 8 model samples", "samples"), ("Uniform noise (the score alone)", "noise")]
DAMAGES = [("Noise", "noise"), ("Blur", "blur")]
MAX_STRENGTH = {"noise": 1.0, "blur": 4.0}  # std on the [-1, 1] scale; blur std in pixels
GROUPS = [("Other datasets and the model's own samples", ["mnist", "fashion-mnist", "emoji", "samples"]),
          ("Synthetic: its own held-out images changed, flat colours, noise",
           ["upside down", "inverted", "constant", "noise"])]


# ---------------------------------------------------------------------------------------------- shared


def _steps_job(model: TarFlow, steps: int, extra: float, what: str) -> limits.Job:
    """The request's work (``steps`` Langevin steps plus ``extra`` passes) checked against this
    server's cap (public servers), with a message in steps; the job's deadline stops the climb."""
    job = limits.Job(model, 1, STEP_PASSES * steps + extra, pick_device().type, what)
    if job.cap is not None and job.cost > job.cap:
        per_pass = job.tokens * job.params
        most = int((job.cap / per_pass - extra) // STEP_PASSES)
        if most < 1:
            raise limits.WorkLimit(f"This model is too large for {what.lower()} on this server's {job.device}.")
        raise limits.WorkLimit(f"{what} is limited to {min(most, MAX_STEPS)} steps with this model on this "
                               f"server's {job.device} (asked for {steps}).")
    return job.check()


def _label(model: TarFlow, value: Any) -> int | None:
    """A class choice -> its index, or None for no label ("auto" is no label here: the class
    should come from you, not from the image being edited)."""
    if value in (None, "", checks.AUTO, checks.NO_LABEL):
        return None
    c = checks.condition(model, value)
    return c if isinstance(c, int) else None


def _y(model: TarFlow, label: int | None) -> torch.Tensor | None:
    return None if label is None else torch.tensor([label], device=model.var.device)


def _pixels(model: TarFlow, image: Any) -> tuple[np.ndarray, torch.Tensor]:
    """An image file fitted to the model: uint8 (H, W, C) and the model's input (1, C, H, W)."""
    arr = checks.image(model, image).array
    return arr, to_model(arr, model)


def _scale(model: TarFlow) -> int:
    return max(1, render.panel_height(model.img_size, 168) // model.img_size)


def condition_choices(model: TarFlow) -> dict:
    """The class dropdown for this tab: no label, or one of the model's classes."""
    names = model.class_names if 0 < model.num_classes <= 100 else []
    return gr.update(choices=[("No label", checks.NO_LABEL)] + [(n, n) for n in names], value=checks.NO_LABEL,
                     interactive=bool(names))


# ---------------------------------------------------------------------------------------------- OOD


def _folder(model_key: str) -> Path | None:
    """The model's local folder (where a shipped ood.npz may lie), or None for a remote one."""
    source = Path(resolve(str(model_key or "")).source)
    return source if source.is_dir() else None


def _ood_table(model: TarFlow, model_key: str, progress: gr.Progress | None) -> oodcache.OODTable:
    folder = _folder(model_key)
    found = oodcache.cached(model, folder)
    if found is not None:
        return found
    images = (len(oodcache.DATASETS) + 6) * oodcache.PER_SET
    job = limits.Job(model, images, 1, pick_device().type, "The out-of-distribution view")
    if job.cap is not None and job.cost > job.cap:
        raise limits.WorkLimit(f"Scoring {images} images is more than this server allows per request for this "
                               "model; the view is offered for models whose numbers were computed beforehand.")

    def report(frac: float, desc: str) -> None:
        if progress is not None:
            progress(frac, desc=f"first time for this model: {desc}")

    return oodcache.table(model, folder, report)


def ood_view(model_key: str, image: str | None = None,
             progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[np.ndarray, str]:
    """Bits/dim histograms of every set for this model (computed once per model, then read from
    disk) with the AUROC of each against the model's own held-out images; an image, if given,
    is scored the same way and marked on the axis. Returns (figure, table in Markdown)."""
    model = checks.load_model(model_key, progress)
    table = _ood_table(model, model_key, progress)
    marker = None
    if image:
        _, x = _pixels(model, image)
        bpd = float(noisy_bits_per_dim(model, x)[0])
        marker = (bpd, f"your image: {bpd:.2f}")
    totals = {name: table.totals(name) for name in table.parts}
    labels = {name: _legend(table, name) for name in totals}
    groups = [(title, [n for n in names if n in totals]) for title, names in GROUPS]
    figure = plots.histograms(totals, [g for g in groups if g[1]], oodcache.OWN, labels, marker)
    return figure, _ood_markdown(table, marker)


def _legend(table: oodcache.OODTable, name: str) -> str:
    if name == oodcache.OWN:
        return f"its own held-out ({len(table.totals(name))})"
    score = table.auroc(name)
    return name if score is None else f"{name} · AUROC {score:.2f}"


def _ood_markdown(table: oodcache.OODTable, marker: tuple[float, str] | None) -> str:
    own = table.totals(oodcache.OWN) if oodcache.OWN in table.parts else None
    sizes = sorted({len(v) for v in table.parts.values()})
    lines = ["| set | median bits/dim | AUROC | typicality, batches of 8 |", "| --- | ---: | ---: | ---: |"]
    for name in table.parts:
        v = table.totals(name)
        score = table.auroc(name)
        typical = typicality_auroc(own, v) if own is not None and name != oodcache.OWN else None
        lines.append(f"| {name} | {np.median(v):.3f} | {'—' if score is None else f'{score:.3f}'} | "
                     f"{'—' if typical is None else f'{typical:.3f}'} |")
    text = (f"{' to '.join(map(str, sizes))} images per set. AUROC: how well 'more bits/dim = not my data' "
            "separates a set from the model's own held-out images (1 = always, 0.5 = chance, **below 0.5 = that "
            "set looks *more* likely than the model's own data**). Typicality scores a batch of 8 by how far its "
            "mean bits/dim lies from the typical value, either way (Nalisnick et al., 2019b).\n\n" + "\n".join(lines))
    if marker is not None and own is not None:
        text = f"**Your image: {marker[0]:.3f} bits/dim**, {_rank(own, marker[0])}.\n\n" + text
    return text + "".join(f"\n\n_{note}_" for note in table.notes)


def _rank(own: np.ndarray, value: float) -> str:
    """Where a bits/dim value falls among the model's own held-out images, in words."""
    share = float((own < value).mean())
    if share == 1.0:
        return "more than every one of the model's own held-out images (unlike its data)"
    if share == 0.0:
        return "less than every one of the model's own held-out images (more likely than its data)"
    return f"more than {share:.0%} of the model's own held-out images"


# ---------------------------------------------------------------------------------------------- bits


def bits_split(model_key: str, image: str | None, condition: str = checks.NO_LABEL,
               progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[np.ndarray, np.ndarray, str]:
    """The image's bits/dim split into the 8-bit bin width, the prior term and each block's
    -log-determinant (a stacked bar beside the model's held-out average), and its per-pixel map.
    Returns (bar chart, heatmap, caption)."""
    model = checks.load_model(model_key, progress)
    label = _label(model, condition)
    arr, x = _pixels(model, image)
    y = _y(model, label)
    noisy = add_training_noise(model, x)
    with torch.no_grad():
        parts = nll_parts(model, noisy, y)[0].double().cpu().numpy()
        bits = nll_map(model, noisy, y)[0].double().cpu().numpy()
    names = ["8-bit bins (constant)", "prior −log N(z)"] + [f"block {k + 1} −log det" for k in
                                                             range(model.num_blocks)]
    rows = [("this image", parts)]
    table = oodcache.cached(model, _folder(model_key))
    if table is not None and oodcache.OWN in table.parts:
        rows.append((f"held-out average ({len(table.parts[oodcache.OWN])})", table.parts[oodcache.OWN].mean(axis=0)))
    given = "no label" if label is None else f"label {model.class_names[label]}"
    heat = render.heatmap(render.as_uint8(noisy.clamp(-1, 1))[0], bits,
                          f"{given} · {parts.sum():.3f} bits/dim (training noise added)")
    return plots.bits_bars(rows, names), heat, _bits_caption(model, parts, len(rows) > 1)


def _bits_caption(model: TarFlow, parts: np.ndarray, has_average: bool) -> str:
    blocks = parts[2:]
    biggest = int(np.argmax(np.abs(blocks)))
    return (f"**{parts.sum():.3f} bits/dim** = {parts[0]:.2f} (the 8-bit bin width, log₂ 128, the same for every "
            f"image) + {parts[1]:.2f} (the prior: how Gaussian z is) "
            + " ".join(f"{v:+.2f}" for v in blocks) + " (each block's −log-determinant: negative where a block "
            f"stretches the image, which makes it more likely). Block {biggest + 1} moves the total most. The "
            "parts add up to the total exactly; the map beside spreads the same total over the pixels."
            + ("" if has_average else " (The held-out average appears once the Out-of-distribution view has "
                                      "been computed for this model.)"))


# ---------------------------------------------------------------------------------------------- masks


def _open_layer(path: str) -> np.ndarray:
    """A mask image file -> RGBA uint8, refusing what cannot be decoded safely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise gr.Error(f"The mask is {img.size[0]} × {img.size[1]} pixels, too large to read.")
            return np.asarray(img.convert("RGBA"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise gr.Error("The mask is not an image that can be read (send a PNG).") from None


def painted_mask(editor: Any, size: int) -> np.ndarray:
    """The pixels painted in the editor's layers, as a bool (size, size) mask: where a layer has
    transparency, its opaque strokes; a fully opaque layer (a mask image) is read as white = erase."""
    layers = (editor or {}).get("layers") if isinstance(editor, dict) else None
    if not layers:
        raise gr.Error("Nothing is painted: paint over the pixels to erase, or pick a preset mask.")
    cover = None
    for layer in layers:
        if not layer:
            continue
        rgba = _open_layer(layer.get("path") if isinstance(layer, dict) else layer)
        h, w = rgba.shape[:2]
        if h != w:
            raise gr.Error(f"The mask is {w} × {h} pixels; it must be square like the canvas ({CANVAS} × {CANVAS}).")
        alpha = rgba[..., 3]
        ink = alpha > 127 if alpha.min() < 255 else rgba[..., :3].mean(axis=2) > 127
        small = np.asarray(Image.fromarray(ink.astype(np.uint8) * 255).resize((size, size), Image.BOX)) / 255.0
        cover = small if cover is None else np.maximum(cover, small)
    if cover is None or not (cover >= PAINTED).any():
        raise gr.Error("Nothing is painted: paint over the pixels to erase, or pick a preset mask.")
    return cover >= PAINTED


def _mask(model: TarFlow, choice: Any, editor: Any, seed: int) -> np.ndarray:
    choice = checks.choice(choice, "Mask", MASK_CHOICES)
    mask = (painted_mask(editor, model.img_size) if choice == "painted"
            else inpaint.preset_mask(choice, model.img_size, seed).numpy())
    if mask.all():
        raise gr.Error("Everything is erased: nothing is left to fill in around. Leave some pixels, "
                       "or use Repair / Generate instead.")
    return mask


def to_editor(model_key: str, image: str | None) -> Any:
    """The fitted image, enlarged to the canvas, as the editor's background (strokes cleared)."""
    if not image:
        return gr.skip()
    model = checks.load_model(model_key)
    arr, _ = _pixels(model, image)
    big = Image.fromarray(render.squeeze_grey(arr)).resize((CANVAS, CANVAS), Image.NEAREST).convert("RGB")
    path = new_folder("editor") / "background.png"
    big.save(path)
    return {"background": str(path), "layers": [], "composite": str(path)}


# ---------------------------------------------------------------------------------------------- climbs


def _steps(value: Any) -> int:
    return checks.number(value, "Steps", 1, MAX_STEPS, integer=True)


def _seed(value: Any) -> int:
    return checks.number(value if value not in (None, "") else 0, "Seed", 0, 2**31 - 1, integer=True)


def refill(model_key: str, image: str | None, editor: Any = None, mask: str = "bottom",
           condition: str = checks.NO_LABEL, start: str = "samples", steps: int = DEFAULT_STEPS, seed: int = 0,
           progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, str, Any]]:
    """Erase the masked pixels and refill them by Langevin steps on log p(x | y), streamed.

    Yields (figure, status, result PNG at the end): the original, the erased image, and the
    refill so far with the refilled region outlined. Kept pixels are the original's, bit for bit."""
    model = checks.load_model(model_key, progress)
    steps, seed = _steps(steps), _seed(seed)
    start = checks.choice(start or "samples", "Start", STARTS)
    label = _label(model, condition)
    arr, x = _pixels(model, image)
    erased = _mask(model, mask, editor, seed)
    job = _steps_job(model, steps, SAMPLE_PASSES * CANDIDATES if start == "samples" else 0, "Inpainting")
    free = torch.from_numpy(erased).to(x.device)[None, None]
    y = _y(model, label)
    scale = _scale(model)
    panels = [("original", render.enlarge(plots.rgb(arr), scale)), ("erased", plots.with_hole(arr, erased, scale))]
    begin = None
    if start == "samples":
        progress(0.05, desc=f"drawing {CANDIDATES} samples, keeping the one that fits best")
        begin = inpaint.best_of_samples(model, x, free, y, CANDIDATES, seed)
        climb = inpaint.Climb(steps=steps, seed=seed)
    else:
        f = inpaint.FROM_NOISE
        climb = inpaint.Climb(steps=steps, start=f.start, end=f.end, temperature=f.temperature, seed=seed)
    before = float(noisy_bits_per_dim(model, x, y)[0])
    yield from _stream(model, arr, x, free, erased, y, climb, begin, panels, before, "refilled", label, job)


def repair(model_key: str, image: str | None, damage: str = "noise", strength: float = 0.4,
           condition: str = checks.NO_LABEL, steps: int = inpaint.REPAIR.steps, seed: int = 0,
           progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, str, Any]]:
    """Damage the image (noise or blur), then climb log p(x | y) from there with every pixel free,
    streamed. Yields (figure, status, result PNG at the end): the original, the damaged image and
    the repair so far."""
    model = checks.load_model(model_key, progress)
    steps, seed = _steps(steps), _seed(seed)
    damage = checks.choice(damage or "noise", "Damage", DAMAGES)
    strength = checks.number(strength, "Strength", 0, MAX_STRENGTH[damage])
    label = _label(model, condition)
    arr, x = _pixels(model, image)
    job = _steps_job(model, steps, 0, "Repair")
    damaged = inpaint.corrupt(x, damage, strength, seed)
    y = _y(model, label)
    everything = np.ones((model.img_size, model.img_size), dtype=bool)
    free = torch.ones(1, 1, model.img_size, model.img_size, dtype=torch.bool, device=x.device)
    scale = _scale(model)
    shown = to_uint8(damaged)[0].numpy()
    panels = [("original", render.enlarge(plots.rgb(arr), scale)),
              (f"{damage} {strength:g}", render.enlarge(plots.rgb(shown), scale))]
    r = inpaint.REPAIR
    climb = inpaint.Climb(steps=steps, start=r.start, end=r.end, temperature=r.temperature, seed=seed)
    before = float(noisy_bits_per_dim(model, damaged, y)[0])
    yield from _stream(model, shown, damaged, free, everything, y, climb, damaged, panels, before, "repaired",
                       label, job)


def _stream(model: TarFlow, arr: np.ndarray, x: torch.Tensor, free: torch.Tensor, region: np.ndarray,
            y: torch.Tensor | None, climb: inpaint.Climb, begin: torch.Tensor | None,
            panels: list[tuple[str, np.ndarray]], before: float, verb: str, label: int | None,
            job: limits.Job) -> Iterator[tuple[Any, str, Any]]:
    """Run the climb, yielding the figure, a status line and (at the end) the result as a PNG, about
    every twentieth of the way."""
    scale = _scale(model)
    given = "no label" if label is None else f"class {model.class_names[label]}"
    every = max(1, climb.steps // 20)
    # The job's deadline (public servers) ends the climb between steps, with a message that says so.
    for step in limits.watch(inpaint.climb_stream(model, x, free, y, climb, start=begin, every=every), job):
        out = to_uint8(step.estimate)[0].numpy()
        # Kept pixels come straight from the input array: the model never rewrites them.
        out = np.where(region[..., None], out, arr)
        done = step.step == step.steps
        title = f"{verb} · step {step.step}/{step.steps}"
        figure = render.strip(panels + [(title, plots.outlined(out, region, scale) if region.any() else out)],
                              height=model.img_size * scale)
        if not done:
            now = float(to_bits_per_dim(-step.log_prob[0], model.num_dims))
            yield figure, f"**Step {step.step}/{step.steps}** · {given} · the chain's state: {now:.3f} bits/dim", \
                gr.update(value=None, interactive=False)
            continue
        after = float(noisy_bits_per_dim(model, to_model(out, model), y)[0])
        path = new_folder("likelihood") / f"{verb}.png"
        Image.fromarray(render.squeeze_grey(out)).save(path)
        yield figure, (f"**Done** · {step.steps} steps, {given} · bits/dim {before:.3f} before → **{after:.3f}** "
                       f"after ({'lower: more likely' if after <= before else 'higher: less likely than before'})"), \
            gr.update(value=str(path), interactive=True)


# ---------------------------------------------------------------------------------------------- inputs


def draw_sample(model_key: str, condition: str = checks.NO_LABEL, seed: Any = 0) -> str:
    """One sample of the model (of the chosen class) as a PNG, for the tab's image input."""
    model = checks.load_model(model_key)
    limits.sampling_job(model, 1, pick_device().type, "Drawing a sample").check()
    label = _label(model, condition)
    drawn = sample(model, SampleSettings(num=1, classes=None if label is None else [label], seed=_seed(seed)))
    path = new_folder("likelihood") / "sample.png"
    Image.fromarray(render.squeeze_grey(drawn.uint8()[0].numpy())).save(path)
    return str(path)


def examples() -> list[list[str]]:
    """Example images of every dataset: other data is the point of an out-of-distribution view."""
    folder = Path(__file__).resolve().parent.parent.parent / "assets" / "examples"
    return [[str(f)] for f in sorted(folder.glob("*.png"))]


def initial_choices(model_key: str | None) -> list[tuple[str, str]]:
    """The class dropdown's choices for the model the page opens with."""
    try:
        return condition_choices(checks.load_model(model_key or ""))["choices"]
    except gr.Error:
        return [("No label", checks.NO_LABEL)]


def strength_for(damage: str) -> dict:
    """The strength slider for a kind of damage: its range and a value that repairs well."""
    damage = damage if damage in MAX_STRENGTH else "noise"
    return gr.update(maximum=MAX_STRENGTH[damage], value={"noise": 0.4, "blur": 1.0}[damage])


def on_model(model_key: str) -> tuple:
    """After another model is picked: its classes in the class box, the old results cleared."""
    try:
        model = checks.load_model(model_key)
    except gr.Error:
        return (gr.skip(),) * 9
    note = "Press **Show histograms** to see where this model puts other data."
    off = gr.update(value=None, interactive=False)
    return condition_choices(model), None, note, None, "", off, None, None, ""
