"""The app's handlers, input decoding and rendering, called directly (no server, no browser)."""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from app_models import TINY_CLASSES, noop, randomise
from PIL import Image, ImageDraw

from app import checks, inputs, models, picker, render, runs
from app.tabs import generate, interpolate, invert
from tarflow import TarFlow
from tarflow.likelihood import noise_bits
from tarflow.sampling import resolve_labels, slerp

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# Random tiny models' samples stray far outside [-1, 1]; the warning has its own test.
pytestmark = pytest.mark.filterwarnings("ignore:These samples are measurably off")


def gen_args(**over):
    args = dict(model_key="tiny-cond", classes=["star", "circle"], num=6, seed=0, guidance=1.0, kind="class",
                attn_temp=1.0, annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False)
    args.update(over)
    return args


def run_generate(**over):
    return list(generate.generate(**gen_args(**over), progress=noop))


# ---------------------------------------------------------------------------------------------- generate


def test_generate_streams_each_block_then_the_final_outputs(tiny):
    outs = run_generate()
    statuses = [o[1] for o in outs]
    assert statuses[0].startswith("**Prior sample**")
    for block in (1, 2):
        assert any(f"**Block {block}/2**" in s for s in statuses), statuses
    # tokens fill in within a block, not only at its end
    assert any(re.search(r"token ([2-9]|1[0-5])/16", s) for s in statuses), statuses
    assert statuses[-1].startswith("**Done**")
    final = outs[-1]
    assert len(final) == 13
    samples, raw, strip, heat = final[0], final[2], final[3], final[4]
    # 3 stars then 3 circles, one row per class: rows of 3 images of 8 px with 2 px gutters, enlarged
    # 8x, after a margin with the class names; image 1 framed, so RGB
    margin = render.label_margin(render.class_layout([2, 0] * 3, TINY_CLASSES))
    assert samples.shape == (22 * 8, margin + 32 * 8, 3)
    assert raw.shape[:2] == samples.shape[:2]
    assert strip.size[1] > 0 and heat.ndim == 3
    assert "bits/dim" in final[5]
    png = Path(final[6]["value"])
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (margin + 32 * 8, 22 * 8)
    assert final[8]["maximum"] == 6 and final[8]["visible"]
    assert final[9]["maximum"] == len(runs.RUNS.get(final[7]).frames) - 1 > 2
    assert final[11].startswith("**Frame")
    # the streamed frames change: noise becomes something else
    assert not np.array_equal(outs[0][0], samples)


