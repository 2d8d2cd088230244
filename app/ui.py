"""The page: layout and event wiring, declared in one place (``build_demo``).

Public API endpoints (``gradio_client`` names): ``/model_info``, ``/generate`` (streams),
``/inspect``, ``/frame``, ``/animation`` (GIF), ``/animation_mp4``, ``/compare`` (streams),
``/invert``, ``/interpolate``,
``/ood``, ``/bits``, ``/inpaint`` and ``/repair`` (both stream), and the Train tab's (see
``app/train_ui.py``).
Helpers the page needs but the API does not (grid clicks, the sketchpad, invert-on-upload, the
player's play / pause / step buttons, sending an image to another tab) are private.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app import animation, checks, picker, storage, train_ui
from app.components import SafeEditor, SafeImage, SafeRadio, SafeSketchpad
from app.gpu import on_gpu
from app.limits import guard, max_upload_bytes, public
from app.models import ModelLoadError, default_key, pick_device
from app.runs import RUNS
from app.tabs import compare, generate, interpolate, invert, likelihood, replay

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
LEARN = Path(__file__).resolve().parent / "learn.md"

TITLE = "TarFlow · a Transformer normalizing flow"
TAGLINE = ("A stack of causal Transformer blocks that turns Gaussian noise into images and images back "
           "into noise, exactly: watch samples form token by token, invert your own pictures, and read "
           "off exact likelihoods.")

CSS = """
.tf-header { padding: 6px 2px 0; }
.tf-header h1 { margin: 0; font-size: 1.9rem; font-weight: 750; letter-spacing: -0.02em; }
.tf-header h1 span { font-weight: 450; color: var(--body-text-color-subdued); font-size: 1.15rem; }
.tf-header p { margin: 4px 0 0; color: var(--body-text-color-subdued); max-width: 62rem; }
.tf-card { font-size: 0.88rem; }
.tf-status { min-height: 2.2em; font-size: 0.95rem; }
.tf-pixels img, .tf-pixels canvas { image-rendering: pixelated; }
.tf-input img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#tf-samples .image-frame, #tf-raw .image-frame { width: 100%; }
#tf-samples img, #tf-raw img { width: 100%; height: auto; object-fit: contain; image-rendering: pixelated; }
.tf-fig-title { margin: 6px 0 -6px 2px; font-weight: 600; font-size: 0.92rem; }
.tf-fig-title p { margin: 0; line-height: 1.45; padding-bottom: 2px; }
.tf-note { font-size: 0.85rem; color: var(--body-text-color-subdued); }
.tf-footer { font-size: 0.8rem; color: var(--body-text-color-subdued); text-align: center; }
#tf-generate { min-height: 48px; font-size: 1.05rem; }
#tf-figure { position: sticky; top: 12px; align-self: flex-start; }
#tf-frame img { image-rendering: pixelated; object-fit: contain; }
.tf-group-title { padding: 8px 12px 6px; font-size: 0.92rem; }
.tf-group-title p { margin: 0; line-height: 1.45; }
#tf-compare img { width: 100%; height: auto; object-fit: contain; }
.tf-player button { min-width: 44px; }
.katex-display { overflow-x: auto; overflow-y: hidden; padding: 2px 0; }
#tf-status .error, #tf-compare-status .error { display: none !important; }  /* the status line says why */
@media (max-width: 640px) {
  .tf-header h1 { font-size: 1.5rem; }
  .tf-card { min-width: 100% !important; }
  .katex-display { font-size: 0.92em; }
}
"""


def theme() -> gr.themes.Base:
    # System fonts only: the app must look right offline (no web-font downloads).
    return gr.themes.Soft(
        primary_hue="violet",
        secondary_hue="indigo",
        neutral_hue="slate",
        radius_size="md",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def concurrency() -> int:
    """Heavy requests run at once: one per two CPU cores (at least 2), 4 on a GPU."""
    default = 4 if pick_device().type == "cuda" else max(2, (os.cpu_count() or 2) // 2)
    return int(os.environ.get("TARFLOW_CONCURRENCY", default))


def queue_size() -> int:
    return int(os.environ.get("TARFLOW_QUEUE_SIZE", "12"))


def delete_cache() -> tuple[int, int]:
    """(every, age) in seconds: Gradio removes the files it wrote for responses and uploads once
    they are ``age`` old, checking every ``every`` seconds (TARFLOW_DELETE_CACHE="every,age")."""
    every, age = os.environ.get("TARFLOW_DELETE_CACHE", "600,1800").split(",")
    return int(every), int(age)


def start_cleanup(demo: gr.Blocks) -> None:
    """On a public server, also sweep Gradio's whole file folder by age and size (see
    app/storage.py for the files Gradio's own cleanup misses); TARFLOW_SWEEP_GRADIO=1 forces it."""
    if not (public() or os.environ.get("TARFLOW_SWEEP_GRADIO") == "1"):
        return
    every, age = delete_cache()

    def spare() -> set[str]:
        return {str(p) for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}

    storage.start_janitor(get_upload_folder(), every, age, spare)


