"""Browser tests: the built website in headless Chromium, served on 127.0.0.1.

Every page loads with no console errors and no failed requests, every figure image loads,
every widget renders, and moving each frames widget's control changes its picture: with
no kernel behind the page, as a reader of the static site sees it.
Run after `make book`; skipped with a message when Chromium or the site is missing.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
from pathlib import Path

import pytest

SITE = Path(os.environ.get("MAMBABOOK_SITE") or Path(__file__).resolve().parents[2] / "_build" / "html")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would bury the test report
        pass


pytestmark = pytest.mark.browser


def _pages() -> list[str]:
    if not SITE.exists():
        return []
    return sorted(p.relative_to(SITE).as_posix() for p in (SITE / "chapters").glob("*.html"))


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="networkidle")
    return page, problems


@contextlib.contextmanager
def opened(browser, url):
    """A page at url, and the problems it reports (console errors, page errors, failed
    requests, HTTP errors); closed on leaving."""
    page, problems = _open(browser, url)
    try:
        yield page, problems
    finally:
        page.close()


def _wait_for_widgets(page) -> int:
    """Number of widget views the page declares; waits until the manager rendered them."""
    declared = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if declared:
        page.wait_for_function(
            "n => document.querySelectorAll('.jupyter-widgets.widget-container, .jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-box, .widget-image, .widget-html').length >= 1",
            arg=declared, timeout=30_000)
    return declared


@pytest.mark.parametrize("path", _pages())
def test_page_loads_clean(server, browser, path):
    with opened(browser, f"{server}/{path}") as (page, problems):
        _wait_for_widgets(page)
        page.wait_for_timeout(500)
        broken = page.evaluate("""() => [...document.images]
            .filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0))
            .map(i => i.src.slice(0, 80))""")
        assert not broken, f"{path}: images that did not load: {broken}"
        errors = page.locator(".jupyter-widgets .widget-error, .output_error, .cell_output .traceback").count()
        assert errors == 0, f"{path}: {errors} error outputs on the page"
        assert not problems, f"{path}: " + "\n".join(problems)


def _visible_frame(widget) -> str:
    """A fingerprint of what the frames widget shows now: the src of its visible images."""
    return widget.evaluate("""w => [...w.querySelectorAll('img, .widget-html-content')]
        .filter(e => e.offsetParent !== null)
        .map(e => e.tagName === 'IMG' ? e.src.slice(-200) + e.src.length : e.innerHTML.slice(0, 400))
        .join('|')""")


def _shows_other_than(page, widget, before: str, timeout_ms: int = 5000) -> bool:
    """Whether the widget's picture differs from `before` within timeout_ms (polled: a
    loaded machine may take longer than one frame to swap the picture)."""
    for _ in range(timeout_ms // 100):
        if _visible_frame(widget) != before:
            return True
        page.wait_for_timeout(100)
    return _visible_frame(widget) != before


def _controls(widget):
    sliders = widget.locator(".noUi-handle")
    buttons = widget.locator(".widget-toggle-buttons button")
    return sliders, buttons


def test_widgets_respond(server, browser):
    pages = _pages()
    if not pages:
        pytest.skip("no chapter pages in the built site")
    checked = 0
    for path in pages:
        with opened(browser, f"{server}/{path}") as (page, problems):
            if not _wait_for_widgets(page):
                continue
            page.wait_for_selector(".mambabook-frames", timeout=30_000)
            widgets = page.locator(".mambabook-frames")
            for i in range(widgets.count()):
                w = widgets.nth(i)
                w.scroll_into_view_if_needed()
                sliders, buttons = _controls(w)
                assert sliders.count() + buttons.count() > 0, f"{path}: frames widget {i} has no control"
                for j in range(sliders.count()):
                    before = _visible_frame(w)
                    assert before, f"{path}: frames widget {i} shows nothing"
                    handle = sliders.nth(j)
                    handle.focus()
                    changed = False
                    for key in ("End", "Home"):  # one of the two ends differs from the start
                        handle.press(key)
                        if _shows_other_than(page, w, before, 5000 if key == "Home" else 2500):
                            changed = True
                            break
                    assert changed, f"{path}: slider {j} of frames widget {i} did not change the picture"
                    checked += 1
                unselected = w.locator(".widget-toggle-buttons button:not(.mod-active)")
                if unselected.count():
                    before = _visible_frame(w)
                    unselected.first.click()
                    assert _shows_other_than(page, w, before), f"{path}: toggle buttons of frames widget {i} did not change the picture"
                    checked += 1
            assert not problems, f"{path}: " + "\n".join(problems)
    assert checked > 0, "no frames widget control was exercised on any page"


def test_pages_offer_executed_notebooks(server, browser):
    """Each chapter's download menu links its executed .ipynb, and the file is a notebook."""
    import json
    import urllib.request

    for path in _pages():
        with opened(browser, f"{server}/{path}") as (page, _):
            link = page.locator("a.btn-download-notebook-button, a[href$='.ipynb']").first
            assert link.count(), f"{path}: no .ipynb download link"
            url = link.evaluate("a => a.href")
            with urllib.request.urlopen(url, timeout=10) as resp:
                nb = json.load(resp)
            assert nb["nbformat"] == 4 and nb["cells"], f"{path}: {url} is not a notebook"
            outputs = sum(len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
            assert outputs > 0, f"{path}: the downloadable notebook was not executed"
