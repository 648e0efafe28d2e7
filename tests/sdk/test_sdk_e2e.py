"""The SDK against the local cloud over real sockets: chat, connections killed mid-send,
a restart with SQLite persistence, a refused token, and the documented example."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
import uuid

import pytest

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import (AuthError, Backoff, ConnectionState, MemoryStore, Message, OnceChatClient, SendRejected,
                    SqliteStore)
from tests.local_cloud import REPO_ROOT, LocalCloud


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1") as running:
        yield running


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sdk(cloud, user: str, role: str = "customer", **kwargs) -> OnceChatClient:
    kwargs.setdefault("backoff", Backoff(base=0.05, cap=0.5))
    return OnceChatClient(cloud.websocket_url, lambda: mint_token(LOCAL_JWT_SECRET, user, role),
                          rest_url=cloud.rest_url, **kwargs)


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def collect(client: OnceChatClient, cid: str, upto: int) -> list[Message]:
    """What the app sees of one conversation, until seq ``upto``."""
    out: list[Message] = []
    async for m in client.messages():
        if m.conversation_id == cid:
            out.append(m)
            if m.seq >= upto:
                break
    return out


async def collect_count(client: OnceChatClient, cid: str, count: int) -> list[Message]:
    """What the app sees of one conversation, until it has seen ``count`` messages (voids are not shown)."""
    out: list[Message] = []
    async for m in client.messages():
        if m.conversation_id == cid:
            out.append(m)
            if len(out) >= count:
                break
    return out


def history(cloud, cid: str, user: str) -> list[dict]:
    """Every stored message of a conversation (REST, paged)."""
    out, after = [], 0
    while after is not None:
        req = urllib.request.Request(f"{cloud.rest_url}/conversations/{cid}/messages?after={after}&limit=100",
                                     headers={"Authorization": f"Bearer {mint_token(LOCAL_JWT_SECRET, user, 'customer')}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = json.loads(resp.read())
        out += page["messages"]
        after = page["next"]
    return out


def assert_assigned(messages: list[Message], agent_id: str) -> None:
    """The transcript starts with the "assigned" system message, seq 1, naming the agent."""
    first = messages[0]
    assert (first.seq, first.sender_id, first.sender_role, first.message_id) == (
        1, "system", "system", "system-1")
    assert agent_id in first.body


async def pair(cloud, **customer_kwargs):
    """An agent and a customer in one active conversation; also its last seq (the assignment)."""
    agent_id, customer_id = uid("agent"), uid("cust")
    agent = sdk(cloud, agent_id, "agent")
    await agent.connect()  # the agent is online once connect() returns
    customer = sdk(cloud, customer_id, **customer_kwargs)
    await customer.connect()
    conv = await customer.open_conversation()
    assert conv.status == "active" and conv.agent_id == agent_id
    assert conv.last_seq == 1  # the "assigned" system message
    return agent, customer, conv.conversation_id, conv.last_seq


def test_customer_and_agent_see_one_complete_transcript(cloud):
    async def scenario():
        states: list[ConnectionState] = []
        agent, customer, cid, s = await pair(cloud, on_state=states.append)
        first = await customer.send(cid, "my parcel is late")
        assert (first.seq, first.duplicate) == (s + 1, False)
        seen_by_agent = await collect(agent, cid, s + 1)
        assert_assigned(seen_by_agent, agent.user_id)
        assert [(m.seq, m.sender_id, m.body) for m in seen_by_agent[s:]] == [
            (s + 1, customer.user_id, "my parcel is late")]
        reply = await agent.send(cid, "let me check")
        assert reply.seq == s + 2
        both = await collect(customer, cid, s + 2)  # the own message is part of the customer's transcript
        assert_assigned(both, agent.user_id)
        assert [(m.seq, m.sender_role, m.body) for m in both[s:]] == [
            (s + 1, "customer", "my parcel is late"), (s + 2, "agent", "let me check")]
        assert [m.seq for m in await collect(agent, cid, s + 2)] == [s + 2]
        with pytest.raises(SendRejected) as info:
            await customer.send(cid, "same id, other body", message_id=first.message_id)
        assert info.value.code == "conflict"
        assert customer.cursors == {cid: s + 2}
        await customer.close()
        await agent.close()
        assert states == [ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.CLOSED]

    run(scenario())


def connection_ids(cloud, user: str) -> list[str]:
    items = cloud.client("dynamodb").scan(TableName="oncechat-local-connections")["Items"]
    return [i["connectionId"]["S"] for i in items if i.get("userId", {}).get("S") == user]


def delete_connection(mgmt, conn: str) -> None:
    try:
        mgmt.delete_connection(ConnectionId=conn)
    except mgmt.exceptions.GoneException:
        pass  # a record whose $disconnect has not run yet


def test_connections_killed_while_sending_lose_and_duplicate_nothing(cloud):
    async def scenario():
        agent, customer, cid, s = await pair(cloud, send_timeout=2.0)
        mgmt = cloud.client("apigatewaymanagementapi")
        n_customer, n_agent = 40, 20
        futures = []

        async def customer_burst():
            for i in range(n_customer):
                futures.append(customer.send(cid, f"c{i}"))
                if i % 10 == 5 and customer._ws is not None:
                    customer._ws.transport.abort()  # the network dies: no close frame
                await asyncio.sleep(0.01)

        async def agent_burst():
            for i in range(n_agent):
                futures.append(agent.send(cid, f"a{i}"))
                if i % 8 == 3:  # the server side drops the agent's connection
                    for conn in await asyncio.to_thread(connection_ids, cloud, agent.user_id):
                        await asyncio.to_thread(delete_connection, mgmt, conn)
                await asyncio.sleep(0.02)

        total = n_customer + n_agent
        customer_view = asyncio.create_task(collect_count(customer, cid, s + total))
        agent_view = asyncio.create_task(collect_count(agent, cid, s + total))
        await asyncio.gather(customer_burst(), agent_burst())
        accepted = await asyncio.gather(*futures)
        # One seq per message. A resend that raced its own first attempt
        # (still running when the connection died) leaves the seq it
        # reserved void (protocol 1.1), so the accepted seqs may skip some.
        seqs = sorted(a.seq for a in accepted)
        assert len(set(seqs)) == total and seqs[0] > s
        for view in await asyncio.gather(customer_view, agent_view):
            assert [m.seq for m in view] == list(range(1, s + 1)) + seqs  # each once, in order
            assert_assigned(view, agent.user_id)
            assert sorted(m.body for m in view[s:]) == sorted([f"c{i}" for i in range(n_customer)] +
                                                              [f"a{i}" for i in range(n_agent)])
        stored = await asyncio.to_thread(history, cloud, cid, customer.user_id)
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))  # gapless, voids included
        kept = [m for m in stored if not m.get("void")]
        assert [m["seq"] for m in kept] == list(range(1, s + 1)) + seqs
        assert [m["senderRole"] for m in kept[:s]] == ["system"] * s
        assert len({m["body"] for m in kept[s:]}) == total  # no message stored twice
        assert all(m["body"] == "" and m["senderRole"] == "system" for m in stored if m.get("void"))
        await customer.close()
        await agent.close()

    run(scenario(), timeout=180)


def test_restart_with_sqlite_resends_the_outbox_and_resumes_from_the_cursor(cloud, tmp_path):
    async def scenario():
        agent_id, customer_id = uid("agent"), uid("cust")
        agent = sdk(cloud, agent_id, "agent")
        await agent.connect()
        db = tmp_path / "customer.db"
        first = sdk(cloud, customer_id, store=SqliteStore(db))
        await first.connect()
        conv = await first.open_conversation()
        cid, s = conv.conversation_id, conv.last_seq  # seq 1..s: the assignment
        assert s == 1
        assert (await first.send(cid, "m0")).seq == s + 1
        seen = await collect(first, cid, s + 1)
        assert_assigned(seen, agent_id)
        assert [m.seq for m in seen] == list(range(1, s + 2))  # processed: the cursor is s + 1
        for i in range(1, 10):
            first.send(cid, f"m{i}")  # not awaited: the process "dies" right away
        first._ws.transport.abort()
        await first.close()

        second = sdk(cloud, customer_id, store=SqliteStore(db))
        pending = second.pending_sends()
        assert 0 < len(pending) <= 9  # what the first process could not see accepted
        await second.connect()
        await second.flush(timeout=60)
        assert all(f.done() and not f.exception() for f in pending.values())
        seen = await collect(second, cid, s + 10)
        assert [m.seq for m in seen] == list(range(s + 2, s + 11))  # from the stored cursor, nothing twice
        stored = await asyncio.to_thread(history, cloud, cid, customer_id)
        assert [m["senderRole"] for m in stored[:s]] == ["system"] * s
        assert sorted(m["body"] for m in stored[s:]) == sorted(f"m{i}" for i in range(10))
        assert [m["seq"] for m in stored] == list(range(1, s + 11))
        got = await collect(agent, cid, s + 10)
        assert [m.seq for m in got] == list(range(1, s + 11))
        await second.close()
        await agent.close()

    run(scenario())


def test_offline_agent_catches_up_from_its_cursor_exactly_once(cloud):
    """Nothing reaches a closed client live: all it gets comes from the resume replay."""
    async def scenario():
        agent_id, customer_id = uid("agent"), uid("cust")
        store = MemoryStore()  # outlives the first client object, like a file would
        agent = sdk(cloud, agent_id, "agent", store=store)
        await agent.connect()
        customer = sdk(cloud, customer_id)
        await customer.connect()
        conv = await customer.open_conversation()
        cid, s = conv.conversation_id, conv.last_seq  # seq 1..s: the assignment
        assert s == 1
        await customer.send(cid, "m1")
        seen = await collect(agent, cid, s + 1)
        assert_assigned(seen, agent_id)
        assert [m.seq for m in seen] == list(range(1, s + 2))
        await agent.close()
        for i in range(2, 8):
            await customer.send(cid, f"m{i}")
        again = sdk(cloud, agent_id, "agent", store=store)
        await again.connect()
        seen = await asyncio.wait_for(collect(again, cid, s + 7), 60)
        assert [(m.seq, m.body) for m in seen] == [(s + i, f"m{i}") for i in range(2, 8)]
        await again.close()
        await customer.close()

    run(scenario())


def test_refused_token_raises_auth_error_without_retrying(cloud):
    calls = []

    def bad_token() -> str:
        calls.append(1)
        return mint_token("not-the-local-secret-0123456789abcdef", "u-401", "customer")

    async def scenario():
        client = OnceChatClient(cloud.websocket_url, bad_token, backoff=Backoff(base=0.5, cap=5))
        fut = client.send("any-conversation", "queued before connecting")
        with pytest.raises(AuthError):
            await client.connect()
        assert len(calls) == 1  # refused once, never retried
        with pytest.raises(AuthError):
            await fut
        with pytest.raises(AuthError):
            async for _ in client.messages():
                pass
        assert client.state is ConnectionState.CLOSED

    run(scenario())


def test_documented_example_runs(cloud):
    done = subprocess.run([sys.executable, "-m", "client.examples.chat_pair",
                           "--ws", cloud.websocket_url, "--rest", cloud.rest_url],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for who in ("customer", "agent"):
        seen = [line for line in lines if line.startswith(f"{who} sees")]
        # "<who> sees [seq] <role> <sender>: <body>": the assignment (seq 1, by the system),
        # then three questions and three answers
        parsed = [(int(line.split("[")[1].split("]")[0]), line.split("] ")[1].split(" ")[0]) for line in seen]
        assert [seq for seq, _ in parsed] == [1, 2, 3, 4, 5, 6, 7]
        assert parsed[0] == (1, "system")
        assert sorted(role for _, role in parsed[1:]) == ["agent"] * 3 + ["customer"] * 3
