"""The app in a real browser: Debian's chromium driven by the playwright package.

Without chromium (or playwright) these tests skip, except under CI=true, where they fail.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
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
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
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


def open_tab(page, name: str) -> None:
    """Click a top-level tab; on a narrow screen the last tabs sit behind Gradio's "More tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.first.is_visible():
        page.get_by_role("button", name="More tabs").click()
        # the menu's entries are buttons named exactly like the tab ("Send to Invert" is not one of them)
        page.get_by_role("button", name=name, exact=True).click()
        return
    tab.first.click()


def scroll_through(page) -> None:
    """Scroll down the page and back so that lazily loaded pictures load before a full-page shot."""
    height = page.evaluate("() => document.body.scrollHeight")
    for y in range(0, height, 500):
        page.evaluate(f"() => window.scrollTo(0, {y})")
        page.wait_for_timeout(100)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(300)


def test_generate_is_in_the_first_viewport_on_load(browser):
    server = shared_server()
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height, name in ((1400, 900, "load-1400x900.png"), (390, 844, "load-390x844.png")):
        context = browser.new_context(viewport={"width": width, "height": height})
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(server.url, wait_until="load")
        button = pg.get_by_role("button", name="Generate", exact=True)
        button.wait_for()
        pg.locator("#tf-estimate", has_text="Estimated on this CPU").wait_for()  # the time estimate, from load
        pg.screenshot(path=str(ARTIFACTS / name))
        box = button.bounding_box()
        if width == 1400:
            assert box["y"] + box["height"] <= height, f"Generate is below the fold at {width}x{height}: {box}"
        assert_not_blank(ARTIFACTS / name, min_std=4.0)
        context.close()


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
    page.locator("#tf-estimate", has_text="the last such run here took").wait_for()  # the estimate learnt its time
    assert f"({chosen})" in page.locator("#tf-heatmap").locator("xpath=following::*[contains(@class, "
                                                               "'tf-note')][1]").inner_text()
    natural = page.evaluate("() => document.querySelector('#tf-samples img').naturalWidth")
    assert natural > 0
    page.screenshot(path=str(ARTIFACTS / "generate.png"), full_page=True)
    assert_not_blank(shot(page.locator("#tf-samples img"), "generate-samples.png"))
    assert_not_blank(shot(page.locator("#tf-heatmap img"), "generate-heatmap.png"))
    assert page.get_by_text("bits/dim", exact=False).count() > 0


def generate_and_wait(page) -> None:
    """Press Generate and wait for this run's "Done" (not an earlier run's)."""
    old = page.locator("#tf-status").inner_text()
    page.get_by_role("button", name="Generate", exact=True).click()
    # while a run streams, the status also holds its progress bar's text (so "Done" may still show)
    page.wait_for_function("(old) => { const t = (document.querySelector('#tf-status')?.innerText || '').trim();"
                           " return t !== old && t.startsWith('Done'); }", arg=old.strip())


def frame_caption(page) -> str:
    return page.locator("#tf-frame-md").inner_text()


