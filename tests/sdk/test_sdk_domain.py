"""The SDK's customer-service calls against the local cloud over real sockets.

Idempotent opening, lifecycle events (system messages in ``messages()``,
``conversation`` events), transfer and close, agent status, typing and
read receipts.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import Backoff, Event, Message, OnceChatClient, Rejected
from tests.local_cloud import REPO_ROOT, LocalCloud


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1") as running:
        yield running


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sdk(cloud, user: str, role: str = "customer") -> OnceChatClient:
    return OnceChatClient(cloud.websocket_url, lambda: mint_token(LOCAL_JWT_SECRET, user, role),
                          rest_url=cloud.rest_url, backoff=Backoff(base=0.05, cap=0.5))


async def next_message(client: OnceChatClient, cid: str, timeout: float = 60) -> Message:
    async def first() -> Message:
        async for m in client.messages():
            if m.conversation_id == cid:
                return m
        raise AssertionError("messages() ended")
    return await asyncio.wait_for(first(), timeout)


async def next_event(client: OnceChatClient, type_: str, cid: str, timeout: float = 60) -> Event:
    async def first() -> Event:
        async for e in client.events():
            if e.type == type_ and e.conversation_id == cid:
                return e
        raise AssertionError("events() ended")
    return await asyncio.wait_for(first(), timeout)


def test_lifecycle_typing_and_read_through_the_sdk(cloud):
    async def scenario():
        amy_id, bob_id, cara_id = uid("amy"), uid("bob"), uid("cara")
        amy, bob, cara = sdk(cloud, amy_id, "agent"), sdk(cloud, bob_id, "agent"), sdk(cloud, cara_id)
        for client in (amy, bob, cara):
            await client.connect()
        me = await bob.set_status("away", 3)
        assert (me["status"], me["capacity"]) == ("away", 3)
        await amy.set_status(capacity=10)

        key = uid("open")
        conv = await cara.open_conversation(idempotency_key=key)
        assert (await cara.open_conversation(idempotency_key=key)).conversation_id == conv.conversation_id
        cid = conv.conversation_id
        assert conv.agent_id == amy_id
        assigned = await next_event(amy, "conversation", cid)
        assert (assigned.frame["event"], assigned.frame["agentId"]) == ("assigned", amy_id)
        first = await next_message(cara, cid)
        assert first.is_system and (first.seq, first.event, first.agent_id) == (1, "assigned", amy_id)
        assert [c.conversation_id for c in await amy.conversations("active")] == [cid]

        await cara.send(cid, "hello")
        assert (await next_message(cara, cid)).body == "hello"  # own messages are in the sequence
        got = [await next_message(amy, cid) for _ in range(2)]
        assert [(m.seq, m.event, m.body) for m in got][1] == (2, None, "hello")

        assert cara.typing(cid) is True
        typing = await next_event(amy, "typing", cid)
        assert typing.user_id == cara_id
        amy.mark_read(cid, 2)
        read = await next_event(cara, "read", cid)
        assert (read.user_id, read.frame["seq"]) == (amy_id, 2)

        with pytest.raises(Rejected) as refused:
            await amy.transfer(cid, bob_id)  # bob is away
        assert refused.value.code == "conflict"
        await bob.set_status("online")
        moved = await amy.transfer(cid, bob_id)
        assert moved.agent_id == bob_id
        transferred = await next_event(bob, "conversation", cid)
        assert transferred.frame["previousAgentId"] == amy_id
        # bob's SDK follows the conversation from seq 1.
        seen = [await next_message(bob, cid) for _ in range(3)]
        assert [(m.seq, m.event) for m in seen] == [(1, "assigned"), (2, None), (3, "transferred")]

        closed = await cara.close_conversation(cid)
        assert closed.status == "closed" and closed.closed_at
        with pytest.raises(Rejected) as again:
            await bob.close_conversation(cid)
        assert (again.value.code, again.value.status) == ("conflict", 409)
        assert (await next_message(bob, cid)).event == "closed"
        for client in (amy, bob, cara):
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 180))


def test_a_conversation_transferred_away_and_back_is_processed_exactly_once(cloud):
    async def scenario():
        amy_id, bob_id, cara_id = uid("amy"), uid("bob"), uid("cara")
        amy, bob, cara = sdk(cloud, amy_id, "agent"), sdk(cloud, bob_id, "agent"), sdk(cloud, cara_id)
        await bob.set_status("away")
        for client in (amy, bob, cara):
            await client.connect()
        conv = await cara.open_conversation()
        cid = conv.conversation_id
        assert conv.agent_id == amy_id
        await bob.set_status("online")
        seen: dict[str, list[int]] = {amy_id: [], bob_id: []}

        async def follow(client: OnceChatClient, name: str) -> None:
            async for m in client.messages():
                if m.conversation_id == cid:
                    seen[name].append(m.seq)

        tasks = [asyncio.create_task(follow(amy, amy_id)), asyncio.create_task(follow(bob, bob_id))]

        async def until(name: str, seq: int) -> None:
            while not seen[name] or seen[name][-1] < seq:
                await asyncio.sleep(0.05)

        await cara.send(cid, "one")
        await asyncio.wait_for(until(amy_id, 2), 60)
        await amy.transfer(cid, bob_id)
        await cara.send(cid, "two")
        await asyncio.wait_for(until(bob_id, 4), 60)
        # amy's connection drops while the conversation is bob's: her SDK
        # reconnects and resumes without it (the server would refuse it).
        await amy._ws.close()
        await asyncio.sleep(0.5)
        await amy.connect()
        await bob.transfer(cid, amy_id)
        acc = await cara.send(cid, "three")
        await asyncio.wait_for(until(amy_id, acc.seq), 60)
        # amy processed every seq exactly once, in order; the ones from bob's
        # time reached her when the conversation came back, never twice.
        assert seen[amy_id] == list(range(1, acc.seq + 1))
        # bob followed it from seq 1 up to the transfer to him (4); the transfer
        # away (5) is no longer his to read: he learns it from the event.
        assert seen[bob_id] == list(range(1, 5))
        for t in tasks:
            t.cancel()
        for client in (amy, bob, cara):
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 180))
