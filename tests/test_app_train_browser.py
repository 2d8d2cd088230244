"""The Train tab in a real browser (Debian chromium via playwright): press Train, the density
image and the loss plot change between two screenshots, Stop ends it. At 1400x900 and 390x844;
screenshots go to test-artifacts/."""

from __future__ import annotations

import hashlib

from browser_pages import page_at_both_sizes  # noqa: F401 (the page fixture)
from test_app_browser import ARTIFACTS, TIMEOUT_MS, assert_not_blank, browser  # noqa: F401 (fixture)


def open_train_tab(page) -> None:
    """The Train tab, through Gradio's "More tabs" menu where a narrow screen folds it away."""
    tab = page.get_by_role("tab", name="Train", exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_role("button", name="More tabs").first.click()
        page.get_by_role("button", name="Train", exact=True).last.click()
    page.locator("#tf-train-go").wait_for(state="visible")


def digest(locator) -> str:
    return hashlib.sha1(locator.screenshot()).hexdigest()


def test_train_changes_the_density_and_the_loss_plot_then_stop(page):
    open_train_tab(page)
    page.locator("#tf-train-go").click()
    status = page.locator("#tf-train-status")
    status.get_by_text("Training").wait_for()
    density, loss = page.locator("#tf-train-density img"), page.locator("#tf-train-loss")
    density.wait_for(state="visible")
    page.wait_for_timeout(1500)
    first = (digest(density), digest(loss))
    page.wait_for_timeout(2500)
    second = (digest(density), digest(loss))
    assert first[0] != second[0], "the density image did not change while training"
    assert first[1] != second[1], "the loss plot did not change while training"
    page.locator("#tf-train-status").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"train-{page.tag}.png"), full_page=True)
    page.locator("#tf-train-stop").click()
    status.get_by_text("Ended (stopped)").wait_for()
    for name in ("density", "samples", "warp"):
        path = ARTIFACTS / f"train-{name}-{page.tag}.png"
        page.locator(f"#tf-train-{name} img").screenshot(path=str(path))
        assert_not_blank(path, min_std=4.0)


def test_digits_from_scratch_streams_a_grid(page):
    open_train_tab(page)
    page.get_by_role("tab", name="Digits from scratch").click()
    page.locator("#tf-digits-go").click()
    page.locator("#tf-train-grid img").wait_for(state="visible")
    page.locator("#tf-digits-status").get_by_text("bits/dim", exact=False).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / f"train-digits-{page.tag}.png"), full_page=True)
    page.locator("#tf-digits-stop").click()
    page.locator("#tf-digits-status").get_by_text("Ended (stopped)").wait_for()
