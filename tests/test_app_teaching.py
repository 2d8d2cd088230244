"""The app's teaching features, called directly: honest classification (calibration, margins,
out-of-distribution note), per-model examples and default classes, failed runs and failed picks,
guidance warnings, the recorded frames (player, animation), comparisons, sending images on."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from app_models import TINY_CLASSES, noop
from PIL import Image

from app import models, picker, runs
from app.inputs import load_fitted, to_model
from app.tabs import compare, generate, invert, replay
from tarflow.calibration import Calibration
from tarflow.heldout import HeldOutRange
from tarflow.likelihood import class_log_likelihoods
from tarflow.sampling import SampleSettings, sample, to_uint8

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
pytestmark = pytest.mark.filterwarnings("ignore:These samples are measurably off")


@pytest.fixture
def measured(tiny):
    """tiny-cond with a calibration.json (T = 7) and a narrow heldout.json, removed afterwards."""
    folder = tiny / "tiny-cond"
    Calibration(temperature=7.0, accuracy=0.61, balanced_accuracy=0.55, ece_before=0.3, ece_after=0.05,
                mean_confidence_before=0.99, mean_confidence_after=0.6, images=300, noise_draws=0).save(folder)
    HeldOutRange.measure(torch.linspace(1.0, 1.1, 101, dtype=torch.float64), "tiny").save(folder)
    yield folder
    for name in ("calibration.json", "heldout.json"):
        (folder / name).unlink(missing_ok=True)


def gen(**over):
    args = dict(model_key="tiny-cond", classes=["star", "circle"], num=6, seed=0, guidance=1.0, kind="class",
                attn_temp=1.0, annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False,
                rows_by_class=True, decode="sequential")
    args.update(over)
    return list(generate.generate(**args, progress=noop))


# ------------------------------------------------------------------------- Fix 1, 2: classification, examples


def test_the_posterior_is_calibrated_with_the_stored_temperature_and_says_how_often_it_is_right(measured):
    out = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float32", False, progress=noop)
    caption = out[8]
    model = models.MODELS.get("tiny-cond")
    fitted = load_fitted(EXAMPLES / "mnist-3.png", 8, 1, "tiny")
    with torch.no_grad():
        ll = class_log_likelihoods(model, to_model(fitted.array, model))[0].double()
    calibrated = torch.softmax(ll / 7.0, 0)
    raw = torch.softmax(ll, 0)
    best = int(calibrated.argmax())
    assert f"Most likely: **{TINY_CLASSES[best]}**" in caption
    assert f"Shown: {float(calibrated[best]):.1%}, calibrated" in caption
    assert f"would say {float(raw[best]):.1%}" in caption
    assert "right **61.0%**" in caption and "55.0% averaged over classes" in caption
    assert "0.300 raw, 0.050 calibrated" in caption
    behind = (ll.max() - ll.sort(descending=True).values[1]) / np.log(2)
    assert f"{float(behind):.1f} bits behind" in caption


def test_a_calibration_measured_on_moved_copies_is_applied_the_same_way(measured):
    """calibration.json with shifts=1: the app scores the image as the mean over it and its eight
    one-pixel moves (what the stated accuracy was measured on) and says so."""
    from tarflow.calibration import shift_offsets, shifted

    cal = Calibration.load(measured)
    cal.shifts = 1
    cal.save(measured)
    caption = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float32", False, progress=noop)[8]
    model = models.MODELS.get("tiny-cond")
    x = to_model(load_fitted(EXAMPLES / "mnist-3.png", 8, 1, "tiny").array, model)
    with torch.no_grad():
        ll = torch.stack([class_log_likelihoods(model, shifted(x, dy, dx))[0].double()
                          for dy, dx in shift_offsets(1)]).mean(0)
    calibrated = torch.softmax(ll / 7.0, 0)
    best = int(calibrated.argmax())
    assert f"Most likely: **{TINY_CLASSES[best]}**" in caption
    assert f"Shown: {float(calibrated[best]):.1%}, calibrated" in caption
    assert "mean log-likelihood of the image and its 8 copies moved by up to 1 pixel" in caption


def test_with_noise_added_the_caption_says_the_classes_score_the_clean_image(measured):
    caption = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float32", True, progress=noop)[8]
    assert "(of the image without the added noise)" in caption


def test_a_calibration_measured_on_noisy_copies_is_applied_the_same_way(measured):
    """calibration.json with noise_draws=3: the app scores the image as the mean over three copies
    with the training noise added (the draws the stated accuracy was measured on) and says so."""
    cal = Calibration.load(measured)
    cal.noise_draws = 3
    cal.save(measured)
    caption = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float32", True, progress=noop)[8]
    model = models.MODELS.get("tiny-cond")
    assert model.noise_std > 0
    x = to_model(load_fitted(EXAMPLES / "mnist-3.png", 8, 1, "tiny").array, model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ll = torch.stack([class_log_likelihoods(model, x + model.noise_std * torch.randn(x.shape, generator=g))[0]
                          .double() for _ in range(3)]).mean(0)
    calibrated = torch.softmax(ll / 7.0, 0)
    best = int(calibrated.argmax())
    assert f"Most likely: **{TINY_CLASSES[best]}**" in caption
    assert f"Shown: {float(calibrated[best]):.1%}, calibrated" in caption
    assert f"mean log-likelihood of 3 copies of the image with the training noise (sigma {model.noise_std:g})" \
        in caption
    assert "without the added noise" not in caption  # scored on its own noisy copies, whatever is shown


def test_without_a_calibration_the_caption_says_so(tiny):
    caption = invert.invert("tiny-cond", str(EXAMPLES / "mnist-3.png"), "auto", "float32", False, progress=noop)[8]
    assert "Not calibrated" in caption and "margins in bits" in caption


def test_an_image_far_from_the_held_out_range_gets_an_out_of_distribution_note(measured):
    out = invert.invert("tiny-cond", str(EXAMPLES / "emoji-smileys-emotion.png"), "auto", "float32", False,
                        progress=noop)
    assert out[8].startswith("**Out of distribution**")
    assert "unlike the model's data" in out[6] and "1.00-1.10 (1st-99th percentile" in out[6]


def test_the_bundled_mnist_classifier_reports_its_measured_accuracy_and_flags_an_emoji():
    digit = invert.invert("mnist", str(EXAMPLES / "mnist-2.png"), "auto", "float32", False, progress=noop)
    measured = Calibration.load(ROOT / "checkpoints" / "mnist")  # the number the card and calibration.json state
    assert f"right **{measured.accuracy:.1%}**" in digit[8] and "calibrated" in digit[8]
    assert "Typical" in digit[6]
    heart = invert.invert("mnist", str(EXAMPLES / "emoji-smileys-emotion.png"), "auto", "float32", False,
                          progress=noop)
    assert heart[8].startswith("**Out of distribution**")


def test_examples_follow_the_models_dataset(tiny):
    mnist_files, heading = picker.examples_for(models.MODELS.get("mnist"))
    assert mnist_files and all(Path(f).name.startswith("mnist-") for f in mnist_files)
    assert "mnist" in heading
    emoji_files, _ = picker.examples_for(models.MODELS.get("emoji"))
    assert emoji_files and all(Path(f).name.startswith("emoji-") for f in emoji_files)
    other, heading = picker.examples_for(models.MODELS.get("tiny-cond"))
    assert len(other) == len(list(EXAMPLES.glob("*.png"))) and "other datasets" in heading
    assert [Path(p).name for p in picker.pairs_for(models.MODELS.get("mnist"))[0]] == ["mnist-3.png", "mnist-7.png"]
    _, examples, pairs = picker.picked("emoji")
    assert all("emoji-" in s[0] for s in examples.raw_samples) and len(pairs.raw_samples) == 1


# ------------------------------------------------------------------------- Fix 3, 6: defaults, failed picks


def test_default_classes_come_from_the_card(tiny, tmp_path):
    emoji = models.MODELS.get("emoji")
    assert picker.default_classes(emoji) == ["Smileys & Emotion", "People & Body", "Symbols", "Flags"]
    assert picker.model_info("emoji", None)[1]["value"] == picker.default_classes(emoji)
    model = models.MODELS.get("tiny-cond")
    model.sampling["classes"] = ["unicorn", "star"]  # unknown names are ignored
    try:
        assert picker.default_classes(model) == ["star"]
    finally:
        model.sampling.pop("classes")
    assert picker.default_classes(model) == ["square", "star"]  # spread over the list


@pytest.mark.parametrize("typed", ["asdf qwerty", "a" * 300, "what?!", "http://example.com/x.pth"])
def test_text_that_names_no_model_gets_one_line(tiny, typed):
    with pytest.raises(gr.Error) as err:
        picker.model_info(typed, None)
    message = err.value.message
    assert "\n" not in message and len(message) < 220 and "HFValidationError" not in message
    assert picker.back_to("mnist") == "mnist"


def test_model_folder_is_known_for_local_models_only(tiny):
    assert models.model_folder("mnist") == ROOT / "checkpoints" / "mnist"
    assert models.model_folder("tiny-cond") == tiny / "tiny-cond"
    assert models.model_folder("owner/repo") is None and models.model_folder("asdf qwerty") is None


# ------------------------------------------------------------------------- Fix 4, 7, 8: runs


def test_a_failed_run_clears_every_panel_and_keeps_the_reason(tiny):
    outs = []
    with pytest.raises(gr.Error) as err:
        for out in generate.generate(**{**dict(model_key="tiny-cond", classes=["square"], num=4, seed=0,
                                               guidance=generate.MAX_GUIDANCE, kind="class", attn_temp=1.0,
                                               annealed=False, guide_what="ab", temperature=1.0, denoise=True,
                                               sigma=0.1)}, progress=noop):
            outs.append(out)
    last = outs[-1]
    assert len(last) == generate.NUM_OUTPUTS
    assert last[1] == f"**Failed** · {err.value.message}" and "Lower the guidance" in last[1]
    assert last[0] is None and last[2] is None and last[3] is None and last[4] is None and last[5] == ""
    assert last[7] == "" and not last[6]["interactive"] and not last[8]["visible"]
    # the first streamed frame already emptied what an earlier run had left
    assert outs[0][2] is None and outs[0][7] == ""
    with pytest.raises(gr.Error):  # a bad input fails the same way, before any sampling
        outs = []
        for out in generate.generate("tiny-cond", ["unicorn"], 2, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1,
                                     progress=noop):
            outs.append(out)
    assert outs[-1][1].startswith("**Failed** · Unknown class")


def test_one_image_hides_the_inspect_slider_and_says_one_image(tiny):
    final = gen(num=1)[-1]
    assert "1 image in" in final[1] and "1 images" not in final[1]
    assert final[8]["visible"] is False
    with pytest.raises(gr.Error, match="between 1 and 1"):
        generate.inspect(final[7], 2)


def test_strong_guidance_warns_with_the_measured_numbers_and_why(measured):
    with pytest.warns(UserWarning, match="measurably off") as caught:
        gen(guidance=4.0)
    text = str(caught[0].message)
    assert re.search(r"median is [\d.]+ bits/dim, above 99% of this model's held-out images \(1.00-1.10\)", text)
    assert "extrapolates" in text and "Lower the guidance" in text


# ------------------------------------------------------------------------- the recorded frames


def test_frames_are_uint8_bounded_and_include_every_block_end(tiny, monkeypatch):
    model = models.MODELS.get("tiny-cond")
    final = gen(num=6)[-1]
    run = runs.RUNS.get(final[7])
    assert all(f.dtype == np.uint8 and f.shape == (6, 8, 8, 1) for f in run.frames)
    assert [i.stage for i in run.frame_info if i.block_done] == [0, 1, 2] and len(run.stages) == 3
    assert len(run.frames) > 2 * 3  # tokens within blocks too
    # the last frame is the raw sample; block ends equal what the sampler returns
    settings = SampleSettings(num=6, classes=[2, 0], seed=0, guidance=1.0, temperature=1.0, sigma=0.1)
    assert np.array_equal(run.frames[-1], to_uint8(sample(model, settings).raw).numpy())
    monkeypatch.setattr(generate, "FRAME_BYTES", 6 * 64 * 5)  # room for 5 frames of this batch
    small = runs.RUNS.get(gen(num=6)[-1][7])
    assert len(small.frames) <= 5 and [i.stage for i in small.frame_info if i.block_done] == [0, 1, 2]
    assert generate.record_every(model, 64) >= 1


def test_the_player_steps_and_plays_recorded_frames(tiny):
    final = gen(num=4)[-1]
    run_id, n = final[7], len(runs.RUNS.get(final[7]).frames)
    view, caption = replay.frame(run_id, 2, 0)
    assert caption.startswith(f"**Frame 1 of {n}** · the prior sample z") and view.shape == (224, 224)
    assert np.array_equal(view[::28, ::28], runs.RUNS.get(run_id).frames[0][1, ..., 0])
    assert replay.step(run_id, 2, 0, -1)[0] == 0 and replay.step(run_id, 2, n - 1, 1)[0] == n - 1
    assert replay.step(run_id, 2, 3, 1)[0] == 4
    assert "block 2/2 · token 16/16 (the flow's output x)" in replay.frame(run_id, 2, n - 1)[1]
    played = list(replay.play(run_id, 2, n - 1))  # at the end: plays from the start
    assert [p[0] for p in played] == list(range(n))
    with pytest.raises(gr.Error, match="Frame must be between 0"):
        replay.frame(run_id, 2, n)


def test_the_animation_is_a_gif_of_every_frame(tiny):
    final = gen(num=6)[-1]
    run = runs.RUNS.get(final[7])
    path = replay.animation(final[7])
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == len(run.frames) and gif.info.get("loop") == 0
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("L"))
        gif.seek(0)
        first = np.asarray(gif.convert("L"))
    assert not np.array_equal(first, last)
    assert Path(path).parent == run.folder


def test_the_mp4_has_every_frame_with_the_gifs_timing(tiny):
    """Decoded back with PyAV: one video frame per recorded frame plus the held last one, the
    GIF's durations as timestamps, and the last frame's picture equal to the GIF's up to H.264."""
    import av

    final = gen(num=6)[-1]
    run = runs.RUNS.get(final[7])
    path = replay.animation(final[7], "mp4")
    assert path.endswith(".mp4") and Path(path).parent == run.folder
    with av.open(path) as video:
        frames = list(video.decode(video=0))
    assert len(frames) == len(run.frames) + 1
    times = np.array([float(f.time) for f in frames])
    with Image.open(replay.animation(final[7])) as gif:
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("RGB")).astype(float)
    assert np.allclose(np.diff(times), np.array(durations) / 1000, atol=2e-3)
    picture = frames[-1].to_ndarray(format="rgb24").astype(float)[: last.shape[0], : last.shape[1]]
    assert np.abs(picture - last).mean() < 4  # the same picture, up to lossy coding
    with pytest.raises(gr.Error, match="'gif' or 'mp4'"):
        replay.animation(final[7], "avi")