def _run(fn: Any, name: str, gpu: bool = False) -> Any:
    """A handler as an event runs it: on a GPU slice if asked, errors as one line each."""
    return guard(on_gpu(fn) if gpu else fn, name)


def _initial() -> dict[str, Any]:
    """Control values for the default model, so the page opens ready (no round trip)."""
    key = default_key()
    start = {"key": key, "card": "", "classes": [], "class_choices": [], "guidance": 2.0, "kind": generate.KIND_CLASS,
             "attn": 1.0, "sigma": 0.1, "denoise": True, "num": 16, "num_max": generate.MAX_IMAGES, "num_info": None,
             "conditional": True,
             "condition_choices": [("Most likely class", checks.AUTO), ("No label", checks.NO_LABEL)],
             "interp_choices": [("No label", checks.NO_LABEL)], "noise": 0.0, "temperature": 1.0,
             "examples": [], "examples_label": "Examples", "pairs": []}
    if key is None:
        start["card"] = ("No local model found: put one in `checkpoints/<name>/` or set `TARFLOW_MODELS_DIR`, "
                         "or pick a reference checkpoint above (downloaded on request).")
        return start
    try:
        info = picker.model_info(key, progress=None)
        model = checks.load_model(key)
    except (gr.Error, ModelLoadError) as e:
        start["card"] = f"Could not load {key}: {e}"
        return start
    card, classes, guidance, kind, attn, sigma, denoise, num, condition, interp, _, temperature = info
    start.update(card=card, classes=classes["value"], class_choices=classes["choices"],
                 conditional=classes["interactive"], guidance=guidance["value"], kind=kind["value"],
                 attn=attn["value"], sigma=sigma["value"], denoise=denoise["value"], num=num["value"],
                 num_max=num["maximum"], num_info=num["info"],
                 condition_choices=condition["choices"], interp_choices=interp["choices"], noise=sigma["value"],
                 temperature=temperature["value"])
    start["examples"], start["examples_label"] = picker.examples_for(model)
    start["pairs"] = picker.pairs_for(model)
    return start


def _figure(title: str, **kwargs: Any) -> gr.Image:
    """An output picture under a small heading (Gradio's own label would sit on top of the picture)."""
    gr.Markdown(title, elem_classes="tf-fig-title")
    kwargs.setdefault("buttons", [])
    return gr.Image(show_label=False, format="png", interactive=False, **kwargs)


def _send(run_id: str, index: float) -> tuple[str, Any]:
    """The inspected generated image as a file for an input on the Invert tab, and that tab shown."""
    run = RUNS.get(run_id)
    i = checks.number(index, "Image number", 1, run.images.shape[0], integer=True) - 1
    return str(generate.image_file(run, i)), gr.Tabs(selected="invert")


def _fresh_page() -> tuple:
    """Every result emptied after another model is picked (they belonged to the old one): the
    Generate outputs, the Invert outputs, interpolation, comparison and animation."""
    off = gr.update(value=None, interactive=False)
    generate_part = (None, "Press **Generate** to watch noise become images, block by block.", *generate._cleared())
    invert_part = (None, None, None, None, "", None, "", None, "")
    return generate_part + invert_part + (None, "", None, off, gr.update(value=None, visible=False))


