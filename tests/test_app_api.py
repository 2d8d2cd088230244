"""Every public endpoint through gradio_client, against ``python app.py`` on a free local port."""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from app_models import TINY_CLASSES
from app_server import ROOT, start_app
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples"
NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
GENERATE = dict(model_key="tiny-cond", classes=["star", "circle"], num=6, seed=0, guidance=1.0, kind="class",
                attn_temp=1.0, annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False,
                rows_by_class=True, decode="sequential")


def generate_args(**over) -> list:
    return list({**GENERATE, **over}.values())


def png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_the_api_is_exactly_the_documented_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/model_info", "/generate", "/inspect", "/frame", "/animation",
                                           "/animation_mp4", "/compare",
                                           "/invert", "/interpolate", "/ood", "/bits", "/inpaint", "/repair",
                                           "/train", "/train_step", "/train_pause", "/train_stop", "/train_reset",
                                           "/train_digits"}
    params = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert params == list(GENERATE)


def test_model_info_describes_the_model(client):
    out = client.predict("tiny-cond", api_name="/model_info")
    assert len(out) == 12
    assert "3 classes" in out[0] and "16 tokens" in out[0]
    assert [c[1] for c in out[1]["choices"]] == TINY_CLASSES
    with pytest.raises(AppError, match="Could not load the model"):
        client.predict("no-such-model", api_name="/model_info")


def test_generate_streams_every_block_and_returns_sized_outputs(client):
    job = client.submit(*generate_args(), api_name="/generate")
    updates = list(job)
    statuses = [u[1] for u in updates]
    assert statuses[0].startswith("**Prior sample**")
    for block in (1, 2):  # at least one update while each flow block is inverted
        assert any(s.startswith(f"**Block {block}/2**") for s in statuses), statuses
    assert len(updates) >= 2 + 2
    final = job.result()
    assert final[1].startswith("**Done**")
    samples, raw, strip, heat, caption, download, run_id, pick = final[0], *final[2:9]
    # one row per class, 3 images of 8x8 each with 2 px gutters: 32 x 22 native, shown 8x enlarged,
    # right of a margin with the class names
    width, height = png_size(samples)
    assert height == 176 and 256 < width < 256 + 120
    assert png_size(raw) == (width, height)
    assert png_size(download["value"] if isinstance(download, dict) else download) == (width, height)
    assert png_size(heat)[0] > png_size(heat)[1] > 100
    assert png_size(strip)[0] > 5 * png_size(strip)[1] / 2
    assert "bits/dim" in caption
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    assert pick["maximum"] == 6

    grid2, strip2, heat2, caption2, *_ = client.predict(run_id, 4, api_name="/inspect")
    assert caption2.startswith("**Image 4**") and png_size(heat2) == png_size(heat)
    with pytest.raises(AppError, match="no longer kept"):
        client.predict("000000000000", 1, api_name="/inspect")


def test_generate_unconditional_rgb(client):
    final = client.predict(*generate_args(model_key="tiny-rgb", classes=[], num=2, kind="attention", attn_temp=1.5,
                                          guidance=0.5, denoise=False), api_name="/generate")
    with Image.open(final[0]) as img:
        assert img.mode == "RGB" and img.size == (22 * 8, 12 * 8)
    assert final[2] is None  # no raw grid without denoising