def test_sending_an_image_on_writes_it_once(tiny):
    run = runs.RUNS.get(gen(num=3)[-1][7])
    path = generate.image_file(run, 1)
    with Image.open(path) as img:
        assert img.size == (256, 256)
        assert np.array_equal(np.asarray(img)[::32, ::32], to_uint8(run.images[1:2]).numpy()[0, ..., 0])
    assert generate.image_file(run, 1) == path


# ------------------------------------------------------------------------- comparisons


def test_each_column_is_what_generate_draws_with_that_setting_from_the_same_noise(tiny):
    model = models.MODELS.get("tiny-cond")
    base = generate._settings(model, ["star"], 3, 5, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1)
    heads = ["w = 0", "w = 2"]
    columns = [(h, None) for h in heads]
    events = list(compare.sweep_columns(model, base, "guidance", [0.0, 2.0], heads, columns))
    assert [k for k, what in events if what == "done"] == [0, 1]
    for (_, images), w in zip(columns, (0.0, 2.0)):
        ref = sample(model, SampleSettings(num=3, classes=[2], seed=5, guidance=w, temperature=1.0, sigma=0.1))
        assert np.array_equal(images, to_uint8(ref.images).numpy())
    outs = list(compare.compare("tiny-cond", ["star"], 3, 5, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1,
                                "temperature", "0.5, 1", progress=noop))
    assert outs[-1][1].startswith("**Done** · 2 columns (2 drawn) × 3 rows")
    assert Path(outs[-1][2]["value"]).is_file()


