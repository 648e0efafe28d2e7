"""A customer in the widget and an agent in the console, in two real Chromium profiles."""

from __future__ import annotations

import uuid

from tests.web.browser import TIMEOUT_MS, Console, Widget


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_customer_and_agent_chat_with_queue_typing_states_and_read_receipts(cloud, contexts):
    widget = Widget(contexts().new_page(), cloud.web_url).open()
    # Nobody online: the customer waits, and sees where.
    widget.wait_status("waiting")
    widget.host.locator(".queue").get_by_text("number 1 in the queue").wait_for(timeout=TIMEOUT_MS)
    widget.send("Hello, my order is late")

    agent = uid("agent")
    console = Console(contexts().new_page(), cloud.web_url).sign_in(agent)
    cid = widget.conversation_id
    # The agent joins: the widget says with whom, the console notifies (title badge) with an unread count.
    widget.wait_status("active")
    widget.host.locator(".who").get_by_text(f"chatting with {agent}").wait_for(timeout=TIMEOUT_MS)
    console.page.locator(f".mine button[data-conversation-id='{cid}'] .unread").wait_for(timeout=TIMEOUT_MS)
    console.page.wait_for_function("() => /^\\(\\d+\\) /.test(document.title)", timeout=TIMEOUT_MS)
    console.open_conversation(cid)
    console.wait_for_bodies(["Hello, my order is late"])

    # Typing, both ways.
    console.page.type("#input", "Let me check")
    widget.host.locator(".typing").get_by_text(f"{agent} is typing").wait_for(timeout=TIMEOUT_MS)
    console.page.fill("#input", "")
    widget.host.locator("#input").type("Thanks")
    console.page.locator(".typing").get_by_text("is typing").wait_for(timeout=TIMEOUT_MS)
    widget.host.locator("#input").fill("")

    console.send("Let me check that for you")
    widget.wait_for_bodies(["Hello, my order is late", "Let me check that for you"])
    # The agent read the customer's message; the customer's widget (open, visible) read the reply.
    widget.host.locator(".log li.own[data-state='read']").wait_for(timeout=TIMEOUT_MS)
    console.page.locator(".log li.own[data-state='read']").wait_for(timeout=TIMEOUT_MS)
    console.page.wait_for_function("() => !/^\\(/.test(document.title)", timeout=TIMEOUT_MS)
    assert console.user_bodies() == ["Hello, my order is late", "Let me check that for you"]
    assert widget.user_bodies() == ["Hello, my order is late", "Let me check that for you"]
