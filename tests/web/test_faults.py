"""Both UIs under the local cloud's fault injection: dropped connections, duplicated frames, failing pushes."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import pytest

from tests.local_cloud import REPO_ROOT, LocalCloud
from tests.web.browser import TIMEOUT_MS
from tests.web.test_chat import OPENING, active_pair

# Generous: a busy machine slows the browser and the cloud; every wait is for a condition.
pytestmark = pytest.mark.timeout(900)

#: Another seed replays another fault pattern: ONCECHAT_WEB_FAULT_SEED=N.
SEED = os.environ.get("ONCECHAT_WEB_FAULT_SEED", "10")
FAULTS = "drop_connection=0.04,duplicate_frame=0.2,push_fail=0.05,push_lost_ack=0.05,crash_after_commit=0.05"


PENDING = "e => [...e.shadowRoot.querySelectorAll('.pending li')].map(l => l.textContent + ' ' + l.dataset.state)"


WATCH_BANNER = """host => {
    const root = host ? document.querySelector(host).shadowRoot : document;
    const banner = root.querySelector('.banner');
    window.banners = [];
    new MutationObserver(() => window.banners.push(banner.hidden ? '' : banner.textContent))
        .observe(banner, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


def injected(cloud: LocalCloud) -> dict[str, int]:
    """How many faults of each kind the cloud injected so far."""
    with urllib.request.urlopen(f"http://{cloud.host}:{cloud.ws_port}/_local/faults", timeout=30) as resp:
        return dict(json.loads(resp.read())["injected"])


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1", "--faults", FAULTS, "--fault-seed", SEED) as running:
        yield running


def test_every_message_shows_exactly_once_in_order_on_both_sides_under_faults(cloud, contexts):
    _, widget, console = active_pair(cloud, contexts)
    # Record every banner text each page shows from now on.
    widget.page.evaluate(WATCH_BANNER, "oncechat-widget")
    console.page.evaluate(WATCH_BANNER, "")
    drops_before = injected(cloud).get("drop_connection", 0)
    customer = [f"c{i}" for i in range(10)]
    agent = [f"a{i}" for i in range(10)]
    # Both write at once: the customer through the SDK, the agent by typing.
    widget.page.evaluate(
        """texts => { const w = document.querySelector('oncechat-widget');
                      (async () => { for (const t of texts) await w.chat.send(w.conversationId, t); })(); }""",
        customer)
    for text in agent:
        console.send(text)
    everything = {OPENING, *customer, *agent}
    for page, js in (
        (widget.page, "() => [...document.querySelector('oncechat-widget').shadowRoot"
                      ".querySelectorAll('.log li:not(.system) .body')].map(b => b.textContent)"),
        (console.page, "() => [...document.querySelectorAll('.log li:not(.system) .body')].map(b => b.textContent)"),
    ):
        try:
            page.wait_for_function(f"n => ({js})().length >= n", arg=len(everything), timeout=TIMEOUT_MS * 3)
        except Exception:
            raise AssertionError(f"widget {widget.user_bodies()} {widget.host.get_attribute('data-connection')}"
                                 f" pending {widget.page.eval_on_selector('oncechat-widget', PENDING)};"
                                 f" console {console.user_bodies()} pending "
                                 f"{console.page.eval_on_selector_all('.pending li', 'e => e.length')}") from None
    on_widget = widget.user_bodies()
    on_console = console.user_bodies()
    # Exactly once each, the same order on both sides (the seq order), each person's in the order typed.
    assert sorted(on_widget) == sorted(everything) and len(on_widget) == len(everything)
    assert on_console == on_widget
    assert [t for t in on_widget if t.startswith("c")] == customer
    assert [t for t in on_widget if t.startswith("a")] == agent
    # Nothing left unsent, and the faults did strike.
    widget.page.wait_for_function(
        "() => document.querySelector('oncechat-widget').shadowRoot.querySelectorAll('.pending li').length === 0",
        timeout=TIMEOUT_MS)
    console.page.wait_for_function("() => document.querySelectorAll('.pending li').length === 0",
                                   timeout=TIMEOUT_MS)
    counts = injected(cloud)
    assert counts.get("drop_connection", 0) + counts.get("duplicate_frame", 0) > 0, counts
    if counts.get("drop_connection", 0) > drops_before:
        # A dropped connection shows the reconnecting banner (in the page whose socket dropped).
        banners = widget.page.evaluate("() => window.banners") + console.page.evaluate("() => window.banners")
        assert any("Reconnecting" in b for b in banners), banners