def test_generate_is_reproducible_from_the_seed(tiny):
    a, b = run_generate(seed=5)[-1][0], run_generate(seed=5)[-1][0]
    c = run_generate(seed=6)[-1][0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_without_denoising_hides_the_raw_grid(tiny):
    final = run_generate(denoise=False)[-1]
    assert final[2] is None
    assert "not denoised" in final[1]


@pytest.mark.filterwarnings("ignore:Guidance pushed pixel values")  # a random model saturates easily
def test_unconditional_rgb_with_attention_guidance(tiny):
    outs = run_generate(model_key="tiny-rgb", classes=[], num=3, kind="attention", attn_temp=1.5, annealed=True,
                        sigma=0.05)
    final = outs[-1]
    assert final[0].ndim == 3 and final[0].shape[2] == 3
    assert "attention temp 1.5, annealed" in final[1]


@pytest.mark.parametrize("over, message", [
    (dict(num=10**6), "Number of images must be between 1 and 64"),
    (dict(num=0), "Number of images must be between 1"),
    (dict(num=2.5), "whole number"),
    (dict(seed=-1), "Seed must be between 0"),
    (dict(seed="abc"), "Seed must be a number"),
    (dict(guidance=float("nan")), "Guidance scale must be a finite number"),
    (dict(guidance=float("inf")), "finite"),
    (dict(guidance=-1), "Guidance scale must be between 0"),
    (dict(classes=["unicorn"]), "Unknown class 'unicorn'"),
    (dict(model_key="tiny-rgb", classes=["star"]), "unconditional"),
    (dict(kind="bogus"), "Guidance kind must be one of"),
    (dict(guide_what="c"), "Guide which must be one of"),
    (dict(temperature=0), "Prior temperature must be between"),
    (dict(sigma=float("nan")), "Noise level sigma must be a finite number"),
    (dict(model_key="does-not-exist"), "Could not load the model"),
    (dict(model_key=""), "no model chosen"),
])
def test_bad_generate_inputs_get_clear_errors(tiny, over, message):
    with pytest.raises(gr.Error, match=re.escape(message)):
        run_generate(**over)


def test_overflowing_guidance_is_reported_with_advice(tiny):
    with pytest.raises(gr.Error) as err:
        run_generate(classes=["square"], guidance=generate.MAX_GUIDANCE)  # this tiny model overflows from w = 15
    assert "overflowed" in err.value.message and "Lower the guidance" in err.value.message
    assert run_generate()[-1][1].startswith("**Done**")  # and the next request works


def test_inspect_and_grid_clicks(tiny):
    final = run_generate(num=5)[-1]
    run_id = final[7]
    grid, strip, heat, caption, frames, view, view_md, image = generate.inspect(run_id, 3)
    assert caption.startswith("**Image 3**") and "bits/dim" in caption
    assert Path(image["value"]).name == "image-3.png" and image["interactive"]
    assert not np.array_equal(grid, generate.inspect(run_id, 2)[0])  # the frame moved to the other image
    bpd = float(re.search(r"\*\*([\d.]+) bits/dim", caption).group(1))
    assert 0 < bpd < 64
    with pytest.raises(gr.Error, match="Image number must be between 1 and 5"):
        generate.inspect(run_id, 6)
    with pytest.raises(gr.Error, match="no longer kept"):
        generate.inspect("unknown-run", 1)

    class Click:
        def __init__(self, x, y):
            self.index = (x, y)

    run = runs.RUNS.get(run_id)
    scale, margin = run.scale, run.margin
    # one row per class: stars are images 1, 3, 5, circles 2, 4; image 5 is the third star, in the
    # third cell of the first row: cell origin at 2 + 2 * 10 px, native, right of the names
    assert generate.pick_from_grid(run_id, Click(margin + (2 + 20 + 3) * scale, (2 + 3) * scale)) == 5
    assert generate.pick_from_grid(run_id, Click(margin + (2 + 10 + 3) * scale, (2 + 10 + 3) * scale)) == 4
    assert generate.pick_from_grid(run_id, Click(1, 1)) is not None  # a gutter: no change
    assert not isinstance(generate.pick_from_grid(run_id, Click(1, 1)), int)


def test_run_store_drops_old_runs_and_their_files(tiny, tmp_path):
    store = runs.RunStore(capacity=2)
    folders = []
    ids = []
    for k in range(3):
        run = runs.RUNS.get(run_generate(num=1)[-1][7])
        run.folder = tmp_path / f"run{k}"
        run.folder.mkdir()
        (run.folder / "grid.png").write_bytes(b"x")
        folders.append(run.folder)
        ids.append(store.put(run))
    assert len(store) == 2
    assert not folders[0].exists() and folders[2].exists()
    with pytest.raises(gr.Error):
        store.get(ids[0])


# ---------------------------------------------------------------------------------------------- invert


NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"


def recon_error(md: str) -> float:
    return float(re.search(r"max \|x − x̂\| = " + NUMBER, md).group(1))


@pytest.mark.parametrize("precision, bound", [("float32", 1e-4), ("float64", 1e-12)])
def test_invert_reconstructs_to_rounding(tiny, precision, bound):
    out = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", precision, progress=noop)
    assert len(out) == 9
    assert recon_error(out[4]) < bound
    assert precision in out[4]
    assert "bits/dim" in out[6]
    assert out[7] is not None and "Most likely" in out[8]


def test_invert_bits_per_dim_matches_the_core(tiny):
    from tarflow.likelihood import bits_per_dim

    model = models.MODELS.get("tiny-cond")
    fitted = inputs.load_fitted(EXAMPLES / "mnist-7.png", model.img_size, model.in_channels, model.dataset)
    x = (torch.from_numpy(fitted.array.astype(np.float32)).permute(2, 0, 1)[None] + 0.5) / 128 - 1
    with torch.no_grad():
        expected = float(bits_per_dim(model, x, torch.tensor([1])))
    out = invert.invert("tiny-cond", str(EXAMPLES / "mnist-7.png"), "square", "float32", False, progress=noop)
    shown = float(re.search(r"\*\*([\d.]+) bits/dim\*\*", out[6]).group(1))
    assert shown == pytest.approx(expected, abs=1e-3)
    assert "'square'" in out[6]


def test_invert_adds_the_training_noise_on_request(tiny):
    path = str(EXAMPLES / "mnist-3.png")
    clean = invert.invert("tiny-cond", path, "none", "float32", False, progress=noop)
    noisy = invert.invert("tiny-cond", path, "none", "float32", True, progress=noop)
    again = invert.invert("tiny-cond", path, "none", "float32", True, progress=noop)
    assert noisy[0].width > clean[0].width  # one more fitting step: "+ noise"
    assert noisy[6] == again[6] and noisy[6] != clean[6]  # a fixed noise draw: reproducible, and different
    assert recon_error(noisy[4]) < 1e-4
    assert "noise σ = 0.1" in noisy[6] and "bits/dim, so numbers near it" in noisy[6]


def test_noise_bits_is_the_entropy_of_the_noise_in_8_bit_units():
    # N(0, s^2) on the [-1, 1] scale is N(0, (128 s)^2) in 8-bit units: 0.5 log2(2 pi e (128 s)^2)
    assert noise_bits(0.1) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e * 12.8**2))
    assert noise_bits(0.0) == 0.0