def _invert_if_image(model: str, image: str | None, condition: str, precision: str, add_noise: bool,
                     progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
    """Invert as soon as an image arrives; clearing the input changes nothing."""
    if not image:
        return (gr.skip(),) * 9
    return invert.invert(model, image, condition, precision, add_noise, progress)


def build_demo() -> gr.Blocks:
    s = _initial()
    heavy = {"concurrency_id": "compute", "concurrency_limit": concurrency()}
    # Page helpers (grid clicks, the drawing, the player, sending an image) are cheap, but they are
    # reachable through the queue like any event: they share a few workers. Instant UI toggles
    # (queue=False) return constants and stay off the queue.
    light = {"concurrency_id": "light", "concurrency_limit": 4}
    loads = {"concurrency_id": "models", "concurrency_limit": 2}  # model loads (downloads) wait apart
    with gr.Blocks(title=TITLE, delete_cache=delete_cache()) as demo:
        gr.HTML(f'<div class="tf-header"><h1>TarFlow <span>· Transformer autoregressive flow</span></h1>'
                f"<p>{TAGLINE}</p></div>")
        with gr.Row(equal_height=True):
            working = gr.State(s["key"])  # the last model that loaded: the picker returns to it after a failed pick
            model = gr.Dropdown(
                picker.model_choices(), value=s["key"], label="Model", allow_custom_value=True, scale=2,
                info="bundled, a listed reference checkpoint (downloaded when picked), or type a folder / Hub id",
            )
            card = gr.Markdown(s["card"], elem_classes="tf-card")

        with gr.Tabs() as tabs:
            # ---------------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        classes = gr.Dropdown(
                            s["class_choices"], value=s["classes"], multiselect=True, allow_custom_value=True,
                            label="Classes", interactive=s["conditional"],
                            info="cycled over the images; none = no label",
                        )
                        num = gr.Slider(1, s["num_max"], value=s["num"], step=1, label="Number of images",
                                        info=s["num_info"])
                        with gr.Row(equal_height=True):
                            seed = gr.Number(0, label="Seed", precision=None, step=1, scale=3)
                            dice = gr.Button("Random", scale=1, min_width=70, size="sm")
                        run = gr.Button("Generate", variant="primary", elem_id="tf-generate")
                        with gr.Row():
                            stop_btn = gr.Button("Stop", variant="stop", size="sm", scale=0, min_width=60,
                                                 elem_id="tf-stop")
                            pause_run = gr.Button("Pause", size="sm", scale=0, min_width=62, elem_id="tf-pause")
                            step_run = gr.Button("Step", size="sm", scale=0, min_width=56, elem_id="tf-step")
                            resume_run = gr.Button("Resume", size="sm", scale=0, min_width=72, elem_id="tf-resume")
                        eta = gr.Markdown("", elem_classes="tf-note", elem_id="tf-estimate")
                        guidance = gr.Slider(0, generate.MAX_GUIDANCE, value=s["guidance"], step=0.1,
                                             label="Guidance scale w", elem_id="tf-guidance",
                                             info="0 = plain sampling; 1-4 typical; too high overflows")
                        with gr.Accordion("Guidance kind", open=False):
                            kind = SafeRadio(generate.GUIDANCE_KINDS, value=s["kind"], label="Guide against",
                                            info="the weak prediction that w pushes away from")
                            attn_temp = gr.Slider(0.1, 4, value=s["attn"], step=0.05, label="Attention temperature",
                                                  info="of the weak pass, for attention-temperature guidance")
                            annealed = gr.Checkbox(False, label="Annealed: w ramps from w/(T−1) to w over each "
                                                               "block's T tokens")
                            guide_what = SafeRadio(generate.GUIDE_WHAT, value="ab", label="Guide which outputs")
                        temperature = gr.Slider(0.1, 1.5, value=s["temperature"], step=0.05, label="Prior temperature",
                                                info="z ~ N(0, T²): lower = smoother, less varied")
                        with gr.Row():
                            denoise = gr.Checkbox(s["denoise"], label="Denoise (one score step)")
                            slow = gr.Checkbox(False, label="Slow motion")
                        sigma = gr.Slider(0, 0.5, value=s["sigma"], step=0.01, label="Noise level σ for denoising",
                                          info="the model's training noise is the right value")
                        by_class = gr.Checkbox(True, label="One row per class, named on the grid")
                        with gr.Accordion("Advanced", open=False):
                            decode = SafeRadio(generate.DECODE_CHOICES, value="sequential", label="Decoding",
                                               info="Jacobi guesses whole blocks and refines them; slower on a "
                                                    "CPU, for comparison")
                    with gr.Column(scale=2, min_width=320):
                        status = gr.Markdown("Press **Generate** to watch noise become images, block by block.",
                                             elem_classes="tf-status", elem_id="tf-status")
                        with gr.Row(equal_height=True):
                            with gr.Column(min_width=200):
                                samples = _figure("Samples · click one to inspect it", elem_classes="tf-pixels",
                                                  elem_id="tf-samples", buttons=["fullscreen"],
                                                  placeholder="Press **Generate**: noise becomes images here")
                            with gr.Column(min_width=200, visible=s["denoise"]) as raw_col:
                                raw = _figure("Before denoising (raw flow output)", elem_classes="tf-pixels",
                                              elem_id="tf-raw", buttons=["fullscreen"],
                                              placeholder="the flow's own output, before the score step")
                        with gr.Row(equal_height=True):
                            pick = gr.Slider(1, max(2, s["num"]), value=1, step=1, label="Inspect image #", scale=3,
                                             visible=s["num"] > 1)
                            download = gr.DownloadButton("Download grid (PNG)", interactive=False, size="md",
                                                         scale=1, min_width=150, elem_id="tf-download-grid")
                        with gr.Row(equal_height=True):
                            anim = gr.Button("Download animation (GIF)", size="md", scale=1, min_width=150,
                                             elem_id="tf-anim")
                            anim_mp4 = gr.Button("Download animation (MP4)", size="md", scale=1, min_width=150,
                                                 elem_id="tf-anim-mp4", visible=animation.mp4_available())
                        anim_file = gr.File(label="Animation of the whole grid forming", visible=False,
                                            elem_id="tf-anim-file", interactive=False)
                        with gr.Group():
                            gr.Markdown("**Step through it** · every recorded frame of the inspected image, "
                                        "replayed without running the model again", elem_classes="tf-group-title")
                            with gr.Row(equal_height=True):
                                frame_view = gr.Image(show_label=False, interactive=False, format="png",
                                                      elem_id="tf-frame", height=240, width=240, buttons=[],
                                                      scale=0, min_width=240,
                                                      placeholder="after a run: the inspected image, frame by frame")
                                with gr.Column(min_width=240):
                                    frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False,
                                                             elem_id="tf-frame-slider")
                                    with gr.Row(elem_classes="tf-player"):
                                        back_btn = gr.Button("◀ Step", size="sm", min_width=60)
                                        play_btn = gr.Button("▶ Play", size="sm", min_width=60, elem_id="tf-play")
                                        pause_btn = gr.Button("❚❚ Pause", size="sm", min_width=60)
                                        fwd_btn = gr.Button("Step ▶", size="sm", min_width=60)
                                    frame_md = gr.Markdown(elem_classes="tf-note", elem_id="tf-frame-md")
                        strip = _figure("Its journey from noise to image, one flow block at a time",
                                        elem_id="tf-strip", buttons=["download"],
                                        placeholder="z, then the state after each inverted block, then x")
                        heat = _figure("Where the bits go: likelihood heatmap", elem_id="tf-heatmap",
                                       buttons=["download", "fullscreen"],
                                       placeholder="each pixel's share of −log₂ p(x), in bits")
                        heat_md = gr.Markdown(elem_classes="tf-note")
                        with gr.Row():
                            image_dl = gr.DownloadButton("Download image (PNG)", interactive=False, size="sm",
                                                         elem_id="tf-download-image")
                            to_invert = gr.Button("Send to Invert", size="sm")
                            to_a = gr.Button("Use as interpolation A", size="sm")
                            to_b = gr.Button("Use as interpolation B", size="sm")
                        run_id = gr.Textbox(visible=False, label="run id")

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        gr.Markdown("One z per row, one column per value of **one** setting: what that setting "
                                    "alone changes. Model, classes, seed and every other setting come from the "
                                    "**Generate** tab.", elem_classes="tf-note")
                        sweep = SafeRadio(compare.SWEEPS, value="guidance", label="Sweep")
                        sweep_values = gr.Textbox(compare.DEFAULT_VALUES["guidance"], label="Values",
                                                  info=f"comma-separated, at most {compare.MAX_COLUMNS}; "
                                                       "for classes: names (default: the chosen classes)")
                        rows = gr.Slider(1, compare.MAX_ROWS, value=4, step=1, label="Images per column")
                        compare_btn = gr.Button("Compare", variant="primary", elem_id="tf-compare-btn")
                    with gr.Column(scale=2, min_width=320):
                        compare_md = gr.Markdown("Press **Compare**: the columns form one after another.",
                                                 elem_classes="tf-status", elem_id="tf-compare-status")
                        compare_img = _figure("Side by side, from the same noise", elem_id="tf-compare",
                                              buttons=["fullscreen"])
                        compare_dl = gr.DownloadButton("Download figure (PNG)", interactive=False, size="md",
                                                       elem_id="tf-compare-download")

            # ---------------------------------------------------------------- Invert
            with gr.Tab("Invert", id="invert"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        with gr.Tabs():
                            with gr.Tab("Upload"):
                                image = SafeImage(label="Image", type="filepath", image_mode=None,
                                                  sources=["upload", "clipboard"], elem_classes="tf-input",
                                                  elem_id="tf-upload", height=260)
                                inv_examples = gr.Dataset(components=[image], samples=[[f] for f in s["examples"]],
                                                          label=s["examples_label"], samples_per_page=16,
                                                          type="values", elem_id="tf-examples")
                            with gr.Tab("Draw"):
                                gr.Markdown("Pick the **brush** beside the canvas, draw, then press "
                                            "**Invert this drawing**.", elem_classes="tf-note")
                                sketch = SafeSketchpad(label="Drawing", show_label=False, sources=(),
                                                       transforms=("crop",), image_mode="RGBA", canvas_size=(336, 336),
                                                       fixed_canvas=True, layers=False, elem_id="tf-sketch",
                                                       brush=gr.Brush(default_size=22, colors=["#111111"],
                                                                      color_mode="fixed"))
                                use_drawing = gr.Button("Invert this drawing")
                        condition = gr.Dropdown(s["condition_choices"], value=checks.AUTO if s["conditional"] else
                                                checks.NO_LABEL, label="Condition on", allow_custom_value=True,
                                                info="the label y used by every block")
                        add_noise = gr.Checkbox(s["noise"] > 0, interactive=s["noise"] > 0,
                                                label=f"Add the training noise first (σ = {s['noise']:g})",
                                                info="the flow maps noisy images to N(0, I); clean ones land near 0")
                        precision = SafeRadio(invert.PRECISIONS, value="float32", label="Precision")
                        invert_btn = gr.Button("Invert", variant="primary")
                    with gr.Column(scale=2, min_width=420):
                        steps_img = _figure("1 · Fitted to the model's size and channels", elem_id="tf-fitted",
                                            placeholder="Upload, draw or pick an example on the left")
                        forward = _figure("2 · Pushed forward through each block, into noise", elem_id="tf-forward")
                        with gr.Row(equal_height=True):
                            with gr.Column(min_width=240):
                                hist = _figure("3 · Is z Gaussian? Its values against N(0, 1)", elem_id="tf-hist")
                            with gr.Column(min_width=240):
                                posterior = _figure("Classify by likelihood: p(class | x)", elem_id="tf-posterior")
                        posterior_md = gr.Markdown(elem_classes="tf-note")
                        back = _figure("4 · Pulled back from that exact z", elem_id="tf-reconstruction")
                        recon_md = gr.Markdown(elem_classes="tf-note")
                        inv_heat = _figure("5 · Likelihood heatmap", elem_id="tf-inv-heatmap", buttons=["download"])
                        inv_heat_md = gr.Markdown(elem_classes="tf-note")

                gr.Markdown("### Latent interpolation\nEncode two images, walk between their latents, "
                            "decode every point: a flow's latent space has no holes, so every point is an image.")
                with gr.Row():
                    image_a = SafeImage(label="A", type="filepath", image_mode=None, height=180,
                                        sources=["upload", "clipboard"], elem_classes="tf-input", elem_id="tf-a")
                    image_b = SafeImage(label="B", type="filepath", image_mode=None, height=180,
                                        sources=["upload", "clipboard"], elem_classes="tf-input", elem_id="tf-b")
                    with gr.Column(min_width=240):
                        interp_steps = gr.Slider(2, interpolate.MAX_INTERPOLATION_STEPS, value=8, step=1,
                                                 label="Points")
                        interp_path = SafeRadio(interpolate.PATHS, value="slerp", label="Path")
                        interp_cond = gr.Dropdown(s["interp_choices"], value=checks.NO_LABEL, label="Label",
                                                  allow_custom_value=True)
                        interp_btn = gr.Button("Interpolate", variant="primary")
                pair_examples = gr.Dataset(components=[image_a, image_b], samples=s["pairs"], label="Example pairs",
                                           type="values", elem_id="tf-pairs")
                interp_strip = _figure("Decoded path from A to B", elem_id="tf-interp", buttons=["download"])
                interp_md = gr.Markdown(elem_classes="tf-note")

            # ---------------------------------------------------------------- Likelihood
            with gr.Tab("Likelihood", id="likelihood") as lk_tab:
                gr.Markdown("What an **exact** log-likelihood buys: does the model know what it has never seen, "
                            "can its score fill in a hole, and where do an image's bits go? Every bits/dim here "
                            "is scored as the model was trained: its training noise added, one fixed draw.",
                            elem_classes="tf-note")
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        with gr.Tabs(elem_id="tf-lk-input"):
                            with gr.Tab("Upload"):
                                lk_image = SafeImage(label="Image", type="filepath", image_mode=None,
                                                     sources=["upload", "clipboard"], elem_classes="tf-input",
                                                     elem_id="tf-lk-image", height=220)
                                lk_examples = gr.Dataset(components=[lk_image], samples=likelihood.examples(),
                                                         label="Examples from all three datasets", samples_per_page=8,
                                                         type="values", elem_id="tf-lk-examples")
                            with gr.Tab("Draw"):
                                gr.Markdown("Pick the **brush** beside the canvas, draw, then press **Use this "
                                            "drawing**.", elem_classes="tf-note")
                                lk_sketch = SafeSketchpad(label="Drawing", show_label=False, sources=(),
                                                          transforms=("crop",), image_mode="RGBA",
                                                          canvas_size=(336, 336), fixed_canvas=True, layers=False,
                                                          elem_id="tf-lk-sketch",
                                                          brush=gr.Brush(default_size=22, colors=["#111111"],
                                                                         color_mode="fixed"))
                                lk_use_drawing = gr.Button("Use this drawing", elem_id="tf-lk-use-drawing")
                        lk_sample = gr.Button("Draw a sample from the model", size="sm")
                        with gr.Row(equal_height=True):
                            lk_condition = gr.Dropdown(likelihood.initial_choices(s["key"]), value=checks.NO_LABEL,
                                                       label="Class y", allow_custom_value=True, scale=3,
                                                       info="for the sample, the bits and the refill")
                            lk_seed = gr.Number(0, label="Seed", precision=0, scale=1, min_width=80)
                    with gr.Column(scale=2, min_width=320):
                        with gr.Tabs(elem_id="tf-lk-tabs"):
                            with gr.Tab("Out of distribution?", id="lk-ood"):
                                lk_ood_btn = gr.Button("Show histograms", size="sm", elem_id="tf-ood-btn")
                                lk_ood = _figure("Bits/dim of a few hundred images per set, one model",
                                                 elem_id="tf-ood", buttons=["download", "fullscreen"],
                                                 placeholder="computed once per model (a minute or two), "
                                                             "then read from disk")
                                lk_ood_table = gr.Markdown(elem_classes="tf-note", elem_id="tf-ood-table")
                            with gr.Tab("Inpaint & repair", id="lk-inpaint"):
                                with gr.Row():
                                    with gr.Column(min_width=260):
                                        gr.Markdown("Pick the **brush** and paint over what to erase, then choose "
                                                    "**What you painted**, or use a preset.", elem_classes="tf-note")
                                        lk_editor = SafeEditor(
                                            show_label=False, type="filepath", image_mode="RGBA",
                                            sources=[], canvas_size=(likelihood.CANVAS, likelihood.CANVAS),
                                            fixed_canvas=True, layers=False, transforms=(), elem_id="tf-lk-editor",
                                            brush=gr.Brush(default_size=28, colors=["#d946ef"], color_mode="fixed"),
                                            eraser=gr.Eraser(default_size=28))
                                    with gr.Column(min_width=240):
                                        lk_mask = SafeRadio(likelihood.MASK_CHOICES, value="bottom", label="Erase")
                                        lk_start = SafeRadio(likelihood.STARTS, value="samples", label="Refill from")
                                        lk_steps = gr.Slider(1, likelihood.MAX_STEPS, value=likelihood.DEFAULT_STEPS,
                                                             step=1, label="Langevin steps",
                                                             info="gradient steps on log p(x | y), erased pixels only")
                                        lk_refill = gr.Button("Refill", variant="primary", elem_id="tf-refill")
                                        with gr.Accordion("Repair a damaged copy", open=False):
                                            lk_damage = SafeRadio(likelihood.DAMAGES, value="noise", label="Damage")
                                            lk_strength = gr.Slider(0, max(likelihood.MAX_STRENGTH.values()), value=0.4,
                                                                    step=0.05, label="Strength",
                                                                    info="noise std ([-1, 1] scale) or blur std (px)")
                                            lk_repair = gr.Button("Damage, then repair", elem_id="tf-repair")
                                lk_status = gr.Markdown("Pick an image, choose what to erase, press **Refill**.",
                                                        elem_classes="tf-status", elem_id="tf-inpaint-status")
                                lk_fig = _figure("Original · erased · refilled (the refilled region outlined)",
                                                 elem_id="tf-inpaint", buttons=["fullscreen"])
                                lk_result = gr.DownloadButton("Download the result (PNG)", interactive=False,
                                                              size="sm", elem_id="tf-inpaint-download")
                            with gr.Tab("Where the bits go", id="lk-bits"):
                                lk_bits_btn = gr.Button("Split the bits", size="sm", elem_id="tf-bits-btn")
                                lk_bars = _figure("−log₂ p(x) per dimension, part by part", elem_id="tf-bits",
                                                  buttons=["download"],
                                                  placeholder="pick an image: its bits/dim split block by block")
                                lk_heat = _figure("The same total, pixel by pixel", elem_id="tf-bits-heat",
                                                  buttons=["download"])
                                lk_bits_md = gr.Markdown(elem_classes="tf-note", elem_id="tf-bits-md")

            # ---------------------------------------------------------------- Train
            train_ui.build(demo)  # layout and events in app/train_ui.py

            # ---------------------------------------------------------------- Learn
            with gr.Tab("Learn", id="learn"):
                with gr.Row():
                    with gr.Column(scale=3):
                        gr.Markdown(LEARN.read_text(encoding="utf-8"), latex_delimiters=[
                            {"left": "$$", "right": "$$", "display": True},
                            {"left": "$", "right": "$", "display": False},
                        ])
                    with gr.Column(scale=2, elem_id="tf-figure"):
                        figure = ASSETS / "architecture.png"
                        if figure.is_file():
                            gr.Image(str(figure), label="TarFlow at a glance", interactive=False,
                                     buttons=["fullscreen"], show_label=False)

        gr.HTML('<div class="tf-footer">TarFlow: Zhai et al., <a href="https://arxiv.org/abs/2412.06329">'
                "Normalizing Flows are Capable Generative Models</a> (2024). Runs on CPU, CUDA or ZeroGPU.</div>")

        # ---------------------------------------------------------------- events
        model_outputs = [card, classes, guidance, kind, attn_temp, sigma, denoise, num, condition, interp_cond,
                         add_noise, temperature]
        gen_outputs = [samples, status, raw, strip, heat, heat_md, download, run_id, pick, frame_slider, frame_view,
                       frame_md, image_dl]
        inv_outputs = [steps_img, forward, hist, back, recon_md, inv_heat, inv_heat_md, posterior, posterior_md]
        # A failed pick leaves the picker on the model that works (the card and controls never changed).
        picked = model.input(_run(picker.model_info, "/model_info"), model, model_outputs, api_name="model_info",
                             show_progress_on=card, **loads)
        picked.failure(picker.back_to, working, model, api_visibility="private", queue=False)
        denoise.change(lambda on: gr.update(visible=bool(on)), denoise, raw_col, api_visibility="private",
                       queue=False)
        dice.click(None, None, seed, js="() => Math.floor(Math.random() * 1000000)")

        gen_inputs = [model, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what, temperature, denoise,
                      sigma, slow, by_class, decode]
        generating = run.click(lambda: gr.update(visible=False, value=None), None, anim_file,
                               api_visibility="private", queue=False).then(
            _run(generate.generate, "/generate", gpu=True), gen_inputs, gen_outputs, api_name="generate",
            show_progress_on=status, **heavy)
        # Stop cancels this page's running job (limits.Job.cancel); the stream ends within about a second
        stop_btn.click(_run(generate.stop, "stop"), None, None, api_visibility="private", **light)
        # Pause / Step / Resume hold the running job between frames (limits.Job.hold)
        for button, control in ((pause_run, generate.pause), (step_run, generate.step), (resume_run, generate.resume)):
            button.click(_run(control, control.__name__), None, None, api_visibility="private", **light)
        # the time a Generate should take here, from a token step measured once per model and batch size
        for control in (num, guidance):
            control.release(_run(generate.estimate_note, "estimate"), [model, num, guidance], eta,
                            api_visibility="private", **light)
        picked.success(_run(generate.estimate_note, "estimate"), [model, num, guidance], eta,
                       api_visibility="private", **light)
        demo.load(_run(generate.estimate_note, "estimate"), [model, num, guidance], eta, api_visibility="private",
                  **light)  # shown from the first page load (the step is measured once per model and batch)
        # after a finished run the estimate says what that run took
        generating.success(_run(generate.estimate_note, "estimate"), [model, num, guidance], eta,
                           api_visibility="private", **light)
        # A new model: a run of the old one is stopped and every result of it cleared.
        picked.success(_run(picker.picked, "picked"), model, [working, inv_examples, pair_examples],
                       api_visibility="private", **loads).then(
            _fresh_page, None, gen_outputs + inv_outputs + [interp_strip, interp_md, compare_img, compare_dl,
                                                            anim_file], api_visibility="private", queue=False,
            cancels=[generating])
        inspect_outputs = [samples, strip, heat, heat_md, frame_slider, frame_view, frame_md, image_dl]
        pick.release(_run(generate.inspect, "/inspect", gpu=True), [run_id, pick], inspect_outputs,
                     api_name="inspect", **heavy)
        samples.select(_run(generate.pick_from_grid, "grid click"), run_id, pick, api_visibility="private",
                       **light).then(_run(generate.inspect, "inspect (click)", gpu=True), [run_id, pick],
                                     inspect_outputs, api_visibility="private", **heavy)

        # the step-through player: recorded frames only, so no model runs and no GPU is needed
        player = [run_id, pick, frame_slider]
        frame_slider.release(_run(replay.frame, "/frame"), player, [frame_view, frame_md], api_name="frame",
                             **light)
        back_btn.click(_run(lambda r, p, f: replay.step(r, p, f, -1), "step back"), player,
                       [frame_slider, frame_view, frame_md], api_visibility="private", **light)
        fwd_btn.click(_run(lambda r, p, f: replay.step(r, p, f, 1), "step forward"), player,
                      [frame_slider, frame_view, frame_md], api_visibility="private", **light)
        # playing sleeps between frames: its own group, so that it never holds up the helpers above
        playing = play_btn.click(_run(replay.play, "play"), player, [frame_slider, frame_view, frame_md],
                                 api_visibility="private", concurrency_id="player", concurrency_limit=4)
        pause_btn.click(None, None, None, cancels=[playing], api_visibility="private")
        for button, export, endpoint in ((anim, replay.animation, "animation"),
                                         (anim_mp4, replay.animation_mp4, "animation_mp4")):
            button.click(_run(export, f"/{endpoint}"), run_id, anim_file, api_name=endpoint, **heavy).success(
                lambda: gr.update(visible=True), None, anim_file, api_visibility="private", queue=False)

        compare_inputs = [model, classes, rows, seed, guidance, kind, attn_temp, annealed, guide_what, temperature,
                          denoise, sigma, sweep, sweep_values]
        compare_btn.click(_run(compare.compare, "/compare", gpu=True), compare_inputs,
                          [compare_img, compare_md, compare_dl], api_name="compare", show_progress_on=compare_md,
                          **heavy)
        sweep.change(lambda k: compare.DEFAULT_VALUES.get(k, ""), sweep, sweep_values, api_visibility="private",
                     queue=False)

        send = _run(_send, "send image")
        to_invert.click(send, [run_id, pick], [image, tabs], api_visibility="private", **light)
        to_a.click(send, [run_id, pick], [image_a, tabs], api_visibility="private", **light).then(
            None, js="() => document.getElementById('tf-a')?.scrollIntoView({block: 'center'})")
        to_b.click(send, [run_id, pick], [image_b, tabs], api_visibility="private", **light).then(
            None, js="() => document.getElementById('tf-b')?.scrollIntoView({block: 'center'})")

        inv_inputs = [model, image, condition, precision, add_noise]
        invert_btn.click(_run(invert.invert, "/invert", gpu=True), inv_inputs, inv_outputs, api_name="invert",
                         **heavy)
        image.change(_run(_invert_if_image, "invert (upload)", gpu=True), inv_inputs, inv_outputs,
                     api_visibility="private", **heavy)
        use_drawing.click(_run(invert.drawing_to_file, "drawing"), sketch, image, api_visibility="private", **light)
        inv_examples.click(_run(lambda sample: sample[0], "example"), inv_examples, image, api_visibility="private",
                           **light)
        pair_examples.click(_run(lambda sample: tuple(sample[:2]), "example pair"), pair_examples,
                            [image_a, image_b], api_visibility="private", **light)
        interp_inputs = [model, image_a, image_b, interp_steps, interp_path, interp_cond]
        interp_btn.click(_run(interpolate.interpolate, "/interpolate", gpu=True), interp_inputs,
                         [interp_strip, interp_md], api_name="interpolate", **heavy)

        # ---------------------------------------------------------------- Likelihood events
        ood_io = ([model, lk_image], [lk_ood, lk_ood_table])
        lk_tab.select(_run(likelihood.ood_view, "/ood", gpu=True), *ood_io, api_visibility="private", **heavy)
        lk_ood_btn.click(_run(likelihood.ood_view, "/ood", gpu=True), *ood_io, api_name="ood", **heavy)
        bits_io = ([model, lk_image, lk_condition], [lk_bars, lk_heat, lk_bits_md])
        lk_bits_btn.click(_run(likelihood.bits_split, "/bits", gpu=True), *bits_io, api_name="bits", **heavy)
        lk_image.change(_run(likelihood.to_editor, "editor"), [model, lk_image], lk_editor, api_visibility="private",
                        **light).then(
            _run(likelihood.ood_view, "/ood", gpu=True), *ood_io, api_visibility="private", **heavy).then(
            _run(likelihood.bits_split, "/bits", gpu=True), *bits_io, api_visibility="private", **heavy)
        lk_examples.click(_run(lambda sample: sample[0], "example"), lk_examples, lk_image, api_visibility="private",
                          **light)
        lk_use_drawing.click(_run(invert.drawing_to_file, "drawing"), lk_sketch, lk_image, api_visibility="private",
                             **light)
        lk_sample.click(_run(likelihood.draw_sample, "draw sample", gpu=True), [model, lk_condition, lk_seed],
                        lk_image, api_visibility="private", **heavy)
        refill_in = [model, lk_image, lk_editor, lk_mask, lk_condition, lk_start, lk_steps, lk_seed]
        lk_refill.click(_run(likelihood.refill, "/inpaint", gpu=True), refill_in, [lk_fig, lk_status, lk_result],
                        api_name="inpaint", show_progress_on=lk_status, **heavy)
        repair_in = [model, lk_image, lk_damage, lk_strength, lk_condition, lk_steps, lk_seed]
        lk_repair.click(_run(likelihood.repair, "/repair", gpu=True), repair_in, [lk_fig, lk_status, lk_result],
                        api_name="repair", show_progress_on=lk_status, **heavy)
        lk_damage.change(_run(likelihood.strength_for, "strength"), lk_damage, lk_strength, api_visibility="private",
                         **light)
        picked.success(_run(likelihood.on_model, "likelihood tab"), model,
                       [lk_condition, lk_ood, lk_ood_table, lk_fig, lk_status, lk_result, lk_bars, lk_heat, lk_bits_md],
                       api_visibility="private", **light)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch``: server name and port come from GRADIO_SERVER_NAME /
    GRADIO_SERVER_PORT, which Gradio reads itself when these are left unset."""
    return {
        "theme": theme(),
        "css": CSS + train_ui.CSS,
        "show_error": True,  # our gr.Error messages are written for users
        "max_file_size": max_upload_bytes(),
        "allowed_paths": [str(ASSETS)],
        "state_session_capacity": 500,  # visitors whose page state is kept (Gradio keeps 10000)
    }
