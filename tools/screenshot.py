"""Screenshot a page of the built site in headless Chromium: python tools/screenshot.py PAGE OUT.png [SELECTOR].

Serves _build/html on 127.0.0.1, waits for widgets, scrolls SELECTOR (if given) into view.
"""

import functools
import http.server
import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

SITE = Path(__file__).resolve().parents[1] / "_build" / "html"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(page_path: str, out: str, selector: str | None = None) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/{page_path}", wait_until="networkidle")
        page.wait_for_timeout(1500)
        if selector:
            page.locator(selector).first.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
        page.screenshot(path=out)
        browser.close()
    httpd.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