def test_invert_unconditional_model_has_nothing_to_classify(tiny):
    out = invert.invert("tiny-rgb", str(EXAMPLES / "emoji-food-drink.png"), "auto", "float32", progress=noop)
    assert out[7] is None and "unconditional" in out[8]
    assert recon_error(out[4]) < 1e-4


@pytest.mark.parametrize("value, message", [
    (None, "Upload, draw or pick an image first"),
    ("", "Upload, draw or pick an image first"),
])
def test_invert_needs_an_image(tiny, value, message):
    with pytest.raises(gr.Error, match=message):
        invert.invert("tiny-cond", value, "auto", "float32", progress=noop)


def test_invert_refuses_bad_condition_and_precision(tiny):
    with pytest.raises(gr.Error, match="Unknown class 'dragon'"):
        invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "dragon", "float32", progress=noop)
    with pytest.raises(gr.Error, match="Precision must be one of"):
        invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float16", progress=noop)


def test_interpolation_ends_reproduce_both_images(tiny):
    strip, md = interpolate.interpolate("tiny-cond", str(EXAMPLES / "mnist-3.png"), str(EXAMPLES / "mnist-7.png"), 5,
                              "slerp", "none", progress=noop)
    err = float(re.search(r"reproduce A and B to " + NUMBER, md).group(1))
    assert err < 1e-4
    assert strip.width > strip.height
    _, md_linear = interpolate.interpolate("tiny-cond", str(EXAMPLES / "mnist-3.png"), str(EXAMPLES / "mnist-7.png"), 5,
                                 "linear", "star", progress=noop)
    assert md_linear.startswith("Linear")
    with pytest.raises(gr.Error, match="Choose two images"):
        interpolate.interpolate("tiny-cond", str(EXAMPLES / "mnist-3.png"), None, 5, "slerp", "none", progress=noop)
    with pytest.raises(gr.Error, match="Steps must be between 2"):
        interpolate.interpolate("tiny-cond", str(EXAMPLES / "mnist-3.png"), str(EXAMPLES / "mnist-7.png"), 500, "slerp",
                      "none", progress=noop)


def test_a_learned_prior_variance_is_divided_out_of_the_latent(tiny, tmp_path):
    # A VP model (prior variance not ones): invert must still pull back exactly, and the latent the
    # interpolation walks must be the flow's output over the prior's standard deviation.
    vp = randomise(TarFlow(1, 8, 2, 32, 2, 1, head_dim=16, dataset="tiny-vp"), 3)
    vp.var.copy_(0.25 + 3.75 * torch.rand(vp.var.shape, generator=torch.Generator().manual_seed(0)))
    vp.save_pretrained(tmp_path / "tiny-vp")
    key, a, b = str(tmp_path / "tiny-vp"), str(EXAMPLES / "mnist-3.png"), str(EXAMPLES / "mnist-7.png")
    assert recon_error(invert.invert(key, a, "auto", "float64", False, progress=noop)[4]) < 1e-12
    _, md = interpolate.interpolate(key, a, b, 3, "linear", "none", progress=noop)
    model = models.MODELS.get(key)
    x = inputs.to_model(inputs.load_fitted(a, 8, 1, "tiny-vp").array, model)
    with torch.no_grad():
        raw = model.trace(x)[0]
    z = raw / model.var.sqrt()
    assert f"|z| is {float(z.norm()):.1f} at A" in md
    assert f"{float(z.norm()):.1f}" != f"{float(raw.norm()):.1f}"  # the variance matters here


