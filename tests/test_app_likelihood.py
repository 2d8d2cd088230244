"""The Likelihood tab's handlers, called directly on tiny models and fabricated datasets: the
out-of-distribution view, the bits split, refill and repair (kept pixels bit-exact), and every
bad mask or setting answered with one clear sentence."""

from __future__ import annotations

import re

import gradio as gr
import numpy as np
import pytest
from app_models import make_tiny_datasets, make_tiny_models, noop
from PIL import Image

from app import oodcache
from app.tabs import likelihood


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models, fabricated datasets, a private cache, and 10 images per set."""
    root = tmp_path_factory.mktemp("likelihood")
    make_tiny_models(root / "models")
    make_tiny_datasets(root / "data")
    mp = pytest.MonkeyPatch()
    mp.setenv("TARFLOW_MODELS_DIR", str(root / "models"))
    mp.setenv("TARFLOW_DATA_DIR", str(root / "data"))
    mp.setenv("TARFLOW_CACHE", str(root / "cache"))
    mp.setattr(oodcache, "PER_SET", 10)
    mp.setattr(oodcache, "_memory", {})
    yield root
    mp.undo()


def png(path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture()
def grey(env, tmp_path) -> tuple[str, np.ndarray]:
    arr = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    arr[0, :] = 0  # a dark border, like the tiny models' own data: fitting keeps every pixel
    return png(tmp_path / "grey.png", arr), arr


def mask_file(path, size: int, box: tuple[int, int, int, int] | None, alpha: bool = True) -> dict:
    """An editor value whose one layer paints ``box`` (x0, y0, x1, y1) on a transparent canvas."""
    layer = np.zeros((size, size, 4), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        layer[y0:y1, x0:x1] = (217, 70, 239, 255)
    img = Image.fromarray(layer, "RGBA") if alpha else Image.fromarray(layer[..., :3])
    img.save(path)
    return {"background": None, "layers": [str(path)], "composite": None}


def last(gen):
    *_, final = gen
    return final


def test_ood_view_draws_histograms_and_a_table(env, grey):
    figure, table = likelihood.ood_view("tiny-cond", None, progress=noop)
    assert figure.ndim == 3 and figure.std() > 10
    for name in ("held-out", "mnist", "emoji", "samples", "upside down", "inverted", "constant", "noise"):
        assert f"| {name} | " in table
    assert "fashion-mnist: not prepared here" in table
    assert table.startswith("10 images per set.")
    auroc = float(re.search(r"\| noise \| [\d.]+ \| ([\d.]+) \|", table).group(1))
    found = oodcache.cached(likelihood.checks.load_model("tiny-cond"))
    assert auroc == pytest.approx(found.auroc("noise"), abs=5e-4)
    # with an image: its bits/dim is marked and compared with the held-out images
    _, table = likelihood.ood_view("tiny-cond", grey[0], progress=noop)
    assert re.search(r"\*\*Your image: [\d.]+ bits/dim\*\*, (more|less) than (\d+% of|every one of)", table)


def test_bits_split_sums_and_shows_the_held_out_average(env, grey):
    likelihood.ood_view("tiny-cond", None, progress=noop)  # the average comes from the cached table
    bars, heat, caption = likelihood.bits_split("tiny-cond", grey[0], "star", progress=noop)
    assert bars.std() > 10 and heat.std() > 10
    total = float(re.search(r"\*\*([\d.]+) bits/dim\*\*", caption).group(1))
    terms = re.sub(r"\([^)]*\)", "", caption.split("=", 1)[1].split("(each block")[0])
    numbers = [float(v) for v in re.findall(r"[+-]?\d+\.\d+", terms)]
    assert len(numbers) == 2 + 2  # bins, prior, two blocks
    assert sum(numbers) == pytest.approx(total, abs=0.02)
    assert "held-out average appears" not in caption


def test_refill_streams_and_keeps_every_kept_pixel(env, grey, tmp_path):
    path, arr = grey
    editor = mask_file(tmp_path / "mask.png", 336, (0, 0, 336, 168))  # the top half painted
    outputs = list(likelihood.refill("tiny-cond", path, editor, "painted", "circle", "samples", 10, 3, progress=noop))
    assert len(outputs) >= 3 and outputs[0][1].startswith("**Step")
    figure, status, result = outputs[-1]
    assert status.startswith("**Done**") and "before →" in status and "class circle" in status
    out = np.asarray(Image.open(result["value"]))
    assert out.shape == arr.shape
    assert np.array_equal(out[4:], arr[4:])  # kept: bit for bit
    assert not np.array_equal(out[:4], arr[:4])  # refilled
    for preset in ("bottom", "left", "centre", "patches"):
        figure, status, result = last(likelihood.refill("tiny-rgb", path, None, preset, None, "noise", 3, 0,
                                                        progress=noop))
        assert status.startswith("**Done**") and "no label" in status


def test_repair_streams_a_repaired_image(env, grey):
    for damage, strength in (("noise", 0.5), ("blur", 1.5)):
        outputs = list(likelihood.repair("tiny-cond", grey[0], damage, strength, "none", 4, 0, progress=noop))
        figure, status, result = outputs[-1]
        assert status.startswith("**Done**") and np.asarray(Image.open(result["value"])).shape == (8, 8)


@pytest.mark.parametrize("editor, message", [
    (None, "Nothing is painted"),
    ({"background": None, "layers": [], "composite": None}, "Nothing is painted"),
    ("empty", "Nothing is painted"),
    ("all", "Everything is erased"),
    ("wide", "must be square"),
    ("text", "not an image that can be read"),
])
def test_bad_masks_get_one_clear_sentence(env, grey, tmp_path, editor, message):
    if editor == "empty":
        editor = mask_file(tmp_path / "m.png", 336, None)
    elif editor == "all":
        editor = mask_file(tmp_path / "m.png", 336, (0, 0, 336, 336))
    elif editor == "wide":
        Image.new("RGBA", (300, 200)).save(tmp_path / "m.png")
        editor = {"background": None, "layers": [str(tmp_path / "m.png")], "composite": None}
    elif editor == "text":
        (tmp_path / "m.png").write_text("not a picture")
        editor = {"background": None, "layers": [str(tmp_path / "m.png")], "composite": None}
    with pytest.raises(gr.Error, match=message) as err:
        list(likelihood.refill("tiny-cond", grey[0], editor, "painted", None, "samples", 5, 0, progress=noop))
    assert "\n" not in err.value.message


def test_an_opaque_mask_image_reads_white_as_erased(env, grey, tmp_path):
    editor = mask_file(tmp_path / "m.png", 80, None, alpha=False)
    layer = np.zeros((80, 80, 3), np.uint8)
    layer[:, 40:] = 255
    Image.fromarray(layer).save(tmp_path / "m.png")
    mask = likelihood.painted_mask(editor, 8)
    assert mask[:, 4:].all() and not mask[:, :4].any()


@pytest.mark.parametrize("call, message", [
    (lambda p: list(likelihood.refill("tiny-cond", p, None, "bottom", None, "samples", 0, 0, progress=noop)),
     "Steps must be between 1 and 200"),
    (lambda p: list(likelihood.refill("tiny-cond", p, None, "bottom", None, "samples", 500, 0, progress=noop)),
     "Steps must be between"),
    (lambda p: list(likelihood.refill("tiny-cond", p, None, "diagonal", None, "samples", 5, 0, progress=noop)),
     "Mask must be one of"),
    (lambda p: list(likelihood.refill("tiny-cond", p, None, "bottom", "dragon", "samples", 5, 0, progress=noop)),
     "Unknown class"),
    (lambda p: list(likelihood.refill("tiny-cond", None, None, "bottom", None, "samples", 5, 0, progress=noop)),
     "Upload, draw or pick an image first"),
    (lambda p: list(likelihood.repair("tiny-cond", p, "noise", 3.0, None, 5, 0, progress=noop)),
     "Strength must be between 0 and 1"),
    (lambda p: list(likelihood.repair("tiny-cond", p, "jpeg", 0.5, None, 5, 0, progress=noop)),
     "Damage must be one of"),
    (lambda p: likelihood.bits_split("no-such-model", p, None, progress=noop), "Could not load the model"),
])
def test_bad_settings_get_one_clear_sentence(env, grey, call, message):
    with pytest.raises(gr.Error, match=message):
        call(grey[0])


def test_work_per_request_is_bounded(env, grey, monkeypatch):
    # 16 tokens x ~18k parameters: 3 passes per step, 16 for the 8 samples
    per_pass = 16 * sum(p.numel() for p in likelihood.checks.load_model("tiny-cond").parameters())
    monkeypatch.setenv("TARFLOW_MAX_WORK", str(per_pass * (16 + 3 * 10)))
    with pytest.raises(gr.Error, match=r"Inpainting is limited to 10 steps with this model .* \(asked for 11\)"):
        list(likelihood.refill("tiny-cond", grey[0], None, "bottom", None, "samples", 11, 0, progress=noop))
    assert last(likelihood.refill("tiny-cond", grey[0], None, "bottom", None, "samples", 10, 0, progress=noop))
    monkeypatch.setenv("TARFLOW_MAX_WORK", "10")
    with pytest.raises(gr.Error, match="too large for repair"):
        list(likelihood.repair("tiny-cond", grey[0], "noise", 0.5, None, 1, 0, progress=noop))
    with pytest.raises(gr.Error, match="Scoring 90 images is more than this server allows"):
        likelihood.ood_view("tiny-rgb", None, progress=noop)  # never computed for this model


def test_editor_background_and_a_drawn_sample(env, grey):
    value = likelihood.to_editor("tiny-cond", grey[0])
    big = np.asarray(Image.open(value["background"]).convert("L"))
    assert big.shape == (336, 336) and np.array_equal(big[::42, ::42], grey[1])
    path = likelihood.draw_sample("tiny-cond", "square", 4)
    assert np.asarray(Image.open(path)).shape == (8, 8)
    update = likelihood.on_model("tiny-rgb")[0]
    assert update["choices"] == [("No label", "none")] and update["interactive"] is False


def test_the_outline_lies_inside_the_refilled_region():
    from app import likelihood_plots as plots
    from app.render import enlarge

    arr = np.full((8, 8, 1), 7, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[4:, 2:6] = True
    big = plots.outlined(arr, mask, 3)
    painted = (big == plots.HOLE).all(axis=2)
    inside = enlarge(mask.astype(np.uint8), 3).astype(bool)
    assert not (painted & ~inside).any()  # no kept pixel is covered
    assert (big[~inside] == 7).all()
    assert painted[12, 6:18].all() and painted[12:, 6].all() and painted[-1, 6:18].all()  # top, left, image edge
    assert not painted[15, 9]  # the middle stays visible
    hole = plots.with_hole(arr, mask, 2)
    assert hole.shape == (16, 16, 3) and (hole[8:, 4:12] == plots.HOLE).all() and (hole[:8] == 7).all()