def test_the_player_steps_plays_and_pauses_through_recorded_frames(page):
    open_tab(page, "Generate")
    if "Done" not in page.locator("#tf-status").inner_text():
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#tf-status", has_text="Done").wait_for()
    page.locator("#tf-frame-md", has_text="Frame").wait_for()
    last = frame_caption(page)
    total = int(last.split(" of ")[1].split()[0])
    assert total > 8 and last.startswith(f"Frame {total} of {total}")
    src = page.locator("#tf-frame img").get_attribute("src")
    page.get_by_role("button", name="◀ Step").click()
    page.locator("#tf-frame-md", has_text=f"Frame {total - 1} of {total}").wait_for()
    page.wait_for_function("(old) => document.querySelector('#tf-frame img')?.src !== old", arg=src)
    # play from the last-but-one frame: it runs to the end; from the end it restarts at the prior
    page.get_by_role("button", name="▶ Play").click()
    page.locator("#tf-frame-md", has_text=f"Frame {total} of {total}").wait_for()
    page.wait_for_timeout(500)  # a button's event that is still finishing ignores a second click
    page.get_by_role("button", name="▶ Play").click()
    page.wait_for_function("(n) => { const m = document.querySelector('#tf-frame-md')?.innerText.match(/Frame (\\d+)/);"
                           " return m && +m[1] < n - 2; }", arg=total)  # restarted from the start
    page.get_by_role("button", name="❚❚ Pause").click()
    page.wait_for_timeout(400)
    paused = frame_caption(page)
    page.wait_for_timeout(800)
    assert frame_caption(page) == paused, "the player went on after Pause"
    shown = int(re.search(r"Frame (\d+) of", paused).group(1))
    assert shown < total
    page.get_by_role("button", name="Step ▶").click()
    page.locator("#tf-frame-md", has_text=f"Frame {shown + 1} of {total}").wait_for()
    slider = page.locator("#tf-frame-slider input[type=number]")
    assert slider.input_value() == str(shown)  # the slider counts from 0
    assert_not_blank(shot(page.locator("#tf-frame img"), "player-frame.png"), min_std=4.0)


def test_a_running_generate_pauses_steps_and_resumes(page):
    """In slow motion: Pause holds the grid (status "Paused"), Step draws one more frame and holds
    again, Resume runs it to "Done"."""
    open_tab(page, "Generate")
    slow = page.get_by_label("Slow motion")
    slow.check()
    try:
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#tf-status", has_text=re.compile(r"Block \d/\d")).wait_for()  # the run is streaming
        page.locator("#tf-pause").click()
        page.locator("#tf-status", has_text="Paused").wait_for(timeout=10_000)
        src = page.locator("#tf-samples img").get_attribute("src")
        page.wait_for_timeout(1200)
        assert page.locator("#tf-samples img").get_attribute("src") == src, "the grid changed while paused"
        assert "Paused" in page.locator("#tf-status").inner_text()
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "generate-paused.png"), full_page=False)
        page.locator("#tf-step").click()
        page.wait_for_function("(old) => document.querySelector('#tf-samples img')?.src !== old", arg=src)
        page.locator("#tf-status", has_text="Paused").wait_for()
        stepped = page.locator("#tf-samples img").get_attribute("src")
        page.wait_for_timeout(800)
        assert page.locator("#tf-samples img").get_attribute("src") == stepped, "Step let more than one frame through"
        page.locator("#tf-resume").click()
        page.locator("#tf-status", has_text="Done").wait_for()
    finally:
        slow.uncheck()
    assert_not_blank(ARTIFACTS / "generate-paused.png")


def test_the_animation_download_is_a_gif_of_many_frames(page):
    open_tab(page, "Generate")
    if "Done" not in page.locator("#tf-status").inner_text():
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#tf-status", has_text="Done").wait_for()
    page.get_by_role("button", name="Download animation (GIF)").click()
    link = page.locator("#tf-anim-file a").first
    link.wait_for()
    with page.expect_download() as info:
        link.click()
    path = ARTIFACTS / "animation.gif"
    info.value.save_as(str(path))
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames > 1
        gif.seek(gif.n_frames - 1)
        assert np.asarray(gif.convert("L")).std() > 8
    page.get_by_role("button", name="Download animation (MP4)").click()
    page.wait_for_function("() => [...document.querySelectorAll('#tf-anim-file a')].some(a => /\\.mp4/.test(a.href))")
    with page.expect_download() as info:
        page.locator("#tf-anim-file a[href*='.mp4']").first.click()
    mp4 = ARTIFACTS / "animation.mp4"
    info.value.save_as(str(mp4))
    assert mp4.read_bytes()[4:8] == b"ftyp" and mp4.stat().st_size < path.stat().st_size


