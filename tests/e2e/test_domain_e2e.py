"""The customer-service domain end to end: real sockets, the local cloud, moto server over HTTP.

Lifecycle with system messages and ``conversation`` frames, capacity and
racing assignments, racing transitions, typing and read receipts,
multi-device and rate limiting, through the same path a deployed client uses.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import connect
from tests.local_cloud import REPO_ROOT, LocalCloud


# Rate-limit windows of an hour: a test that fills one needs no speed, only a count
# (a run crosses at most one window boundary).
RATE_WINDOW_SECONDS = 3600


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1",
                    env={"RATE_WINDOW_SECONDS": str(RATE_WINDOW_SECONDS)}) as running:
        yield running


def token(user: str, role: str = "customer") -> str:
    return mint_token(LOCAL_JWT_SECRET, user, role)


def rest(cloud: Any, method: str, path: str, user: str, role: str = "customer",
         body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {token(user, role)}",
            **(headers or {})}
    data = json.dumps(body).encode() if body is not None else (b"{}" if method != "GET" else None)
    req = urllib.request.Request(cloud.rest_url + path, method=method, headers=hdrs, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 180))


async def online_agent(cloud: Any, capacity: int | None = None) -> tuple[Any, str]:
    agent_id = uid("agent")
    if capacity is not None:  # set before connecting: no conversation lands before it holds
        assert rest(cloud, "PUT", "/agents/me/status", agent_id, "agent",
                    {"status": "online", "capacity": capacity})[0] == 200
    ws = await connect(cloud.websocket_url, token(agent_id, "agent"))
    await ws.resume()  # the connect is recorded once the handshake is done
    return ws, agent_id


async def until_online(cloud: Any, agent_id: str, timeout: float = 30.0) -> None:
    """Wait until the desk lists ``agent_id`` online."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = (await asyncio.to_thread(rest, cloud, "GET", "/agents", agent_id, "agent"))[1]
        if any(a["agentId"] == agent_id and a["status"] == "online" for a in listed.get("agents", [])):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{agent_id} not online within {timeout} s")


async def until_acked(cloud: Any, user: str, cid: str, seq: int, timeout: float = 30.0) -> None:
    """Wait until ``user``'s stored ack cursor of ``cid`` reached ``seq``."""
    ddb = cloud.client("dynamodb")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = (await asyncio.to_thread(
            ddb.get_item, TableName="oncechat-local-participants", ConsistentRead=True,
            Key={"userId": {"S": user}, "conversationId": {"S": cid}})).get("Item")
        if item and int(item["ackSeq"]["N"]) >= seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"ack {seq} of {user} not stored within {timeout} s")


async def events_until(ws: Any, event: str, cid: str, timeout: float = 60.0) -> list[str]:
    """The ``conversation`` events of ``cid`` received until ``event``."""
    seen: list[str] = []
    while event not in seen:
        frame = await ws.next_event("conversation", timeout)
        if frame["conversationId"] == cid:
            seen.append(frame["event"])
    return seen


def test_lifecycle_transfer_close_and_reopen_over_the_real_path(cloud):
    async def scenario():
        amy, amy_id = await online_agent(cloud, capacity=3)
        customer_id = uid("cust")
        key = {"Idempotency-Key": uid("key")}
        status, conv = rest(cloud, "POST", "/conversations", customer_id, headers=key)
        assert status == 201 and conv["agentId"] == amy_id and conv["lastSeq"] == 1
        assert rest(cloud, "POST", "/conversations", customer_id, headers=key) == (200, conv)
        cid = conv["conversationId"]
        cara = await connect(cloud.websocket_url, token(customer_id))
        await cara.resume()
        assigned = await cara.collect(cid, 1)
        assert [(m["event"], m["agentId"], m["senderRole"]) for m in assigned] == [
            ("assigned", amy_id, "system")]
        assert "assigned" in await events_until(amy, "assigned", cid)

        await cara.send(cid, "my parcel is late")
        bob, bob_id = await online_agent(cloud)
        status, moved = rest(cloud, "POST", f"/conversations/{cid}/transfer", amy_id, "agent",
                             {"agentId": bob_id})
        assert status == 200 and (moved["agentId"], moved["lastSeq"]) == (bob_id, 3)
        assert "transferred" in await events_until(bob, "transferred", cid)
        assert "transferred" in await events_until(amy, "transferred", cid)
        history = await bob.collect(cid, 3)  # a gap from 0: the client rule resumes from seq 1
        assert [m["seq"] for m in history] == [1, 2, 3]
        assert history[1]["body"] == "my parcel is late"
        assert history[2]["previousAgentId"] == amy_id

        status, closed = rest(cloud, "POST", f"/conversations/{cid}/close", bob_id, "agent")
        assert status == 200 and closed["status"] == "closed"
        assert rest(cloud, "POST", f"/conversations/{cid}/close", customer_id)[0] == 409
        with pytest.raises(Exception) as refused:
            await bob.send(cid, "anything else?")
        assert getattr(refused.value, "code", None) == "conversation_closed"

        # Within the window the customer's message reopens it and it is assigned again.
        acc = await cara.send(cid, "actually, one more thing")
        assert acc["seq"] == 6
        got = await cara.collect(cid, 7)  # its own messages (2, 6) are not pushed back to it
        assert [(m["seq"], m.get("event")) for m in got] == [
            (3, "transferred"), (4, "closed"), (5, "reopened"), (7, "assigned")]
        status, view = rest(cloud, "GET", f"/conversations/{cid}", customer_id)
        assert view["status"] == "active" and view["agentId"] == bob_id  # back to its agent, who has room
        for ws in (amy, bob, cara):
            await ws.close()

    run(scenario())


