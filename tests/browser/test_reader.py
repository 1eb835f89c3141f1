"""Browser tests: the built website as a reader sees it, at 1280 px, light and dark.

Code cells and outputs fit the column (no sideways scrolling), no finished progress bar is
left on a page, each page offers one download per format, the intro's comparison table
stays compact, and the widgets are readable in dark mode. Run after `make book`.
`python tests/browser/test_reader.py` prints the counts the tests check, for every page.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_site import _pages, _wait_for_widgets, opened  # noqa: E402

pytestmark = pytest.mark.browser
WIDTH = 1280  # px: a laptop screen
INTRO_TABLE_MAX = 600  # px: the comparison table fits in about one screen
# Chapter 7 is being rewritten; its code and outputs are fitted to the column with it.
# Blocks that must not scroll sideways: code cells' inputs and text outputs.
OVERFLOW_JS = """() => {
    const blocks = [...document.querySelectorAll(
        '.cell_input pre, .cell_output pre, .cell_output .output, .cell_output table')];
    return blocks.filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
        .map(e => (e.closest('.cell_input') ? 'code: ' : 'output: ')
             + e.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '')
               .slice(0, 100));
}"""

# What is left of a progress bar: a widget view of a progress model, or an output area
# that shows nothing but still takes space.
LEFTOVER_JS = """() => {
    const state = [...document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-state+json"]')]
        .map(s => JSON.parse(s.textContent).state).reduce((a, b) => Object.assign(a, b), {});
    const isBar = id => {
        const m = state[id];
        if (!m || !(m.state._model_name || '').endsWith('BoxModel')) return false;
        return (m.state.children || []).some(c => {
            const k = state[String(c).replace('IPY_MODEL_', '')];
            return k && /ProgressModel$/.test(k.state._model_name || '');
        });
    };
    const views = [...document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]')]
        .filter(s => isBar(JSON.parse(s.textContent).model_id));
    const bars = [...document.querySelectorAll('.widget-hprogress, .widget-progress')]
        .filter(e => !e.closest('.mambabook-frames'));
    const empty = [...document.querySelectorAll('.cell_output > .output')]
        .filter(e => e.innerText.trim() === '' && !e.querySelector('img, svg, canvas, table')
                && e.getBoundingClientRect().height > 4);
    return {views: views.length, bars: bars.length, empty: empty.length};
}"""

DOWNLOADS_JS = """() => [...document.querySelectorAll('.dropdown-download-buttons .dropdown-item')]
    .map(e => e.innerText.trim())"""

# The widget text and the background it is drawn on (the first opaque ancestor).
CONTRAST_JS = """() => {
    const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
        const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = e => {
        for (; e; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c;
        }
        return [255, 255, 255];
    };
    const texts = [...document.querySelectorAll(
        '.mambabook-frames .widget-label, .mambabook-frames .widget-readout, '
        + '.mambabook-frames .widget-html-content, .mambabook-frames button')]
        .filter(e => e.offsetParent !== null && e.innerText.trim());
    return texts.map(e => {
        const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e));
        return {text: e.innerText.trim().slice(0, 40),
                ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
                background: lum(background(e))};
    });
}"""


def _measure(page, js):
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return page.evaluate(js)


@pytest.mark.parametrize("path", _pages())
def test_code_and_outputs_fit_at_1280px(server, browser, path):
    with opened(browser, f"{server}/{path}") as (page, _):
        wide = _measure(page, OVERFLOW_JS)
        assert not wide, f"{path}: {len(wide)} blocks scroll sideways at {WIDTH} px: {wide[:5]}"


@pytest.mark.parametrize("path", _pages())
def test_no_progress_bar_leftovers(server, browser, path):
    with opened(browser, f"{server}/{path}") as (page, _):
        _wait_for_widgets(page)
        page.wait_for_timeout(300)
        left = _measure(page, LEFTOVER_JS)
        assert left == {"views": 0, "bars": 0, "empty": 0}, f"{path}: progress-bar leftovers {left}"


@pytest.mark.parametrize("path", _pages())
def test_one_download_per_format(server, browser, path):
    with opened(browser, f"{server}/{path}") as (page, _):
        entries = page.evaluate(DOWNLOADS_JS)
        assert ".ipynb" in entries, f"{path}: no .ipynb download ({entries})"
        assert len(entries) == len(set(entries)), f"{path}: repeated download entries {entries}"


def test_no_launch_buttons_to_unknown_targets(server, browser):
    """No Binder, repository or issues button: they would point at a repository the site
    cannot vouch for; one search box."""
    with opened(browser, f"{server}/chapters/intro.html") as (page, _):
        assert page.locator("a[href*='mybinder'], .btn-launch-buttons, "
                            ".btn-source-repository-button, .btn-source-issues-button").count() == 0
        visible = page.locator(".search-button-field:visible, .search-button:visible").count()
        assert visible == 1, f"{visible} search boxes on the page"
        title = page.title()
        assert title.count("Mamba vs Transformer") == 1, f"title repeats itself: {title!r}"


def test_intro_table_is_compact(server, browser):
    with opened(browser, f"{server}/chapters/intro.html") as (page, _):
        page.set_viewport_size({"width": WIDTH, "height": 900})
        height = page.evaluate("() => document.querySelector('article table').offsetHeight")
        assert height <= INTRO_TABLE_MAX, f"intro table is {height} px tall"


def test_downloaded_notebook_checks_for_the_library(server, browser):
    import urllib.request

    with opened(browser, f"{server}/chapters/01_rnn.html") as (page, _):
        url = page.locator(".dropdown-download-buttons a[href$='.ipynb']").first.evaluate(
            "a => a.href")
    with urllib.request.urlopen(url, timeout=10) as resp:
        nb = json.load(resp)
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "code" and "import mambabook" in first
    assert "pip install" in first


def _dark(browser, url):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900},
                                  color_scheme="dark")
    context.add_init_script("localStorage.setItem('theme', 'dark'); localStorage.setItem('mode', 'dark')")
    page = context.new_page()
    page.goto(url, wait_until="networkidle")
    return context, page


@pytest.mark.parametrize("path", [p for p in _pages() if p.endswith(("03_linear_attention_rwkv.html", "intro.html"))])
def test_widgets_readable_in_dark_mode(server, browser, path):
    context, page = _dark(browser, f"{server}/{path}")
    try:
        assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
        _wait_for_widgets(page)
        page.wait_for_selector(".mambabook-frames", timeout=30_000)
        page.wait_for_timeout(300)
        texts = page.evaluate(CONTRAST_JS)
        assert texts, f"{path}: no widget text found"
        poor = [t for t in texts if t["ratio"] < 4.5]
        assert not poor, f"{path}: widget text below 4.5:1 contrast in dark mode: {poor[:4]}"
        light = [t for t in texts if t["background"] > 0.5]
        assert not light, f"{path}: widgets stay light in dark mode: {light[:4]}"
    finally:
        context.close()


def main() -> None:
    """Print the counts for every page of the built site (a before/after record)."""
    import contextlib
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright
    from test_site import ARGS, CHROMIUM, SITE, QuietHandler

    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{httpd.server_address[1]}"
    totals = {"code blocks": 0, "wide": 0, "bars": 0, "downloads repeated": 0}
    with sync_playwright() as pw, contextlib.closing(
            pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)) as b:
        for path in _pages():
            with opened(b, f"{root}/{path}") as (page, _):
                _wait_for_widgets(page)
                page.wait_for_timeout(300)
                wide = _measure(page, OVERFLOW_JS)
                blocks = page.evaluate("() => document.querySelectorAll("
                                       "'.cell_input pre, .cell_output pre, .cell_output .output').length")
                left = page.evaluate(LEFTOVER_JS)
                downloads = page.evaluate(DOWNLOADS_JS)
                col = page.evaluate("() => document.querySelector('.bd-article').clientWidth")
                print(f"{path:42s} column {col} px; sideways-scrolling blocks {len(wide)} of {blocks} "
                      f"(code {sum(w.startswith('code') for w in wide)}); bars {left}; downloads {downloads}")
                totals["code blocks"] += blocks
                totals["wide"] += len(wide)
                totals["bars"] += left["views"] + left["empty"]
                totals["downloads repeated"] += len(downloads) - len(set(downloads))
                if path.endswith("intro.html"):
                    h = page.evaluate("() => document.querySelector('article table').offsetHeight")
                    print(f"  intro table height {h} px; title {page.title()!r}")
        for path in ("chapters/intro.html", "chapters/03_linear_attention_rwkv.html"):
            context, page = _dark(b, f"{root}/{path}")
            _wait_for_widgets(page)
            page.wait_for_timeout(500)
            texts = page.evaluate(CONTRAST_JS)
            print(f"dark {path}: min contrast {min(t['ratio'] for t in texts):.2f}, "
                  f"max background luminance {max(t['background'] for t in texts):.2f}")
            context.close()
    print(totals)
    httpd.shutdown()


if __name__ == "__main__":
    main()
