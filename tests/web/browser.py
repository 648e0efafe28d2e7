"""Driving Debian's Chromium with Playwright for the browser tests and `make screenshots`.

Playwright's own browser download is not used: the tests launch the
system's Chromium (``apt-get install chromium``), found at
``$ONCECHAT_CHROMIUM`` or ``/usr/bin/chromium``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET

CHROMIUM = os.environ.get("ONCECHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
#: Generous: the machine running the suite may be busy; every wait is for a condition.
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    """The Chromium binary, or an error that says how to install it (never a skip)."""
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: the browser tests need it. "
            "Install it with `apt-get install -y chromium` (.ci/run does), "
            "or point ONCECHAT_CHROMIUM at a Chromium binary.")
    return CHROMIUM


def launch(playwright: Any) -> Any:
    """A headless Chromium."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def token(user: str, role: str) -> str:
    return mint_token(LOCAL_JWT_SECRET, user, role)


def rest(cloud: Any, method: str, path: str, user: str, role: str, body: Any = None) -> tuple[int, Any]:
    """One REST call as ``user`` (a development token of the local stage)."""
    data = json.dumps(body).encode() if body is not None else (b"{}" if method != "GET" else None)
    req = urllib.request.Request(cloud.rest_url + path, method=method, data=data, headers={
        "Authorization": f"Bearer {token(user, role)}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def reset_desk(cloud: Any) -> None:
    """Leave the shared cloud as a new test expects it: no agent online, nobody waiting."""
    status, agents = rest(cloud, "GET", "/agents", "test-admin", "agent")
    assert status == 200, agents
    for agent in agents["agents"]:
        if agent["status"] != "offline":
            rest(cloud, "PUT", "/agents/me/status", agent["agentId"], "agent", {"status": "offline"})
    status, queue = rest(cloud, "GET", "/queue?limit=100", "test-admin", "agent")
    assert status == 200, queue
    for conv in queue["conversations"]:
        rest(cloud, "POST", f"/conversations/{conv['conversationId']}/close", conv["customerId"], "customer")


class Widget:
    """The customer widget on the demo page, seen through its shadow root."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.host = page.locator("oncechat-widget")

    def open(self) -> Widget:
        """Open the panel: this visitor's conversation when there is one, else the welcome (no conversation yet)."""
        self.page.goto(self.base_url + "/")
        if self.host.get_attribute("data-open") is None:
            self.host.locator(".launcher").click()
        self.page.wait_for_function(
            """() => { const w = document.querySelector('oncechat-widget');
                       return w?.dataset.conversationId || (w && !w.shadowRoot.querySelector('.welcome').hidden); }""",
            timeout=TIMEOUT_MS)
        return self

    def start(self, text: str) -> Widget:
        """Open the panel and write the first message, which opens the conversation."""
        self.open()
        self.send(text)
        self.page.wait_for_function(
            "() => document.querySelector('oncechat-widget')?.dataset.conversationId", timeout=TIMEOUT_MS)
        return self

    @property
    def conversation_id(self) -> str:
        return str(self.host.get_attribute("data-conversation-id"))

    def send(self, text: str) -> None:
        box = self.host.locator("#input")
        box.fill(text)
        box.press("Enter")

    def bodies(self) -> list[str]:
        """Processed messages shown, in order (system messages included)."""
        return self.page.eval_on_selector(
            "oncechat-widget", "e => [...e.shadowRoot.querySelectorAll('.log li .body')].map(b => b.textContent)")

    def wait_for_bodies(self, expected: list[str], timeout: int = TIMEOUT_MS) -> None:
        """Until the non-system messages shown are exactly ``expected``."""
        self.page.wait_for_function(
            """expected => {
                const got = [...document.querySelector('oncechat-widget').shadowRoot
                    .querySelectorAll('.log li:not(.system) .body')].map(b => b.textContent);
                return JSON.stringify(got) === JSON.stringify(expected);
            }""", arg=expected, timeout=timeout)

    def user_bodies(self) -> list[str]:
        return self.page.eval_on_selector(
            "oncechat-widget",
            "e => [...e.shadowRoot.querySelectorAll('.log li:not(.system) .body')].map(b => b.textContent)")

    def wait_status(self, status: str) -> None:
        self.page.wait_for_function(
            "s => document.querySelector('oncechat-widget')?.dataset.status === s", arg=status, timeout=TIMEOUT_MS)

    def wait_connection(self, state: str) -> None:
        self.page.wait_for_function(
            "s => document.querySelector('oncechat-widget')?.dataset.connection === s", arg=state, timeout=TIMEOUT_MS)


class Console:
    """The agent console page."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def sign_in(self, agent_id: str) -> Console:
        self.page.goto(self.base_url + "/console")
        # The page shows the sign-in form once it has read its config, or signs in by itself.
        self.page.wait_for_function(
            "() => !document.querySelector('.signin').hidden || document.body.dataset.connection",
            timeout=TIMEOUT_MS)
        if self.page.locator(".signin").is_visible():
            self.page.fill("#agent-id", agent_id)
            self.page.click(".signin button[type=submit]")
        self.page.wait_for_function(
            "() => document.body.dataset.connection === 'open'", timeout=TIMEOUT_MS)
        return self

    def open_conversation(self, conversation_id: str) -> None:
        button = self.page.locator(f".mine button[data-conversation-id='{conversation_id}']")
        button.wait_for(timeout=TIMEOUT_MS)
        button.click()
        self.page.wait_for_function(
            "c => document.querySelector('.log').dataset.conversationId === c", arg=conversation_id,
            timeout=TIMEOUT_MS)

    def send(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    def user_bodies(self) -> list[str]:
        return self.page.eval_on_selector_all(".log li:not(.system) .body", "els => els.map(e => e.textContent)")

    def wait_for_bodies(self, expected: list[str], timeout: int = TIMEOUT_MS) -> None:
        self.page.wait_for_function(
            """expected => {
                const got = [...document.querySelectorAll('.log li:not(.system) .body')].map(b => b.textContent);
                return JSON.stringify(got) === JSON.stringify(expected);
            }""", arg=expected, timeout=timeout)
