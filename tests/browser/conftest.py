"""Fixtures of the browser tests: the built site served on 127.0.0.1, headless Chromium."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from test_site import ARGS, CHROMIUM, SITE, QuietHandler


@pytest.fixture(scope="module")
def server():
    if not SITE.exists():
        pytest.skip("no built site in _build/html: run `make book` first")
    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium not found: install it with `apt-get install chromium` "
                    "(Debian) and run `make browser` again")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