def test_a_comparison_shows_one_labelled_column_per_setting(page):
    open_tab(page, "Compare")
    page.get_by_label("Values").fill("0, 2, 4")
    page.locator("#tf-compare-btn").click()
    page.locator("#tf-compare-status", has_text="drawn").wait_for()
    status = page.locator("#tf-compare-status").inner_text()
    assert "3 columns (3 drawn)" in status
    path = shot(page.locator("#tf-compare img"), "compare.png")
    assert_not_blank(path)
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    # the columns are bands of image separated by white gaps, below the header with their labels
    body = arr[int(arr.shape[0] * 0.3):]
    ink = (body < 200).mean(axis=0) > 0.2
    bands = int(np.count_nonzero(np.diff(ink.astype(int)) == 1) + ink[0])
    assert bands == 3, f"{bands} columns in the comparison"
    header = arr[: int(arr.shape[0] * 0.12)]
    assert (header < 128).any(), "no column labels"
    page.screenshot(path=str(ARTIFACTS / "compare-page.png"), full_page=True)


def test_a_typed_non_model_returns_to_the_working_model(page):
    open_tab(page, "Generate")
    picker = page.get_by_label("Model")
    before = picker.input_value()
    picker.fill("asdf qwerty")
    picker.press("Enter")
    page.get_by_text("is not a listed model", exact=False).first.wait_for()
    page.wait_for_function("(v) => document.querySelector('input[aria-label=\"Model\"]')?.value === v", arg=before)
    generate_and_wait(page)  # the model that works still works


def test_a_failed_run_leaves_a_consistent_page_with_its_reason(page):
    open_tab(page, "Generate")
    page.get_by_label("Model").fill("tiny-cond")
    page.get_by_label("Model").press("Enter")
    page.locator(".tf-card", has_text="3 classes").first.wait_for()
    guidance = page.locator("#tf-guidance input[type=number]")
    guidance.fill("20")
    guidance.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    try:
        page.locator("#tf-status", has_text="Failed").wait_for(timeout=30_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "debug-failed.png"), full_page=True)
        raise
    assert "Lower the guidance" in page.locator("#tf-status").inner_text()
    assert page.locator("#tf-samples img").count() == 0 and page.locator("#tf-heatmap img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "generate-failed.png"))
    guidance.fill("1")
    guidance.press("Enter")
    page.get_by_label("Model").fill("mnist")
    page.get_by_label("Model").press("Enter")
    page.locator(".tf-card", has_text="10 classes").first.wait_for()


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
    open_tab(page, "Learn")
    page.get_by_text("How TarFlow works").wait_for()
    page.screenshot(path=str(ARTIFACTS / "learn.png"), full_page=True)
    assert page.locator(".katex").count() > 5  # the formulas rendered


def test_a_phone_sized_screen(browser):
    """390 x 844: generate, the Learn page's formulas fit (or scroll inside their own box)."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(shared_server().url, wait_until="load")
    pg.get_by_role("button", name="Generate", exact=True).click()
    pg.locator("#tf-status", has_text="Done").wait_for()
    scroll_through(pg)
    pg.screenshot(path=str(ARTIFACTS / "phone-generate.png"), full_page=True)
    assert_not_blank(ARTIFACTS / "phone-generate.png", min_std=4.0)
    open_tab(pg, "Learn")
    pg.get_by_text("How TarFlow works").wait_for()
    pg.screenshot(path=str(ARTIFACTS / "phone-learn.png"), full_page=True)
    wide = pg.evaluate("() => [...document.querySelectorAll('.katex-display')].filter(e => "
                       "e.getBoundingClientRect().right > window.innerWidth + 1 || e.scrollWidth > e.clientWidth + 1)"
                       ".length")
    assert wide == 0, "a formula runs off the screen"
    assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390 + 1
    open_tab(pg, "Invert")
    pg.locator("#tf-upload input[type=file]").set_input_files(str(EXAMPLE))
    pg.locator("#tf-reconstruction img").wait_for(state="visible")
    pg.get_by_text("max |x − x̂|", exact=False).first.wait_for()
    scroll_through(pg)
    pg.screenshot(path=str(ARTIFACTS / "phone-invert.png"), full_page=True)
    assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390 + 1
    context.close()