def test_an_overflowing_column_is_labelled_and_the_others_are_drawn(tiny):
    outs = list(compare.compare("tiny-cond", ["square"], 2, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1,
                                "guidance", f"0, {generate.MAX_GUIDANCE:g}", progress=noop))
    assert "2 columns (1 drawn)" in outs[-1][1]
    assert any("overflowed" in o[1] for o in outs)


@pytest.mark.parametrize("sweep, values, message", [
    ("guidance", "1, x", "Guidance scale must be a number"),
    ("temperature", "0", "Prior temperature must be between"),
    ("guidance", "0, 1, 2, 3, 4, 5, 6", "Compare 1 to 6 values"),
    ("class", "unicorn", "Unknown class"),
    ("bogus", "", "Sweep must be one of"),
])
def test_bad_comparisons_are_refused(tiny, sweep, values, message):
    with pytest.raises(gr.Error, match=re.escape(message)):
        list(compare.compare("tiny-cond", ["star"], 2, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1, sweep,
                             values, progress=noop))


def test_class_and_denoise_sweeps(tiny):
    model = models.MODELS.get("tiny-cond")
    base = generate._settings(model, ["star"], 2, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1)
    columns = [("raw", None), ("denoised", None)]
    list(compare.sweep_columns(model, base, "denoise", [False, True], ["raw", "denoised"], columns))
    ref = sample(model, SampleSettings(num=2, classes=[2], seed=0, guidance=1.0, temperature=1.0, sigma=0.1))
    assert np.array_equal(columns[0][1], to_uint8(ref.raw).numpy())
    assert np.array_equal(columns[1][1], to_uint8(ref.images).numpy())
    assert compare._values(model, "class", "", ["star", "circle"]) == [2, 0]
