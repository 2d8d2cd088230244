"""The app in a real browser: Debian's chromium driven by the playwright package.

Without chromium (or playwright) these tests skip, except under CI=true, where they fail.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import ROOT, shared_server
from PIL import Image

ARTIFACTS = ROOT / "test-artifacts"
EXAMPLE = ROOT / "assets" / "examples" / "mnist-3.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    executable = _chromium()
    if executable is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    server = shared_server()
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url, wait_until="load")
    pg.get_by_role("button", name="Generate", exact=True).wait_for()
    yield pg
    context.close()
    assert server.alive(), server.log_tail()


def assert_not_blank(png: Path, min_std: float = 8.0) -> None:
    with Image.open(png) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    assert arr.std() > min_std, f"{png.name} looks blank (pixel std {arr.std():.1f})"


def shot(locator, name: str) -> Path:
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    return path


def test_generate_streams_and_shows_results(page):
    page.get_by_role("tab", name="Generate").click()
    # choose one class in the (multi-select) class box: clear it, then pick one of the model's classes
    classes = page.get_by_label("Classes")
    classes.click()
    for _ in range(4):
        classes.press("Backspace")
    options = page.get_by_role("option")
    options.first.wait_for()
    chosen = options.nth(min(1, options.count() - 1)).inner_text().strip()
    options.nth(min(1, options.count() - 1)).click()
    page.keyboard.press("Escape")
    # record every frame the samples image shows while it streams
    page.evaluate("""() => {
        window.__frames = new Set();
        const note = () => document.querySelectorAll('#tf-samples img').forEach(i => window.__frames.add(i.src));
        new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                           attributeFilter: ['src']});
    }""")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#tf-status", has_text="Done").wait_for()
    page.locator("#tf-heatmap img").wait_for(state="visible")
    page.locator("#tf-strip img").wait_for(state="visible")
    frames = page.evaluate("() => window.__frames.size")
    assert frames >= 3, f"the samples image changed only {frames} times while streaming"
    status = page.locator("#tf-status").inner_text()
    assert "Done" in status and "guidance" in status
    assert f"({chosen})" in page.locator("#tf-heatmap").locator("xpath=following::*[contains(@class, "
                                                               "'tf-note')][1]").inner_text()
    natural = page.evaluate("() => document.querySelector('#tf-samples img').naturalWidth")
    assert natural > 0
    page.screenshot(path=str(ARTIFACTS / "generate.png"), full_page=True)
    assert_not_blank(shot(page.locator("#tf-samples img"), "generate-samples.png"))
    assert_not_blank(shot(page.locator("#tf-heatmap img"), "generate-heatmap.png"))
    assert page.get_by_text("bits/dim", exact=False).count() > 0


def test_invert_an_uploaded_image(page):
    page.get_by_role("tab", name="Invert").click()
    page.locator("#tf-upload input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#tf-reconstruction img").wait_for(state="visible")
    page.get_by_text("max |x − x̂|", exact=False).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "invert.png"), full_page=True)
    assert_not_blank(shot(page.locator("#tf-reconstruction img"), "invert-reconstruction.png"))
    assert_not_blank(shot(page.locator("#tf-forward img"), "invert-forward.png"))


def test_invert_a_drawing(page):
    page.get_by_role("tab", name="Invert").click()
    page.get_by_role("tab", name="Draw").click()
    page.get_by_role("button", name="Brush").click()
    box = page.locator("#tf-sketch canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 21):
        page.mouse.move(x, y + k * box["height"] * 0.03)
    page.mouse.up()
    before = page.evaluate("() => [...document.querySelectorAll('#tf-fitted img, #tf-reconstruction img')]"
                           ".map(i => i.src)")
    page.get_by_role("button", name="Invert this drawing").click()
    # both the fitting steps and the reconstruction are replaced by the drawing's
    page.wait_for_function("(old) => { const now = [...document.querySelectorAll('#tf-fitted img, "
                           "#tf-reconstruction img')].map(i => i.src); "
                           "return now.length === 2 && now.every((s, k) => s !== old[k]); }", arg=before)
    page.screenshot(path=str(ARTIFACTS / "invert-drawing.png"), full_page=True)
    assert_not_blank(shot(page.locator("#tf-fitted img"), "invert-drawing-fitted.png"))


def test_learn_explains_with_a_figure(page):
    page.get_by_role("tab", name="Learn").click()
    page.get_by_text("How TarFlow works").wait_for()
    page.screenshot(path=str(ARTIFACTS / "learn.png"), full_page=True)
    assert page.locator(".katex").count() > 5  # the formulas rendered
