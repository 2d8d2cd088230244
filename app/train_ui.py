"""The Train tab's layout and events (declared here, called from ``app.ui.build_demo`` inside its
tabs, so the page's main layout stays readable).

Public API endpoints: ``/train`` (streams), ``/train_step``, ``/train_pause``, ``/train_stop``,
``/train_reset``, ``/train_digits`` (streams).
"""

from __future__ import annotations

import gradio as gr

from app.components import SafeRadio, SafeSketchpad
from app.limits import guard
from app.tabs import train

CSS = """
#tf-train-grid img { image-rendering: pixelated; object-fit: contain; }
.tf-train-panels img { width: 100%; height: auto; object-fit: contain; }
.tf-train-panels .icon-button-wrapper { display: none; }
.tf-train-panels .tf-fig-title { margin-bottom: 2px; }
.tf-legend { font-size: 0.85rem; color: var(--body-text-color-subdued); margin: -6px 0 0 8px; }
.tf-legend span { white-space: nowrap; margin-right: 14px; }
.tf-legend b { display: inline-block; width: 18px; height: 3px; vertical-align: middle; margin-right: 5px; }
.tf-train-buttons button { min-width: 50px; padding-left: 4px; padding-right: 4px; }
"""

INTRO = ("Watch a TarFlow learn, live. In the **2D playground** a point is a sequence of two tokens of one "
         "number each, going through the same causal-Transformer blocks as an image's patches; with two "
         "tokens each block is an affine coupling layer. **Digits from scratch** trains a small "
         "class-conditional TarFlow on 14×14 MNIST from random weights. Your run is yours alone: it stops "
         "when you close the page.")

PLAYGROUND_NOTE = (
    "**What you see.** *Density*: exp(log p(x)) computed exactly at the 64×64 points of a grid (its mass over "
    "the plane is printed: ≈ 1). *Samples*: z ~ N(0, I) pushed back through the flow (violet) over the training "
    "points (grey). *Warped space*: a regular grid in latent space carried back through the inverse flow, "
    "one block at a time (slider). **What a block does here.** Block 1 leaves token 0 (the x coordinate) as "
    "it is and moves token 1: y ↦ (y − b(x))·exp(−a(x)), with a and b computed by the block's Transformer "
    "from x alone. Block 2 reads the sequence backwards, so y stays and x moves. That is an affine "
    "coupling layer, exactly; stacking them in alternating order is what bends the plane.")


PLAYGROUND_COLOURS = {"training (smoothed)": "#6d28d9", "held-out": "#0891b2", "one Gaussian, held-out": "#94a3b8"}
DIGIT_COLOURS = {"training (smoothed)": "#6d28d9", "held-out": "#0891b2", "noise floor": "#94a3b8"}


def _legend(colours: dict[str, str]) -> gr.HTML:
    """The curves' names under a plot (the plot's own legend does not fit in its box)."""
    items = "".join(f'<span><b style="background:{c}"></b>{name}</span>' for name, c in colours.items())
    return gr.HTML(f'<div class="tf-legend">{items}</div>')


def _figure(title: str, **kwargs) -> gr.Image:
    gr.Markdown(title, elem_classes="tf-fig-title")
    kwargs.setdefault("format", "png")
    return gr.Image(show_label=False, interactive=False, buttons=[], **kwargs)


