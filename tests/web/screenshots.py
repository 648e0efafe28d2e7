"""``make screenshots``: the widget (desktop and 360 px) and the console, into docs/img/.

Starts its own local cloud on free ports, plays a short conversation in
Chromium and writes ``docs/img/widget-desktop.png``, ``widget-mobile.png``
and ``console.png``.
"""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

from tests.local_cloud import REPO_ROOT, LocalCloud
from tests.web.browser import TIMEOUT_MS, Console, Widget, launch

OUT = REPO_ROOT / "docs" / "img"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with LocalCloud(REPO_ROOT) as cloud, sync_playwright() as playwright:
        browser = launch(playwright)
        desk = browser.new_context(viewport={"width": 1280, "height": 760})
        desk.set_default_timeout(TIMEOUT_MS)
        console = Console(desk.new_page(), cloud.web_url).sign_in("maria")
        console.page.fill("#capacity", "1")
        console.page.press("#capacity", "Tab")
        console.page.locator(".load").get_by_text("of 1 active").wait_for()

        shop = browser.new_context(viewport={"width": 1280, "height": 760})
        widget = Widget(shop.new_page(), cloud.web_url).start("Hi! My order #1042 hasn't arrived yet.")
        widget.wait_status("active")
        console.open_conversation(widget.conversation_id)
        console.wait_for_bodies(["Hi! My order #1042 hasn't arrived yet."])
        console.send("Sorry about that. Let me check the tracking for you.")
        widget.wait_for_bodies(["Hi! My order #1042 hasn't arrived yet.",
                                "Sorry about that. Let me check the tracking for you."])
        console.send("It left our warehouse yesterday and arrives tomorrow before noon.")
        widget.send("Great, thank you!")
        expected = ["Hi! My order #1042 hasn't arrived yet.",
                    "Sorry about that. Let me check the tracking for you.",
                    "It left our warehouse yesterday and arrives tomorrow before noon.",
                    "Great, thank you!"]
        widget.wait_for_bodies(expected)
        console.wait_for_bodies(expected)
        console.page.locator(".log li.own[data-state='read']").last.wait_for()
        widget.host.locator(".log li.own[data-state='read']").last.wait_for()
        console.page.type("#input", "Anything else I can")
        widget.host.locator(".typing").get_by_text("maria is typing").wait_for()

        # A second customer waits: maria's capacity is 1.
        other = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2)
        waiting = Widget(other.new_page(), cloud.web_url).start("Hello, do you ship to Norway?")
        waiting.wait_status("waiting")
        waiting.host.locator(".queue").get_by_text("number 1 in the queue").wait_for()
        waiting.host.locator(".log li.own").first.wait_for()
        console.page.locator(".queue li").first.wait_for()

        widget.page.screenshot(path=str(OUT / "widget-desktop.png"))
        waiting.page.screenshot(path=str(OUT / "widget-mobile.png"))
        console.page.screenshot(path=str(OUT / "console.png"))
        browser.close()
    for name in ("widget-desktop.png", "widget-mobile.png", "console.png"):
        print(OUT.relative_to(REPO_ROOT) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
