"""Safe and usable: bodies are text, the pages' CSP forbids inline script, keyboard and 360 px use, scroll-back."""

from __future__ import annotations

import pytest

from tests.web.browser import TIMEOUT_MS, Console, Widget
from tests.web.test_chat import OPENING, active_pair

# Generous: a busy machine slows the browser and the cloud; every wait is for a condition.
pytestmark = pytest.mark.timeout(900)

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def test_a_markup_body_shows_as_text_on_both_sides_and_runs_nothing(cloud, contexts):
    _, widget, console = active_pair(cloud, contexts)
    dialogs = []
    for page in (widget.page, console.page):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    console.send(XSS)
    # The reply goes after the agent's message is shown: sent at once, it could take the earlier seq.
    widget.wait_for_bodies([OPENING, XSS])
    widget.send(XSS + " back")
    widget.wait_for_bodies([OPENING, XSS, XSS + " back"])
    console.wait_for_bodies([OPENING, XSS, XSS + " back"])
    assert widget.page.eval_on_selector(
        "oncechat-widget", "e => e.shadowRoot.querySelectorAll('.log img, .log script').length") == 0
    assert console.page.eval_on_selector_all(".log img, .log script", "els => els.length") == 0
    assert dialogs == []


def test_the_pages_forbid_inline_script_and_other_origins(cloud, browser):
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/console"):
            response = page.goto(cloud.web_url + path)
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "default-src 'self'" in csp and "object-src 'none'" in csp
            # An injected inline script is refused by the browser.
            page.evaluate("""() => { const s = document.createElement('script');
                                     s.textContent = 'window.injected = 1'; document.body.append(s); }""")
            assert page.evaluate("() => window.injected === undefined")
        page.goto(cloud.web_url + "/")
        origins = page.evaluate(
            "() => [...new Set(performance.getEntriesByType('resource').map(r => new URL(r.name).origin))]")
        assert set(origins) <= {cloud.web_url, cloud.rest_url}, origins
    finally:
        context.close()


def test_keyboard_only_at_360_px(cloud, contexts):
    agent = "agent-kbd"
    console = Console(contexts().new_page(), cloud.web_url).sign_in(agent)
    page = contexts(viewport={"width": 360, "height": 740}).new_page()
    page.goto(cloud.web_url + "/")
    widget = Widget(page, cloud.web_url)
    # Tab to the launcher, open it with Enter: the focus lands in the message box.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement?.tagName === 'ONCECHAT-WIDGET'"
                         " && document.activeElement.shadowRoot.activeElement?.classList.contains('launcher')"):
            break
    page.keyboard.press("Enter")
    widget.host.locator(".welcome").wait_for(timeout=TIMEOUT_MS)
    page.keyboard.type("typed with the keyboard only")  # the first message opens the conversation
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('oncechat-widget').dataset.conversationId",
                           timeout=TIMEOUT_MS)
    widget.wait_status("active")
    console.open_conversation(widget.conversation_id)
    console.wait_for_bodies(["typed with the keyboard only"])
    # The panel fills the narrow screen without horizontal scrolling; incoming messages are announced.
    box = widget.host.locator(".panel").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert widget.host.locator(".log").get_attribute("aria-live") == "polite"
    # Escape closes the panel and gives the focus back to the launcher.
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('oncechat-widget').hasAttribute('data-open')",
                           timeout=TIMEOUT_MS)
    # Console: presence by keyboard.
    console.page.focus("#presence")
    console.page.keyboard.press("ArrowDown")
    console.page.wait_for_function("() => document.body.dataset.presence === 'away'", timeout=TIMEOUT_MS)


def test_scroll_back_pages_history_with_before(cloud, contexts):
    _, widget, console = active_pair(cloud, contexts)
    sent = [f"history {i:02d}" for i in range(40)]
    widget.page.evaluate(
        """async texts => {
            const w = document.querySelector('oncechat-widget');
            for (const t of texts) await w.chat.send(w.conversationId, t);
        }""", sent)
    texts = [OPENING, *sent]
    widget.wait_for_bodies(texts)
    console.wait_for_bodies(texts)
    # A second device of the customer shows the latest page and pages back with `before`.
    other = Widget(contexts().new_page(), cloud.web_url)
    user = widget.host.get_attribute("data-user")
    other.page.add_init_script(
        f"localStorage.setItem('oncechat-visitor', '{user}');"
        f"localStorage.setItem('oncechat-conversation-{user}', '{{\"conversationId\":\"{widget.conversation_id}\"}}');")
    other.open()
    other.wait_for_bodies(texts)  # the new device's IndexedDB fills by resume from 0
    other.page.reload()
    other.page.wait_for_function(
        "() => document.querySelector('oncechat-widget')?.dataset.conversationId", timeout=TIMEOUT_MS)
    shown = other.user_bodies()
    assert shown == texts[-len(shown):] and len(shown) < len(texts)
    earlier = other.host.locator(".earlier")
    pages = 0
    while earlier.is_visible():
        count = len(other.bodies())
        earlier.click()
        other.page.wait_for_function(
            """n => { const r = document.querySelector('oncechat-widget').shadowRoot;
                     return r.querySelectorAll('.log li').length > n || r.querySelector('.earlier').hidden; }""",
            arg=count, timeout=TIMEOUT_MS)
        pages += 1
    assert pages >= 1
    other.wait_for_bodies(texts)


def test_the_console_is_usable_at_360_px(cloud, contexts):
    _, widget, _ = active_pair(cloud, contexts)
    narrow = Console(contexts(viewport={"width": 360, "height": 740}).new_page(), cloud.web_url)
    agent = widget.host.locator(".who").inner_text().rsplit(" ", 1)[-1]
    narrow.sign_in(agent)  # a second device of the same agent
    narrow.open_conversation(widget.conversation_id)
    widget.send("seen on a phone")
    narrow.wait_for_bodies([OPENING, "seen on a phone"])
    assert narrow.page.evaluate("() => document.documentElement.scrollWidth") <= 360
    for selector in (".mine", ".log", "#input", ".close"):
        box = narrow.page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, selector