def test_class_choices_become_the_cores_labels(tiny):
    model = models.MODELS.get("tiny-cond")
    assert checks.class_labels(model, ["star", " circle ", "1", 2], 64) == [2, 0, 1, 2]
    assert checks.class_labels(model, ["star", "square"], 64) == resolve_labels(model, ["star", "square"], 2).tolist()
    assert checks.class_labels(model, None, 64) == [] and checks.class_labels(model, "", 64) == []
    with pytest.raises(gr.Error, match="Unknown class 'True'"):  # a name, never the index 1
        checks.class_labels(model, [True], 64)
    with pytest.raises(gr.Error, match="65 classes chosen"):
        checks.class_labels(model, ["star"] * 65, 64)
    assert checks.condition(model, "square") == 1
    assert checks.condition(model, "-1") is None and checks.condition(model, "none") is None
    assert checks.condition(model, None) == checks.AUTO
    assert checks.condition(models.MODELS.get("tiny-rgb"), "auto") is None


def test_an_unknown_class_among_a_thousand_gets_a_short_message():
    model = TarFlow(1, 8, 4, 16, 1, 1, num_classes=1000, head_dim=16)
    with pytest.raises(gr.Error) as err:
        checks.class_labels(model, ["dog"], 64)
    message = err.value.message
    assert message.startswith("Unknown class 'dog'; this model knows: 0, 1, 2")
    assert len(message) <= checks.LONGEST_MESSAGE + 4 and message.endswith(" ...") and "\n" not in message


def test_slerp_keeps_the_norm_of_equal_norm_latents():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 4, generator=g)
    b = torch.randn(16, 4, generator=g)
    b = b * a.norm() / b.norm()
    mid = slerp(a, b, 0.5)
    assert float(mid.norm()) == pytest.approx(float(a.norm()), rel=1e-5)
    assert float(torch.lerp(a, b, 0.5).norm()) < 0.9 * float(a.norm())
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)


def test_drawing_becomes_a_file_and_blank_canvas_is_refused(tiny):
    canvas = np.zeros((64, 64, 4), np.uint8)
    with pytest.raises(gr.Error, match="draw something first|canvas is empty"):
        invert.drawing_to_file({"composite": canvas, "background": None, "layers": []})
    canvas[20:44, 30:34] = (0, 0, 0, 255)
    path = invert.drawing_to_file({"composite": canvas, "background": None, "layers": []})
    with Image.open(path) as img:
        assert img.size == (64, 64)
    out = invert.invert("tiny-cond", path, "auto", "float32", progress=noop)
    assert recon_error(out[4]) < 1e-4
    with pytest.raises(gr.Error, match="draw something first"):
        invert.drawing_to_file(None)


# ---------------------------------------------------------------------------------------------- models


def test_model_info_sets_controls_for_the_model(tiny):
    card, classes, guidance, kind, attn, sigma, denoise, num, condition, interp, noise, temp = \
        picker.model_info("tiny-cond", None)
    assert "3 classes" in card and "8×8 grey" in card
    assert classes["choices"] == TINY_CLASSES and classes["interactive"]
    assert set(classes["value"]) <= set(TINY_CLASSES) and len(classes["value"]) == 2
    assert guidance["value"] == 1.0 and kind["value"] == "class" and sigma["value"] == 0.1
    assert noise["value"] and "σ = 0.1" in noise["label"]
    assert temp["value"] == 0.9  # the model's recommended prior temperature
    card, classes, _, kind, attn, *_ = picker.model_info("tiny-rgb", None)
    assert "unconditional" in card
    assert classes["value"] == [] and not classes["interactive"]
    assert kind["value"] == "attention" and attn["value"] == 1.5