def build(demo: gr.Blocks) -> None:
    start = train.DEFAULT
    with gr.Tab("Train", id="train"):
        gr.Markdown(INTRO, elem_classes="tf-note")
        with gr.Tabs():
            with gr.Tab("2D playground", id="train-2d"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        target = SafeRadio(train.TARGET_CHOICES, value=start.target, label="Target",
                                          elem_id="tf-train-target")
                        drawing = SafeSketchpad(label="Draw the target", sources=(), transforms=(),
                                                image_mode="RGBA", canvas_size=(300, 300), fixed_canvas=True,
                                                layers=False, visible=False, elem_id="tf-train-sketch",
                                                brush=gr.Brush(default_size=10, colors=["#111111"],
                                                               color_mode="fixed"))
                        with gr.Row(elem_classes="tf-train-buttons"):
                            go = gr.Button("Train", variant="primary", size="sm", min_width=50, elem_id="tf-train-go")
                            pause = gr.Button("Pause", size="sm", min_width=50, elem_id="tf-train-pause")
                            step = gr.Button("Step", size="sm", min_width=50, elem_id="tf-train-step")
                            stop = gr.Button("Stop", size="sm", min_width=50, elem_id="tf-train-stop")
                            reset = gr.Button("Reset", size="sm", min_width=50, elem_id="tf-train-reset")
                        with gr.Accordion("Flow and optimiser (changing one resets the run)", open=False):
                            blocks = gr.Slider(1, 12, value=start.blocks, step=1, label="Blocks",
                                               info="alternating order: every second block reads backwards")
                            layers = gr.Slider(1, 4, value=start.layers, step=1, label="Transformer layers per block")
                            with gr.Row():
                                width = gr.Dropdown(list(train.WIDTHS), value=start.width, label="Width",
                                                    min_width=100)
                                batch = gr.Dropdown([32, 64, 128, 256, 512, 1024], value=start.batch,
                                                    label="Batch size", min_width=100)
                            with gr.Row():
                                lr = gr.Number(start.lr, label="Learning rate (Adam)", minimum=1e-5, maximum=0.05,
                                               step=0.001, min_width=100)
                                seed = gr.Number(start.seed, label="Seed", precision=0, minimum=0, min_width=100)
                    with gr.Column(scale=2, min_width=320):
                        status = gr.Markdown("Press **Train**.", elem_classes="tf-status", elem_id="tf-train-status")
                        with gr.Row(elem_classes="tf-train-panels"):
                            with gr.Column(min_width=200):
                                # JPEG: a smooth heatmap, 7 kB in 1 ms (PNG: 21 kB in 10-30 ms) at every frame
                                density = _figure("Density exp(log p(x))", elem_id="tf-train-density",
                                                  format="jpeg")
                            with gr.Column(min_width=200):
                                samples = _figure("Samples over the data", elem_id="tf-train-samples")
                            with gr.Column(min_width=200):
                                warped = _figure("Warped space", elem_id="tf-train-warp")
                        stage = gr.Slider(0, start.blocks, value=start.blocks, step=1, elem_id="tf-train-stage",
                                          label="Warped space: blocks inverted (0 = the latent grid, last = data)")
                        curves = gr.LinePlot(x="step", y="value", color="curve", label="NLL (nats per point)",
                                             y_title="nats per point", height=320, elem_id="tf-train-loss",
                                             color_title=" ", color_map=PLAYGROUND_COLOURS)
                        _legend(PLAYGROUND_COLOURS)
                        gr.Markdown(PLAYGROUND_NOTE, elem_classes="tf-note")
            with gr.Tab("Digits from scratch", id="train-digits"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        d_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        with gr.Row(elem_classes="tf-train-buttons"):
                            d_go = gr.Button("Train", variant="primary", size="sm", min_width=50,
                                             elem_id="tf-digits-go")
                            d_pause = gr.Button("Pause", size="sm", min_width=50)
                            d_stop = gr.Button("Stop", size="sm", min_width=50, elem_id="tf-digits-stop")
                            d_reset = gr.Button("Reset", size="sm", min_width=50)
                        gr.Markdown(
                            f"A class-conditional TarFlow: 14×14 digits in 2×2 patches (49 tokens of 4 values), "
                            f"{train.DIGITS.num_blocks} blocks of {train.DIGITS.layers_per_block} layers, width "
                            f"{train.DIGITS.channels}, trained with noise σ = {train.DIGITS.noise_std} like the "
                            f"big models. A fresh grid (one row per class, drawn from the averaged weights and "
                            f"denoised) every few seconds. Recognisable digits take a few minutes.",
                            elem_classes="tf-note")
                    with gr.Column(scale=2, min_width=320):
                        d_status = gr.Markdown("Press **Train**.", elem_classes="tf-status",
                                               elem_id="tf-digits-status")
                        d_grid = _figure("Samples, one row per class", elem_id="tf-train-grid", height=340)
                        d_curves = gr.LinePlot(x="step", y="value", color="curve", label="bits/dim",
                                               y_title="bits/dim", height=300, elem_id="tf-digits-loss",
                                               color_title=" ", color_map=DIGIT_COLOURS)
                        _legend(DIGIT_COLOURS)

    settings = [target, blocks, layers, width, lr, batch, seed, drawing]
    frame = [density, samples, warped, curves, status]
    # Three queues: the streams (each draws frames), light requests (a step, a preview), and the
    # buttons that only change a run's state (never behind the others).
    streaming = {"concurrency_id": "train", "concurrency_limit": train.STREAMS, "show_progress": "hidden"}
    light = {"concurrency_id": "train-light", "concurrency_limit": 2, "show_progress": "hidden"}
    buttons = {"concurrency_id": "train-control", "concurrency_limit": 4, "show_progress": "hidden"}
    quiet = {"api_visibility": "private", "trigger_mode": "always_last", **light}
    go.click(guard(train.train, "/train"), settings, frame, api_name="train", **streaming)
    step.click(guard(train.step, "/train_step"), settings, frame, api_name="train_step", **light)
    pause.click(guard(train.pause, "/train_pause"), None, status, api_name="train_pause", **buttons)
    stop.click(guard(train.stop, "/train_stop"), None, status, api_name="train_stop", **buttons)
    preview = guard(train.preview, "/train_reset")
    reset.click(preview, settings, frame + [stage], api_name="train_reset", **light)
    for control in (target, width, batch, seed, lr, drawing):
        control.change(preview, settings, frame + [stage], **quiet)
    for control in (blocks, layers):
        control.release(preview, settings, frame + [stage], **quiet)
    target.change(lambda t: gr.update(visible=t == train.DRAWN), target, drawing, api_visibility="private",
                  queue=False)
    stage.release(guard(train.view, "train_view"), [stage] + settings, warped, **quiet)

    digit_frame = [d_grid, d_curves, d_status]
    d_go.click(guard(train.digits, "/train_digits"), d_seed, digit_frame, api_name="train_digits", **streaming)
    d_pause.click(guard(train.pause, "/train_pause"), None, d_status, api_visibility="private", **buttons)
    d_stop.click(guard(train.stop, "/train_stop"), None, d_status, api_visibility="private", **buttons)
    digits_reset = guard(train.digits_reset, "digits_reset")
    d_reset.click(digits_reset, d_seed, digit_frame, api_visibility="private", **buttons)
    d_seed.change(digits_reset, d_seed, digit_frame, api_visibility="private", **buttons)
    demo.unload(train.end_session)
    # Gradio calls it straight from the page's heartbeat when the connection drops, not through
    # the queue; it is put in the buttons' group so that every event has a group with a limit.
    unload = next(fn for fn in demo.fns.values() if fn.fn is train.end_session)
    unload.concurrency_id, unload.concurrency_limit = buttons["concurrency_id"], buttons["concurrency_limit"]
