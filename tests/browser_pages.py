"""The page fixture of the browser tests that run at both sizes (1400x900 and 390x844): import
``page_at_both_sizes`` into a test module (with ``browser``) and its tests take ``page``."""

from __future__ import annotations

import pytest
from app_server import shared_server
from test_app_browser import ARTIFACTS, TIMEOUT_MS


@pytest.fixture(scope="module", params=[(1400, 900), (390, 844)], ids=["desktop", "phone"], name="page")
def page_at_both_sizes(request, browser):
    server = shared_server()
    ARTIFACTS.mkdir(exist_ok=True)
    width, height = request.param
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url, wait_until="load")
    pg.get_by_role("tab", name="Generate").wait_for()
    pg.tag = "desktop" if width > 1000 else "phone"
    yield pg
    context.close()
    assert server.alive(), server.log_tail()