def test_discovery_reads_the_models_folder(tiny):
    keys = [e.key for e in models.discover()]
    assert "tiny-cond" in keys and "tiny-rgb" in keys
    assert models.resolve("tiny-cond").source == str(tiny / "tiny-cond")
    listed = [e.key for e in models.entries()]
    assert any(k.endswith("imagenet64_model_2_768_8_8_0.05.pth") for k in listed)
    assert any(k.startswith("https://ml-site.cdn-apple.com/") for k in listed)


def test_models_load_once(tiny):
    assert models.MODELS.get("tiny-cond") is models.MODELS.get("tiny-cond")
    assert models.MODELS.get("tiny-cond", dtype=torch.float64).blocks[0].proj_in.weight.dtype == torch.float64


def test_remote_models_fail_fast_and_clearly_offline(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("encoreus/Transformer_Autoregressive_Flow/imagenet64_model_2_768_8_8_0.05.pth",
                "someone/some-model"):
        with pytest.raises(models.ModelLoadError, match="offline"):
            models.MODELS.get(key)
    url = models.CATALOGUE[-1].key
    monkeypatch.setenv("TARFLOW_CACHE", str(tiny / "cache"))
    with pytest.raises(models.ModelLoadError, match="offline mode"):
        models.MODELS.get(url)
    with pytest.raises(models.ModelLoadError, match="only the listed URLs"):
        models.resolve("https://example.com/other.pth")


def test_local_paths_are_refused_on_a_public_space(tiny, monkeypatch):
    assert models.resolve(str(tiny / "tiny-cond")).source == str(tiny / "tiny-cond")
    monkeypatch.setenv("SPACE_ID", "someone/tarflow")
    with pytest.raises(models.ModelLoadError, match="local paths are disabled"):
        models.resolve(str(tiny / "tiny-cond"))
    assert models.resolve("tiny-cond").key == "tiny-cond"  # listed models still work


# ---------------------------------------------------------------------------------------------- inputs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is tiny: opening it must not
    allocate the full bitmap."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _drawing(mode: str, size=(40, 30)) -> Image.Image:
    img = Image.new("RGBA", size, (255, 255, 255, 0))
    ImageDraw.Draw(img).ellipse((8, 5, 30, 25), fill=(200, 30, 30, 255))
    if mode == "RGBA":
        return img
    if mode == "P":
        p = img.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=8)
        p.info["transparency"] = 0
        return p
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        return Image.fromarray(arr)
    if mode == "F":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.float32) / 255.0, mode="F")
    return img.convert(mode)


@pytest.mark.parametrize("mode, ext, note", [
    ("RGBA", "png", "transparency composited on white"),
    ("LA", "png", "transparency composited on white"),
    ("P", "png", "palette"),
    ("I;16", "png", "16-bit"),
    ("F", "tiff", "32-bit float"),
    ("CMYK", "jpg", "CMYK"),
    ("1", "png", None),
    ("L", "png", None),
    ("RGB", "webp", None),
])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_image_mode_fits_any_model(tmp_path, mode, ext, note, channels):
    path = tmp_path / f"img.{ext}"
    _drawing(mode).save(path)
    fitted = inputs.load_fitted(path, 8, channels, "tiny")
    assert fitted.array.shape == (8, 8, channels) and fitted.array.dtype == np.uint8
    assert fitted.array.std() > 0  # the shape survived
    if note:
        assert any(note in n for n in fitted.notes), fitted.notes
    assert fitted.steps[0][0] == "input 40×30"


def test_non_images_and_damaged_images_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(inputs.BadImage, match="not an image"):
        inputs.open_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(inputs.BadImage, match="not an image"):
        inputs.open_image(empty)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(inputs.BadImage, match="damaged or truncated"):
        inputs.open_image(cut)


@pytest.mark.parametrize("side, message", [(20000, "far too large"), (7000, "megapixels")])
def test_huge_images_are_refused_before_decoding(tmp_path, side, message):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(inputs.BadImage, match=message):
        inputs.open_image(path)


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), (10, 200, 30)).save(path)
    monkeypatch.setattr(inputs, "MAX_PIXELS", 100_000)  # 800 x 600 counts as huge here
    img, notes = inputs.open_image(path)
    assert img.size[0] * img.size[1] <= 100_000
    assert any("reduced size" in n for n in notes)