@pytest.mark.parametrize("over, message", [
    (dict(num=10**6), "greater than maximum value 64"),
    (dict(seed=-3), "Seed must be between 0"),
    (dict(classes=["unicorn"]), "Unknown class 'unicorn'"),
    (dict(model_key="tiny-rgb", classes=["star"]), "unconditional"),
    (dict(classes=["square"], guidance=20.0), "Lower the guidance"),  # overflows this tiny model
    (dict(kind="bogus"), "bogus"),
    (dict(model_key="no/such-model"), "Could not load the model"),
])
def test_bad_generate_requests_are_refused_and_the_server_carries_on(client, server, over, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(*generate_args(**over), api_name="/generate")
    assert server.alive()
    assert client.predict(*generate_args(num=1), api_name="/generate")[1].startswith("**Done**")


def call_raw(server, api: str, body: str) -> str:
    """POST raw JSON (gradio_client refuses to send NaN) and read the event stream."""
    base = f"{server.url}gradio_api/call/{api}"
    req = urllib.request.Request(base, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{base}/{event}", timeout=60) as r:
        return r.read().decode()


@pytest.mark.parametrize("value, message", [
    ("NaN", "Guidance scale must be a finite number"),
    ("Infinity", "greater than maximum value"),
    ("-Infinity", "less than minimum value"),
])
def test_non_finite_numbers_sent_straight_to_the_api(server, value, message):
    body = json.dumps({"data": generate_args(guidance="GUIDANCE")}).replace('"GUIDANCE"', value)
    stream = call_raw(server, "generate", body)
    assert "event: error" in stream and message in stream


def test_invert_pushes_forward_and_pulls_back_exactly(client):
    out = client.predict("tiny-cond", handle_file(str(EXAMPLES / "mnist-3.png")), "auto", "float64", True,
                         api_name="/invert")
    assert len(out) == 9
    steps, forward, hist, back, recon, heat, heat_md, posterior, post_md = out
    err = float(re.search(r"max \|x − x̂\| = " + NUMBER, recon).group(1))
    assert err < 1e-12
    for path in (steps, forward, hist, back, heat, posterior):
        assert png_size(path)[0] > 100
    assert re.search(r"\*\*" + NUMBER + r" bits/dim\*\*", heat_md)
    assert "Most likely" in post_md


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {}
    files["text"] = d / "notes.png"
    files["text"].write_text("this is not a picture")
    buf = d / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    files["truncated"] = d / "truncated.png"
    files["truncated"].write_bytes(buf.read_bytes()[:300])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for name, side in (("bomb", 20000), ("big", 7000)):
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        files[name] = d / f"{name}.png"
        files[name].write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
                                + chunk(b"IEND", b""))
    return files


@pytest.mark.parametrize("name, message", [
    ("text", "not an image"),
    ("truncated", "damaged or truncated"),
    ("bomb", "far too large"),
    ("big", "megapixels"),
])
def test_bad_images_are_explained_and_the_server_carries_on(client, server, bad_files, name, message):
    with pytest.raises(AppError, match=message):
        client.predict("tiny-cond", handle_file(str(bad_files[name])), "auto", "float32", True, api_name="/invert")
    assert server.alive()


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P", "CMYK"])
def test_unusual_image_modes_are_converted(client, tmp_path, mode):
    img = Image.new("RGBA", (50, 40), (255, 255, 255, 0))
    img.paste((20, 20, 20, 255), (10, 8, 30, 34))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    elif mode != "RGBA":
        img = img.convert("RGB").convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = client.predict("tiny-cond", handle_file(str(path)), "none", "float32", False, api_name="/invert")
    assert float(re.search(r"max \|x − x̂\| = " + NUMBER, out[4]).group(1)) < 1e-4


def test_interpolate_between_two_images(client):
    strip, md = client.predict("tiny-cond", handle_file(str(EXAMPLES / "mnist-3.png")),
                               handle_file(str(EXAMPLES / "mnist-7.png")), 6, "slerp", "none", api_name="/interpolate")
    w, h = png_size(strip)
    assert w > 6 * h / 2
    assert float(re.search(r"reproduce A and B to " + NUMBER, md).group(1)) < 1e-4
    with pytest.raises(AppError, match="Choose two images"):
        client.predict("tiny-cond", handle_file(str(EXAMPLES / "mnist-3.png")), None, 6, "slerp", "none",
                       api_name="/interpolate")


def readme_app_command() -> list[str]:
    """The command line in README.md that starts the app (after any `... &&` install step)."""
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    for line in readme.read_text(encoding="utf-8").splitlines():
        tail = line.split("&&")[-1].strip().strip("`")
        if "app.py" not in tail:
            continue
        argv = shlex.split(tail)
        if len(argv) >= 2 and argv[0] in ("python", "python3") and argv[1] == "app.py":
            return [sys.executable, *argv[1:]]
    raise AssertionError("README.md shows no `python app.py` command to start the app")


def test_the_readme_command_serves_the_page():
    """The README's app command, run exactly so with only GRADIO_SERVER_PORT (and offline settings)
    added: the page answers, with whatever models are bundled."""
    server = start_app(argv=readme_app_command())
    try:
        with urllib.request.urlopen(server.url, timeout=10) as r:
            page = r.read().decode("utf-8", errors="replace")
        assert r.status == 200 and "TarFlow" in page
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- issue 12


def test_a_failed_run_ends_with_a_consistent_page_and_the_reason(client):
    job = client.submit(*generate_args(classes=["square"], guidance=20.0), api_name="/generate")
    with pytest.raises(AppError, match="Lower the guidance"):
        job.result()
    last = job.outputs()[-1]
    assert last[1].startswith("**Failed** · Sampling overflowed")
    assert last[0] is None and last[2] is None and last[3] is None and last[4] is None and last[7] == ""


def test_one_image_says_so_and_hides_the_inspect_slider(client):
    final = client.predict(*generate_args(num=1), api_name="/generate")
    assert "1 image in" in final[1] and final[8]["visible"] is False


def test_text_that_is_no_model_gets_one_line(client):
    with pytest.raises(AppError) as err:
        client.predict("asdf qwerty", api_name="/model_info")
    assert "is not a listed model" in str(err.value) and "HFValidationError" not in str(err.value)


def test_emoji_starts_with_the_classes_its_card_recommends(client):
    out = client.predict("emoji", api_name="/model_info")
    assert out[1]["value"] == ["Smileys & Emotion", "People & Body", "Symbols", "Flags"]


def test_classification_reports_measured_accuracy_and_flags_images_unlike_the_data(client):
    digit = client.predict("mnist", handle_file(str(EXAMPLES / "mnist-2.png")), "auto", "float32", True,
                           api_name="/invert")
    measured = json.loads((ROOT / "checkpoints" / "mnist" / "calibration.json").read_text())["accuracy"]
    assert f"right **{measured:.1%}**" in digit[8] and "calibrated" in digit[8] and "bits behind" in digit[8]
    heart = client.predict("mnist", handle_file(str(EXAMPLES / "emoji-smileys-emotion.png")), "auto", "float32",
                           True, api_name="/invert")
    assert heart[8].startswith("**Out of distribution**") and "unlike the model's data" in heart[6]


def test_frames_and_the_animation_of_a_run(client):
    final = client.predict(*generate_args(num=4), api_name="/generate")
    run_id, last = final[7], final[9]["maximum"]
    view, caption = client.predict(run_id, 2, 0, api_name="/frame")
    assert caption.startswith(f"**Frame 1 of {last + 1}** · the prior sample z")
    assert png_size(view) == (224, 224)
    assert "(the flow's output x)" in client.predict(run_id, 2, last, api_name="/frame")[1]
    with pytest.raises(AppError, match="greater than maximum value"):  # the slider's range is the run's frames
        client.predict(run_id, 2, last + 1, api_name="/frame")
    gif = client.predict(run_id, api_name="/animation")
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == last + 1 > 2
    with pytest.raises(AppError, match="no longer kept"):
        client.predict("000000000000", api_name="/animation")
    mp4 = client.predict(run_id, api_name="/animation_mp4")
    assert mp4.endswith(".mp4") and open(mp4, "rb").read(12)[4:8] == b"ftyp"  # an MP4 container
    assert os.path.getsize(mp4) < os.path.getsize(gif)


def test_compare_streams_one_labelled_column_per_value(client):
    job = client.submit("tiny-cond", ["square"], 3, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1, "guidance",
                        "0, 2, 20", api_name="/compare")
    figure, status, download = job.result()
    assert status.startswith("**Done** · 3 columns (2 drawn) × 3 rows")  # w = 20 overflows this tiny model
    statuses = [o[1] for o in job.outputs()]
    assert any(s.startswith("Column 1/3 · w = 0 · block 1") for s in statuses)
    assert any("w = 20 · overflowed" in s for s in statuses)
    w, h = png_size(figure)
    assert w > 3 * 112 and h > 3 * 112
    assert png_size(download["value"] if isinstance(download, dict) else download) == (w, h)
    with pytest.raises(AppError, match="Compare 1 to 6 values"):
        client.predict("tiny-cond", ["star"], 3, 0, 1.0, "class", 1.0, False, "ab", 1.0, True, 0.1, "guidance",
                       "1, 2, 3, 4, 5, 6, 7", api_name="/compare")