def test_racing_assignments_and_transitions_on_the_real_path(cloud):
    async def scenario():
        agents = [await online_agent(cloud, capacity=2) for _ in range(2)]
        customers = [uid("cust") for _ in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(lambda c: rest(cloud, "POST", "/conversations", c), customers))
        assert all(status == 201 for status, _ in made)
        status, listed = rest(cloud, "GET", "/agents", agents[0][1], "agent")
        loads = {a["agentId"]: (a["activeCount"], a["capacity"]) for a in listed["agents"]}
        for _, agent_id in agents:
            assert loads[agent_id] == (2, 2)  # full, and never over
        for a in listed["agents"]:
            assert a["activeCount"] <= a["capacity"]
        mine = {agent_id: rest(cloud, "GET", "/conversations?status=active", agent_id, "agent")[1]
                for _, agent_id in agents}
        assert all(len(page["conversations"]) == 2 for page in mine.values())

        # Two closes of one conversation at once: one applies, the other is a conflict.
        agent_id = agents[0][1]
        cid = mine[agent_id]["conversations"][0]["conversationId"]
        customer = next(c["customerId"] for _, c in made if c["conversationId"] == cid)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda who: rest(cloud, "POST", f"/conversations/{cid}/close", *who),
                                    [(customer, "customer"), (agent_id, "agent")]))
        assert sorted(status for status, _ in results) == [200, 409]
        status, page = rest(cloud, "GET", f"/conversations/{cid}/messages", customer)
        assert [m.get("event") for m in page["messages"]] == ["assigned", "closed"]
        # The queue's leftovers are closed by their customers, leaving nothing for other tests.
        for _, c in made:
            if rest(cloud, "GET", f"/conversations/{c['conversationId']}", c["customerId"])[1][
                    "status"] == "waiting":
                assert rest(cloud, "POST", f"/conversations/{c['conversationId']}/close",
                            c["customerId"])[0] == 200
        for ws, _ in agents:
            await ws.close()

    run(scenario())


def test_typing_read_and_multi_device_over_real_sockets(cloud):
    async def scenario():
        agent, agent_id = await online_agent(cloud)
        customer_id = uid("cust")
        status, conv = rest(cloud, "POST", "/conversations", customer_id)
        cid = conv["conversationId"]
        laptop = await connect(cloud.websocket_url, token(customer_id))
        phone = await connect(cloud.websocket_url, token(customer_id))
        for ws in (laptop, phone):
            await ws.resume()

        await laptop.typing(cid)
        typing = await agent.next_event("typing")
        assert (typing["conversationId"], typing["userId"], typing["role"]) == (cid, customer_id, "customer")

        acc = await laptop.send(cid, "from the laptop")
        await agent.send(cid, "hello there")
        on_phone = await phone.collect(cid, acc["seq"] + 1)
        assert [m["body"] for m in on_phone if m["senderRole"] != "system"] == [
            "from the laptop", "hello there"]
        await laptop.collect(cid, acc["seq"] + 1)

        await agent.read(cid, acc["seq"])
        for ws in (laptop, phone):
            read = await ws.next_event("read")
            assert (read["userId"], read["seq"]) == (agent_id, acc["seq"])
        status, view = rest(cloud, "GET", f"/conversations/{cid}", customer_id)
        assert {p["userId"]: p["readSeq"] for p in view["participants"]}[agent_id] == acc["seq"]

        # A fresh device resumes from the server's ack cursor.
        await phone.ack(cid, acc["seq"])
        await until_acked(cloud, customer_id, cid, acc["seq"])  # acks have no reply
        tablet = await connect(cloud.websocket_url, token(customer_id))
        resumed = await tablet.resume()
        assert resumed["conversations"][cid] == acc["seq"] + 1
        replayed = [f for f in tablet.frames if f.get("type") == "message"]
        assert [(m["seq"], m["body"]) for m in replayed] == [(acc["seq"] + 1, "hello there")]

        # Typing is rate-limited per connection: over the limit, rate_limited, and the
        # connection stays usable.
        for _ in range(45):
            await laptop.typing(cid)
        err = await laptop.next_error(20)
        assert err["code"] == "rate_limited"
        assert (await laptop.send(cid, "still here"))["seq"] == acc["seq"] + 2
        for ws in (agent, laptop, phone, tablet):
            await ws.close()

    run(scenario())


