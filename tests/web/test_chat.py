"""A customer in the widget and an agent in the console, in two real Chromium profiles."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.web.browser import TIMEOUT_MS, Console, Widget, rest

# Generous: a busy machine slows the browser and the cloud; every wait is for a condition.
pytestmark = pytest.mark.timeout(900)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_customer_and_agent_chat_with_queue_typing_states_and_read_receipts(cloud, contexts):
    widget = Widget(contexts().new_page(), cloud.web_url).open()
    # Nobody online: the customer writes, waits, and sees where.
    widget.send("Hello, my order is late")
    widget.wait_status("waiting")
    widget.host.locator(".queue").get_by_text("number 1 in the queue").wait_for(timeout=TIMEOUT_MS)

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


#: The customer's first message, which opens the conversation of ``active_pair``.
OPENING = "Hi, I need help"


def active_pair(cloud, contexts, agent=None):
    """A customer (widget) and an agent (console, showing the conversation), chatting after ``OPENING``."""
    agent = agent or uid("agent")
    console = Console(contexts().new_page(), cloud.web_url).sign_in(agent)
    customer_context = contexts()
    widget = Widget(customer_context.new_page(), cloud.web_url).start(OPENING)
    widget.wait_status("active")
    console.open_conversation(widget.conversation_id)
    console.wait_for_bodies([OPENING])
    return customer_context, widget, console


def test_peeking_opens_no_conversation_and_the_first_message_opens_one(cloud, contexts):
    agent = uid("agent")
    console = Console(contexts().new_page(), cloud.web_url).sign_in(agent)
    page = contexts().new_page()
    widget = Widget(page, cloud.web_url).open()
    welcome = widget.host.locator(".welcome")
    assert "reply within" in welcome.inner_text()
    user = widget.host.get_attribute("data-user")
    # Peeking takes nobody's capacity: no conversation, no agent joined.
    assert rest(cloud, "GET", "/conversations", user, "customer")[1]["conversations"] == []
    assert widget.host.get_attribute("data-conversation-id") is None
    console.page.locator(".load").get_by_text("0 of").wait_for(timeout=TIMEOUT_MS)
    # The first message opens it (test_a_lost_answer_to_opening... reloads in between).
    widget.send("Is anyone there?")
    widget.wait_status("active")
    console.open_conversation(widget.conversation_id)
    console.wait_for_bodies(["Is anyone there?"])
    assert welcome.is_hidden()


def test_offline_messages_are_delivered_once_in_order_when_back_online(cloud, contexts):
    customer_context, widget, console = active_pair(cloud, contexts)
    widget.send("before")
    console.wait_for_bodies([OPENING, "before"])

    customer_context.set_offline(True)
    widget.wait_connection("offline")
    widget.host.locator(".banner").get_by_text("offline").wait_for(timeout=TIMEOUT_MS)
    for text in ("one", "two", "three"):
        widget.send(text)
    # Kept in the IndexedDB outbox, shown as queued, not on the other side.
    widget.page.wait_for_function(
        "() => document.querySelector('oncechat-widget').shadowRoot"
        ".querySelectorAll('.pending li[data-state=queued]').length === 3", timeout=TIMEOUT_MS)
    assert console.user_bodies() == [OPENING, "before"]

    customer_context.set_offline(False)
    expected = [OPENING, "before", "one", "two", "three"]
    console.wait_for_bodies(expected)
    widget.wait_for_bodies(expected)
    widget.wait_connection("open")
    widget.page.wait_for_function(
        "() => document.querySelector('oncechat-widget').shadowRoot.querySelectorAll('.pending li').length === 0",
        timeout=TIMEOUT_MS)
    assert console.user_bodies() == expected
    assert widget.user_bodies() == expected


def test_reload_mid_send_loses_nothing_duplicates_nothing_and_keeps_the_conversation(cloud, contexts):
    customer_context, widget, console = active_pair(cloud, contexts)
    cid = widget.conversation_id
    texts = [f"burst {i}" for i in range(6)]
    # Into the outbox all at once (one in flight at a time), then reload at once:
    # most are still unsent, one may be in flight or accepted unseen.
    widget.page.evaluate(
        """async texts => {
            const w = document.querySelector('oncechat-widget');
            for (const t of texts) await w.chat.send(w.conversationId, t);
        }""", texts)
    widget.page.reload()
    widget.page.wait_for_function(
        "() => document.querySelector('oncechat-widget')?.dataset.conversationId", timeout=TIMEOUT_MS)
    assert widget.conversation_id == cid
    console.wait_for_bodies([OPENING, *texts])
    widget.wait_for_bodies([OPENING, *texts])
    # One conversation for this customer, each message stored once.
    user = widget.host.get_attribute("data-user")
    status, convs = rest(cloud, "GET", "/conversations", user, "customer")
    assert status == 200 and [c["conversationId"] for c in convs["conversations"]] == [cid]
    status, page = rest(cloud, "GET", f"/conversations/{cid}/messages?limit=100", user, "customer")
    assert [m["body"] for m in page["messages"] if m["senderRole"] == "customer"] == [OPENING, *texts]


def test_transfer_and_close_in_the_console_show_in_the_widget_and_a_message_reopens(cloud, contexts):
    second = uid("agent-b")
    console_b = Console(contexts().new_page(), cloud.web_url).sign_in(second)
    # Agent B is full (capacity 0), so the conversation goes to agent A.
    console_b.page.fill("#capacity", "0")
    console_b.page.press("#capacity", "Tab")
    console_b.page.locator(".load").get_by_text("of 0 active").wait_for(timeout=TIMEOUT_MS)
    _, widget, console = active_pair(cloud, contexts)
    cid = widget.conversation_id
    widget.send("can you transfer me?")
    console.wait_for_bodies([OPENING, "can you transfer me?"])
    console_b.page.fill("#capacity", "3")
    console_b.page.press("#capacity", "Tab")
    console.page.locator(f"#transfer-to option[value='{second}']").wait_for(state="attached", timeout=TIMEOUT_MS)
    console.page.select_option("#transfer-to", second)
    console.page.click(".transfer")

    widget.host.locator(".who").get_by_text(f"chatting with {second}").wait_for(timeout=TIMEOUT_MS)
    console_b.open_conversation(cid)
    console_b.wait_for_bodies([OPENING, "can you transfer me?"])
    console_b.send("agent B here")
    widget.wait_for_bodies([OPENING, "can you transfer me?", "agent B here"])

    console_b.page.click(".close")
    widget.wait_status("closed")
    widget.host.locator(".closed-note").wait_for(timeout=TIMEOUT_MS)
    console_b.page.wait_for_function("() => document.querySelector('.view').dataset.status === 'closed'",
                                     timeout=TIMEOUT_MS)
    # Within the window the customer's message reopens it (back to the queue, then to an agent).
    widget.send("one more thing")
    widget.page.wait_for_function(
        "() => ['waiting', 'active'].includes(document.querySelector('oncechat-widget').dataset.status)",
        timeout=TIMEOUT_MS)
    widget.wait_for_bodies([OPENING, "can you transfer me?", "agent B here", "one more thing"])
    assert widget.conversation_id == cid


def test_two_tabs_of_one_customer_send_once_and_show_the_same(cloud, contexts):
    customer_context, first, console = active_pair(cloud, contexts)
    second = Widget(customer_context.new_page(), cloud.web_url).open()
    assert second.conversation_id == first.conversation_id
    sent = [OPENING]
    for i in range(3):
        for tab, name in ((first, "tab1"), (second, "tab2")):
            text = f"{name} #{i}"
            tab.send(text)
            sent.append(text)
            tab.wait_for_bodies(sent)  # typed one after the other, like a person switching tabs
    console.wait_for_bodies(sent)
    first.wait_for_bodies(sent)
    second.wait_for_bodies(sent)
    console.send("got all six")
    first.wait_for_bodies([*sent, "got all six"])
    second.wait_for_bodies([*sent, "got all six"])
    # Same states in both tabs (the agent has the conversation open: read).
    for tab in (first, second):
        tab.page.wait_for_function(
            "() => [...document.querySelector('oncechat-widget').shadowRoot.querySelectorAll('.log li.own')]"
            ".every(li => li.dataset.state === 'read')", timeout=TIMEOUT_MS)
    assert console.user_bodies() == [*sent, "got all six"]


def test_two_console_tabs_of_one_agent_stay_consistent(cloud, contexts):
    agent = uid("agent")
    desk = contexts()
    first = Console(desk.new_page(), cloud.web_url).sign_in(agent)
    second = Console(desk.new_page(), cloud.web_url)
    second.page.goto(cloud.web_url + "/console")  # already signed in: the same agent, the same connection
    second.page.wait_for_function("a => document.body.dataset.agent === a", arg=agent, timeout=TIMEOUT_MS)
    widget = Widget(contexts().new_page(), cloud.web_url).start("question for the desk")
    widget.wait_status("active")
    cid = widget.conversation_id
    for tab in (first, second):
        tab.page.locator(f".mine button[data-conversation-id='{cid}'] .unread").wait_for(timeout=TIMEOUT_MS)
    first.open_conversation(cid)  # reading in one tab clears the unread mark in the other
    second.page.locator(f".mine button[data-conversation-id='{cid}'] .unread").wait_for(
        state="detached", timeout=TIMEOUT_MS)
    second.open_conversation(cid)
    second.send("answer from tab two")
    first.wait_for_bodies(["question for the desk", "answer from tab two"])
    widget.wait_for_bodies(["question for the desk", "answer from tab two"])
    assert first.user_bodies() == second.user_bodies() == ["question for the desk", "answer from tab two"]
    # Presence set in one tab shows in the other; going away hands the chat back to the queue,
    # and the customer sees it (nobody else is online: it waits).
    first.page.select_option("#presence", "away")
    second.page.locator(".load").get_by_text("away").wait_for(timeout=TIMEOUT_MS)
    widget.wait_status("waiting")
    widget.host.locator(".log li.system .body").get_by_text(f"{agent} is no longer available").wait_for(
        timeout=TIMEOUT_MS)
    widget.host.locator(".who").get_by_text("Waiting for an agent").wait_for(timeout=TIMEOUT_MS)
    for tab in (first, second):  # no longer the agent's: it leaves "mine" in both tabs
        tab.page.locator(f".mine button[data-conversation-id='{cid}']").wait_for(
            state="detached", timeout=TIMEOUT_MS)


def test_a_lost_answer_to_opening_then_a_reload_still_make_one_conversation(cloud, contexts):
    page = contexts().new_page()
    lost: list[str] = []
    losing = [True]

    def lose_the_answers(route):
        if route.request.method == "POST" and losing[0]:
            route.fetch()  # the server opens the conversation...
            lost.append(route.request.headers.get("idempotency-key", ""))
            route.abort()  # ...and its answer never reaches the page
        else:
            route.continue_()

    # Every answer is lost until the reload, so the widget is still retrying
    # (its banner up) when the page goes away.
    page.route(f"{cloud.rest_url}/conversations", lose_the_answers)
    widget = Widget(page, cloud.web_url).open()
    widget.send("Is anyone there?")  # the first message opens the conversation
    widget.host.locator(".banner").get_by_text("Starting the conversation").wait_for(timeout=TIMEOUT_MS)
    losing[0] = False
    assert lost and lost[0] and set(lost) == {lost[0]}  # every retry sent the same key
    page.reload()
    page.wait_for_function("() => document.querySelector('oncechat-widget')?.dataset.conversationId",
                           timeout=TIMEOUT_MS)
    widget.wait_for_bodies(["Is anyone there?"])  # the message written before the reload, queued once
    user = widget.host.get_attribute("data-user")
    status, convs = rest(cloud, "GET", "/conversations", user, "customer")
    assert status == 200
    assert [c["conversationId"] for c in convs["conversations"]] == [widget.conversation_id]
    status, page_ = rest(cloud, "GET", f"/conversations/{widget.conversation_id}/messages?limit=100", user,
                         "customer")
    assert [m["body"] for m in page_["messages"] if m["senderRole"] == "customer"] == ["Is anyone there?"]


def test_the_seq_rule_in_the_browser_resumes_a_lost_push_and_drops_a_duplicate(cloud, contexts):
    """Between the widget and the gateway: one push is lost, the next arrives twice."""
    agent = uid("agent")
    console = Console(contexts().new_page(), cloud.web_url).sign_in(agent)
    page = contexts().new_page()
    lost: list[dict] = []
    from_widget: list[dict] = []

    def between(ws):
        server = ws.connect_to_server()

        def upstream(raw):
            from_widget.append(json.loads(raw))
            server.send(raw)

        def downstream(raw):
            frame = json.loads(raw)
            if frame.get("type") == "message" and frame.get("body") == "first of two" and not lost:
                lost.append(frame)  # this push never reaches the page
                return
            ws.send(raw)
            if frame.get("type") == "message" and frame.get("body") == "second of two":
                ws.send(raw)  # and this one arrives twice

        ws.on_message(upstream)
        server.on_message(downstream)

    page.route_web_socket(re.compile(r"^wss?://"), between)
    widget = Widget(page, cloud.web_url).start("hello")  # the cursor before the gap is past the first resume's
    widget.wait_status("active")
    console.open_conversation(widget.conversation_id)
    console.wait_for_bodies(["hello"])
    console.send("first of two")
    console.send("second of two")
    widget.wait_for_bodies(["hello", "first of two", "second of two"])
    assert lost, "the first push was not intercepted"
    # The gap (second before first) made the SDK resume from the seq before the lost one.
    gap_at = lost[0]["seq"] - 1
    assert gap_at >= 2
    resumes = [f["cursors"] for f in from_widget if f.get("action") == "resume"]
    assert {widget.conversation_id: gap_at} in resumes, resumes
    assert widget.user_bodies() == ["hello", "first of two", "second of two"]


def test_a_message_left_by_a_closed_tab_is_sent_once_by_the_tab_that_takes_over(cloud, contexts):
    customer_context, first, console = active_pair(cloud, contexts)
    second = Widget(customer_context.new_page(), cloud.web_url).open()
    customer_context.set_offline(True)
    first.wait_connection("offline")
    first.send("written just before the tab closed")
    first.page.wait_for_function(
        "() => document.querySelector('oncechat-widget').shadowRoot"
        ".querySelectorAll('.pending li[data-state=queued]').length === 1", timeout=TIMEOUT_MS)
    first.page.close()  # the tab is gone; its message waits in IndexedDB
    customer_context.set_offline(False)
    console.wait_for_bodies([OPENING, "written just before the tab closed"])
    second.wait_for_bodies([OPENING, "written just before the tab closed"])
    second.send("and this one from the other tab")
    expected = [OPENING, "written just before the tab closed", "and this one from the other tab"]
    console.wait_for_bodies(expected)
    assert console.user_bodies() == expected
