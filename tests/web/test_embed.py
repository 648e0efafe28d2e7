"""The README's embed snippet, pasted into a page of another origin, in Chromium.

The widget's module, styles and config.json come from the local cloud's web
server; the page comes from a plain HTTP server on another port (another
origin). One origin is listed in ``--embed-origins``, one is not.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.local_cloud import REPO_ROOT, LocalCloud, free_port
from tests.web.browser import TIMEOUT_MS, Widget
from infra.local.web import parse_origins

pytestmark = pytest.mark.timeout(900)

HOST = "127.0.0.1"
ALLOWED_PORT = free_port(HOST)
OTHER_PORT = free_port(HOST)


def readme_snippet() -> str:
    """The HTML block under "Embedding it on any site" in README.md, as a newcomer copies it."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("Embedding it on any site"):]
    match = re.search(r"```html\n(.*?)```", section, re.S)
    assert match, "README.md has no html block after 'Embedding it on any site'"
    return match.group(1)


class Site:
    """Someone else's website: a static page served from its own origin."""

    def __init__(self, root: Path, port: int) -> None:
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer((HOST, port), handler)
        self.origin = f"http://{HOST}:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1",
                    "--embed-origins", f"http://{HOST}:{ALLOWED_PORT}") as running:
        yield running


@pytest.fixture(scope="module")
def sites(cloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    root = tmp_path_factory.mktemp("shop")
    snippet = readme_snippet().replace("https://chat.example.com", cloud.web_url)
    (root / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>A shop</title></head>"
        f"<body><h1>Another company's shop</h1>\n{snippet}</body></html>")
    allowed, other = Site(root, ALLOWED_PORT), Site(root, OTHER_PORT)
    yield allowed, other
    allowed.close()
    other.close()


def test_the_readme_snippet_on_a_listed_origin_opens_the_chat_and_sends(cloud, sites, contexts):
    allowed, _ = sites
    assert allowed.origin != cloud.web_url
    page = contexts().new_page()
    widget = Widget(page, allowed.origin).open()
    assert page.evaluate("location.origin") == allowed.origin
    widget.send("Hello from another website")
    widget.wait_for_bodies(["Hello from another website"])
    # Accepted by the server (sent, delivered or read), not left queued in the outbox.
    widget.host.locator(".log li.own:not([data-state='queued']):not([data-state='failed'])").wait_for(
        timeout=TIMEOUT_MS)
    assert widget.host.locator(".banner").is_hidden()


def test_an_origin_not_listed_is_told_why(cloud, sites, contexts):
    _, other = sites
    page = contexts().new_page()
    page.goto(other.origin + "/")
    host = page.locator("oncechat-widget")
    host.locator(".launcher").click()
    banner = host.locator(".banner")
    banner.get_by_text(f"origin {other.origin} may not embed the chat").wait_for(timeout=TIMEOUT_MS)
    assert "EMBED_ORIGINS" in banner.text_content()


def test_a_wildcard_or_a_path_is_not_an_embedding_origin():
    assert parse_origins("http://a.example:8080, https://b.example") == ("http://a.example:8080",
                                                                         "https://b.example")
    with pytest.raises(ValueError, match="'\\*' cannot be used"):
        parse_origins("https://a.example,*")
    with pytest.raises(ValueError, match="not an origin"):
        parse_origins("https://a.example/shop/")