def test_fit_matches_mnist_polarity_and_framing(tmp_path):
    # a dark stroke on a big white canvas, as drawn in the sketchpad
    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).line((150, 60, 150, 240), fill=0, width=24)
    fitted = inputs.fit(img, 28, 1, "mnist")
    labels = [s[0] for s in fitted.steps]
    assert "colours inverted" in labels and "cropped to content" in labels and labels[-1] == "resized 28×28"
    arr = fitted.array[..., 0]
    assert arr[0].max() < 30 and arr[:, 0].max() < 30  # dark background, like MNIST
    assert arr[14, 14] > 150  # the stroke is bright and centred
    assert (arr > 100).any(axis=1).sum() <= 22  # framed with a margin (MNIST digits span 20 of 28 rows)


def test_fit_centre_crops_photos_and_keeps_exact_sized_images():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    fitted = inputs.fit(photo, 8, 3, "")
    assert [s[0] for s in fitted.steps] == ["input 100×60", "centre crop", "resized 8×8"]
    exact = Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L")
    same = inputs.fit(exact, 8, 1, "")
    assert np.array_equal(same.array[..., 0], np.asarray(exact))


# ---------------------------------------------------------------------------------------------- render


def test_grid_clicks_map_back_to_images():
    images = (np.random.default_rng(0).random((7, 8, 8, 1)) * 255).astype(np.uint8)
    layout = render.plain_layout(7)
    scale = render.display_scale(layout.cols * 10 + 2)
    grid = render.layout_grid(images, layout, scale)
    assert grid.shape == ((math.ceil(7 / layout.cols) * 10 + 2) * scale, (layout.cols * 10 + 2) * scale)
    for i in range(7):
        r, c = divmod(i, layout.cols)
        x, y = (2 + c * 10 + 4) * scale, (2 + r * 10 + 4) * scale
        assert render.layout_index(x, y, layout, 8, scale) == i
    assert render.layout_index(0, 0, layout, 8, scale) is None
    assert render.layout_index((2 + 2 * 10 + 4) * scale, (2 + 2 * 10 + 4) * scale, layout, 8, scale) is None


def test_one_row_per_class_names_the_rows_and_frames_the_inspected_image():
    labels = [0, 2, 0, 2, 0, -1]
    layout = render.class_layout(labels, TINY_CLASSES)
    assert layout.cols == 3 and layout.rows == 3
    assert [layout.cells[i] for i in (0, 2, 4)] == [(0, 0), (0, 1), (0, 2)]  # circles, in order, first row
    assert [layout.cells[i] for i in (1, 3)] == [(1, 0), (1, 1)] and layout.cells[5] == (2, 0)
    assert layout.row_names == ((0, "circle"), (1, "star"), (2, "no label"))
    images = np.zeros((6, 8, 8, 1), np.uint8)
    plain = render.layout_grid(images, layout, 4, margin=0)
    framed = render.layout_grid(images, layout, 4, highlight=3)
    margin = render.label_margin(layout)
    assert plain.ndim == 2 and framed.shape == (plain.shape[0], margin + plain.shape[1], 3)
    # the frame sits in the gutter around image 4 (row 1, column 1) in the accent colour
    x0, y0 = margin + 1 * 10 * 4, 1 * 10 * 4
    assert tuple(framed[y0 + 20, x0]) == (0x6D, 0x28, 0xD9)
    assert tuple(framed[y0 + 20, x0 + 10 * 4 + 10]) != (0x6D, 0x28, 0xD9)
    # the names are drawn in the margin (dark text on white)
    assert framed[:, :margin].min() < 128
    assert render.layout_index(margin + (2 + 10 + 1) * 4, (2 + 10 + 1) * 4, layout, 8, 4, margin=margin) == 3
    assert render.class_layout([-1, -1], TINY_CLASSES) == render.plain_layout(2)


def test_grids_are_crisp_nearest_neighbour_enlargements():
    images = (np.random.default_rng(1).random((4, 8, 8, 3)) * 255).astype(np.uint8)
    layout = render.plain_layout(4)
    scale = render.display_scale(layout.cols * 10 + 2)
    grid = render.layout_grid(images, layout, scale)
    native = render.layout_grid(images, layout, 1)
    assert np.array_equal(grid[::scale, ::scale], native)
    assert render.display_scale(28 * 4) == 5 and render.display_scale(10_000) == 1
