"""The Likelihood tab in a real browser (Debian chromium via playwright): the histograms appear when
the tab opens, an upload is marked and split into its bits, a preset and a painted mask are refilled.
Screenshots at 1400x900 and 390x844 go to test-artifacts/."""

from __future__ import annotations

from app_server import ROOT
from browser_pages import page_at_both_sizes  # noqa: F401 (the page fixture)
from test_app_browser import ARTIFACTS, TIMEOUT_MS, assert_not_blank, browser, shot  # noqa: F401 (fixture)

EXAMPLE = ROOT / "assets" / "examples" / "mnist-3.png"


def open_tab(page, name: str, scope=None) -> None:
    """Click a tab, through the "More tabs" menu where a narrow screen has folded it away."""
    scope = scope or page
    tab = scope.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    scope.get_by_role("button", name="More tabs").first.click()
    page.get_by_role("button", name=name, exact=True).last.click()


def test_likelihood_tab_shows_histograms_marks_an_image_and_refills(page):
    open_tab(page, "Likelihood")
    page.locator("#tf-ood img").wait_for(state="visible")  # computed on opening the tab
    page.locator("#tf-ood-table", has_text="AUROC").wait_for()
    assert_not_blank(shot(page.locator("#tf-ood img"), f"likelihood-ood-{page.tag}.png"))
    page.locator("#tf-lk-image input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#tf-ood-table", has_text="Your image").wait_for()
    page.screenshot(path=str(ARTIFACTS / f"likelihood-{page.tag}.png"), full_page=True)

    open_tab(page, "Where the bits go", page.locator("#tf-lk-tabs"))
    page.locator("#tf-bits img").wait_for(state="visible")
    page.locator("#tf-bits-md", has_text="bits/dim").wait_for()
    assert_not_blank(shot(page.locator("#tf-bits img"), f"likelihood-bits-{page.tag}.png"))
    page.screenshot(path=str(ARTIFACTS / f"likelihood-bits-page-{page.tag}.png"), full_page=True)

    open_tab(page, "Inpaint & repair", page.locator("#tf-lk-tabs"))
    page.locator("#tf-refill").click()  # the preset: bottom half
    page.locator("#tf-inpaint-status", has_text="Done").wait_for()
    assert_not_blank(shot(page.locator("#tf-inpaint img"), f"likelihood-refill-{page.tag}.png"))
    page.screenshot(path=str(ARTIFACTS / f"likelihood-refill-page-{page.tag}.png"), full_page=True)


def test_a_painted_mask_is_refilled(page):
    open_tab(page, "Likelihood")
    page.locator("#tf-lk-image input[type=file]").set_input_files(str(ROOT / "assets" / "examples" / "mnist-7.png"))
    open_tab(page, "Inpaint & repair", page.locator("#tf-lk-tabs"))
    page.locator("#tf-lk-editor canvas").first.wait_for()
    page.get_by_label("What you painted").check()
    before = page.evaluate("() => document.querySelector('#tf-inpaint img')?.src || ''")
    page.locator("#tf-lk-editor").get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("#tf-lk-editor canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 16):
        page.mouse.move(x + k * box["width"] * 0.04, y + k * box["height"] * 0.02)
    page.mouse.up()
    page.locator("#tf-refill").click()
    # finished: a new figure, the status says Done, and nothing is pending any more
    page.wait_for_function("(old) => { const s = document.querySelector('#tf-inpaint-status'); "
                           "const i = document.querySelector('#tf-inpaint img'); "
                           "return i && i.src !== old && s.innerText.startsWith('Done') "
                           "&& !document.querySelector('.pending'); }", arg=before)
    assert "Nothing is painted" not in page.content()
    page.screenshot(path=str(ARTIFACTS / f"likelihood-painted-{page.tag}.png"), full_page=True)
    assert_not_blank(shot(page.locator("#tf-inpaint img"), f"likelihood-painted-result-{page.tag}.png"))


def test_a_drawing_is_marked_on_the_histograms(page):
    open_tab(page, "Likelihood")
    open_tab(page, "Out of distribution?", page.locator("#tf-lk-tabs"))
    table = page.locator("#tf-ood-table")
    table.wait_for()
    before = table.inner_text()
    open_tab(page, "Draw", page.locator("#tf-lk-input"))
    page.locator("#tf-lk-sketch").get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("#tf-lk-sketch canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 21):
        page.mouse.move(x - k * box["width"] * 0.01, y + k * box["height"] * 0.03)
    page.mouse.up()
    page.locator("#tf-lk-use-drawing").click()
    page.wait_for_function("(old) => { const t = document.querySelector('#tf-ood-table').innerText; "
                           "return t !== old && t.includes('Your image'); }", arg=before)
    page.screenshot(path=str(ARTIFACTS / f"likelihood-drawing-{page.tag}.png"), full_page=True)