def test_terminal_chat_follows_events_and_runs_commands(cloud):
    import sys

    async def scenario():
        agent_id, customer_id = uid("agent"), uid("cust")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", "--user", agent_id, "--role", "agent",
            "--ws", cloud.websocket_url, "--rest", cloud.rest_url, cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

        async def line_with(text: str) -> str:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), 60)
                assert raw, f"the terminal chat ended before printing {text!r}"
                if text in raw.decode():
                    return raw.decode()

        async def type_line(text: str) -> None:
            proc.stdin.write(text.encode() + b"\n")
            await proc.stdin.drain()

        try:
            await line_with("* connected")
            await until_online(cloud, agent_id)
            status, conv = rest(cloud, "POST", "/conversations", customer_id)
            cid = conv["conversationId"]
            assert conv["agentId"] == agent_id
            assert "assigned" in await line_with(f"* [{cid[:8]}] assigned")
            customer = await connect(cloud.websocket_url, token(customer_id))
            await customer.resume()
            await customer.send(cid, "hello from the customer")
            await line_with("hello from the customer")
            await type_line("hi, how can I help?")
            got = await customer.collect(cid, 3)
            assert got[-1]["body"] == "hi, how can I help?" and got[-1]["senderId"] == agent_id
            read = await customer.next_event("read")
            assert read["userId"] == agent_id
            await type_line("/queue")
            assert "* queue:" in await line_with("* queue:")
            await type_line("/close")
            assert '"status":"closed"' in await line_with("* ok:")
            await customer.close()
        finally:
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 60)

    run(scenario())


def test_rest_writes_over_the_limit_answer_429_on_the_real_path(cloud):
    """30 REST writes per user and window; speed-independent: at most one window boundary is crossed."""
    agent_id = uid("agent")
    statuses = []
    for _ in range(61):
        status, body = rest(cloud, "PUT", "/agents/me/status", agent_id, "agent", {"status": "away"})
        statuses.append(status)
        if status == 429:
            break
    assert status == 429 and body["code"] == "rate_limited" and "retry in" in body["message"]
    assert set(statuses[:-1]) == {200} and 30 <= len(statuses) - 1 <= 60
    # Another user's writes are not limited by this one's.
    assert rest(cloud, "PUT", "/agents/me/status", uid("agent"), "agent", {"status": "away"})[0] == 200


async def only_online(cloud: Any, agent_id: str, timeout: float = 60.0) -> None:
    """Wait until ``agent_id`` is the one agent online (earlier tests' sockets have closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = (await asyncio.to_thread(rest, cloud, "GET", "/agents", agent_id, "agent"))[1]
        if [a["agentId"] for a in listed["agents"] if a["status"] == "online"] == [agent_id]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"other agents still online after {timeout} s: {listed}")


def test_an_agent_who_goes_away_hands_on_both_chats_and_the_customers_see_it(cloud):
    async def scenario():
        gus, gus_id = await online_agent(cloud, capacity=2)
        await only_online(cloud, gus_id)
        customers = []
        for _ in range(2):
            customer_id = uid("cust")
            status, conv = rest(cloud, "POST", "/conversations", customer_id)
            assert status == 201 and conv["agentId"] == gus_id
            ws = await connect(cloud.websocket_url, token(customer_id))
            await ws.resume()
            await ws.collect(conv["conversationId"], 1)
            customers.append((ws, customer_id, conv["conversationId"]))
        hal, hal_id = await online_agent(cloud, capacity=1)

        status, me = rest(cloud, "PUT", "/agents/me/status", gus_id, "agent", {"status": "away"})
        assert status == 200 and (me["status"], me["activeCount"]) == ("away", 0)

        # Each customer sees the move as a message of the conversation, in order, once.
        for ws, _, cid in customers:
            got = await ws.collect(cid, 2)  # after seq 1 (assigned), collected above
            assert [(m["seq"], m["event"], m["previousAgentId"]) for m in got] == [(2, "requeued", gus_id)]
            assert "is no longer available" in got[0]["body"]
        assert "requeued" in await events_until(gus, "requeued", customers[0][2])
        # The older one went to hal (capacity 1); the other waits: nobody is over capacity.
        views = [rest(cloud, "GET", f"/conversations/{cid}", customer_id)[1] for _, customer_id, cid in customers]
        assert [(v["status"], v["agentId"]) for v in views] == [("active", hal_id), ("waiting", None)]
        agents = {a["agentId"]: a for a in rest(cloud, "GET", "/agents", hal_id, "agent")[1]["agents"]}
        assert all(a["activeCount"] <= a["capacity"] for a in agents.values())
        assert (agents[gus_id]["activeCount"], agents[hal_id]["activeCount"]) == (0, 1)
        # gus may no longer write in it; hal answers.
        with pytest.raises(Exception) as refused:
            await gus.send(customers[0][2], "still there?")
        assert getattr(refused.value, "code", None) == "forbidden"
        assert (await hal.send(customers[0][2], "hal here, I have your chat"))["seq"] == 4
        for ws in (gus, hal, *(c[0] for c in customers)):
            await ws.close()

    run(scenario())
