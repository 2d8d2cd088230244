"""The Likelihood tab's endpoints through gradio_client, against ``python app.py`` (the shared
test server: tiny models, fabricated datasets, 12 images per set)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> tuple[str, np.ndarray]:
    arr = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    arr[0] = 0  # dark border: fitting to the tiny model keeps every pixel
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(arr).save(path)
    return str(path), arr


def file_of(output) -> str:
    """A DownloadButton output: an update carrying the file, or the file itself."""
    return output["value"] if isinstance(output, dict) else output


def editor(path, box=None, size=336) -> dict:
    layer = np.zeros((size, size, 4), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        layer[y0:y1, x0:x1] = (217, 70, 239, 255)
    Image.fromarray(layer, "RGBA").save(path)
    return {"background": None, "layers": [handle_file(str(path))], "composite": None}


def test_ood_histograms_and_table(client, digit):
    figure, table = client.predict("tiny-cond", handle_file(digit[0]), api_name="/ood")
    with Image.open(figure) as img:
        assert img.width > 400 and np.asarray(img.convert("L")).std() > 10
    for name in ("held-out", "mnist", "emoji", "samples", "inverted", "noise"):
        assert f"| {name} | " in table
    assert "fashion-mnist: not prepared here" in table
    assert re.search(r"\*\*Your image: [\d.]+ bits/dim\*\*", table)
    _, plain = client.predict("tiny-rgb", None, api_name="/ood")
    assert "Your image" not in plain and "| constant | " in plain and plain.startswith("12 images per set.")


def test_bits_split(client, digit):
    bars, heat, caption = client.predict("tiny-cond", handle_file(digit[0]), "square", api_name="/bits")
    for f in (bars, heat):
        with Image.open(f) as img:
            assert np.asarray(img.convert("L")).std() > 10
    assert re.match(r"\*\*\d+\.\d{3} bits/dim\*\* = 7\.00 ", caption)


def test_inpaint_streams_and_keeps_the_kept_pixels(client, digit, tmp_path):
    job = client.submit("tiny-cond", handle_file(digit[0]), editor(tmp_path / "m.png", (0, 168, 336, 336)),
                        "painted", "star", "samples", 10, 1, api_name="/inpaint")
    updates = list(job)
    assert any(u[1].startswith("**Step") for u in updates)
    figure, status, result = job.result()
    assert status.startswith("**Done**") and "class star" in status
    out = np.asarray(Image.open(file_of(result)))
    assert np.array_equal(out[:4], digit[1][:4]) and not np.array_equal(out[4:], digit[1][4:])


def test_repair_streams(client, digit):
    figure, status, result = client.predict("tiny-cond", handle_file(digit[0]), "blur", 1.0, "none", 5, 0,
                                            api_name="/repair")
    assert status.startswith("**Done**") and np.asarray(Image.open(file_of(result))).shape == (8, 8)


@pytest.mark.parametrize("box, size, message", [
    (None, 336, "Nothing is painted"),
    ((0, 0, 336, 336), 336, "Everything is erased"),
    ((0, 0, 10, 10), (300, 200), "must be square"),
])
def test_bad_masks_get_clear_messages(client, digit, tmp_path, box, size, message):
    if isinstance(size, tuple):
        Image.new("RGBA", size).save(tmp_path / "m.png")
        value = {"background": None, "layers": [handle_file(str(tmp_path / "m.png"))], "composite": None}
    else:
        value = editor(tmp_path / "m.png", box, size)
    with pytest.raises(AppError, match=message):
        client.predict("tiny-cond", handle_file(digit[0]), value, "painted", "none", "samples", 5, 0,
                       api_name="/inpaint")


def test_bad_requests_leave_the_server_running(client, digit, server):
    with pytest.raises(AppError, match="greater than maximum value 200"):  # Gradio checks the slider itself
        client.predict("tiny-cond", handle_file(digit[0]), None, "bottom", "none", "noise", 10_000, 0,
                       api_name="/inpaint")
    with pytest.raises(AppError, match="Strength must be between 0 and 1"):  # noise: at most 1, blur: 4 px
        client.predict("tiny-cond", handle_file(digit[0]), "noise", 2.5, "none", 5, 0, api_name="/repair")
    with pytest.raises(AppError, match="Erase must be one of 'bottom', "):
        client.predict("tiny-cond", handle_file(digit[0]), None, "diagonal", "none", "noise", 5, 0,
                       api_name="/inpaint")
    with pytest.raises(AppError, match="Upload, draw or pick an image first"):
        client.predict("tiny-cond", None, "none", api_name="/bits")
    assert server.alive()
