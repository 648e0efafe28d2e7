"""The SDK's I/O layer against a scripted in-process WebSocket server: what it writes
after errors, gaps and lost connections (no local cloud needed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Response

from chalicelib.auth import mint_token
from client import Backoff, ConnectionLost, OnceChatClient, SendRejected

TOKEN = mint_token("a-secret-the-fake-server-never-checks", "alice", "customer")
Script = Callable[[ServerConnection, dict[str, Any], "Fake"], Awaitable[None]]


class Fake:
    """A server that records every client frame and answers through a script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.frames: list[tuple[int, dict[str, Any]]] = []  # (connection number, frame)
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        async for raw in ws:
            frame = json.loads(raw)
            self.frames.append((number, frame))
            await self.script(ws, frame, self)

    def sends(self) -> list[str]:
        return [f["messageId"] for _, f in self.frames if f["action"] == "send"]


def accepted(frame: dict[str, Any], seq: int, duplicate: bool = False) -> str:
    return json.dumps({"type": "accepted", "conversationId": frame["conversationId"],
                       "messageId": frame["messageId"], "seq": seq, "sentAt": "2026-01-01T00:00:00.000Z",
                       "duplicate": duplicate})


def message(seq: int, cid: str = "c") -> str:
    return json.dumps({"type": "message", "conversationId": cid, "seq": seq, "messageId": f"m{seq}",
                       "senderId": "bob", "senderRole": "agent", "body": f"b{seq}",
                       "sentAt": "2026-01-01T00:00:00.000Z"})


async def with_fake(script: Script, scenario, **client_kwargs) -> Fake:
    fake = Fake(script)
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client_kwargs.setdefault("backoff", Backoff(base=0.01, cap=0.05))
        client = OnceChatClient(f"ws://127.0.0.1:{port}/api", TOKEN, **client_kwargs)
        try:
            await asyncio.wait_for(scenario(client, fake), 10)
        finally:
            await client.close()
    return fake


def run(coro):
    return asyncio.run(coro)


async def resumed_on_resume(ws: ServerConnection, frame: dict[str, Any]) -> bool:
    if frame["action"] == "resume":
        await ws.send(json.dumps({"type": "resumed", "conversations": {}}))
        return True
    return False


def test_internal_error_is_retried_with_the_same_message_id():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        if len(fake.sends()) == 1:
            await ws.send(json.dumps({"type": "error", "code": "internal", "message": "boom",
                                      "messageId": frame["messageId"]}))
        else:
            await ws.send(accepted(frame, 1, duplicate=True))

    async def scenario(client, fake):
        await client.connect()
        acc = await client.send("c", "hello", message_id="m-1")
        assert (acc.seq, acc.duplicate) == (1, True)
        assert fake.sends() == ["m-1", "m-1"]

    run(with_fake(script, scenario))


def test_api_gateway_internal_server_error_resends_what_is_in_flight():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        if len(fake.sends()) == 1:  # the handler died: API Gateway's frame names no request
            await ws.send(json.dumps({"message": "Internal server error", "connectionId": "x", "requestId": "r"}))
        else:
            await ws.send(accepted(frame, 1))

    async def scenario(client, fake):
        await client.connect()
        acc = await client.send("c", "hello", message_id="m-1")
        assert acc.seq == 1 and fake.sends() == ["m-1", "m-1"]

    run(with_fake(script, scenario, error_resend_timeout=0.1, send_timeout=30))


def test_final_error_fails_the_send_and_drops_it():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        await ws.send(json.dumps({"type": "error", "code": "conversation_closed", "message": "closed",
                                  "messageId": frame["messageId"]}))

    async def scenario(client, fake):
        await client.connect()
        with pytest.raises(SendRejected) as info:
            await client.send("c", "hello", message_id="m-1")
        assert info.value.code == "conversation_closed" and info.value.message_id == "m-1"
        assert client.pending_sends() == {}
        await asyncio.sleep(0.2)
        assert fake.sends() == ["m-1"]  # never retried

    run(with_fake(script, scenario, send_timeout=0.1))


def test_unanswered_send_is_resent_after_the_send_timeout():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        if len(fake.sends()) == 2:
            await ws.send(accepted(frame, 1))

    async def scenario(client, fake):
        await client.connect()
        assert (await client.send("c", "hello", message_id="m-1")).seq == 1
        assert fake.sends() == ["m-1", "m-1"]

    run(with_fake(script, scenario, send_timeout=0.2))


def test_lost_connection_resumes_first_then_resends_the_outbox():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        if fake.connections == 1:
            await ws.close()  # the connection dies before the answer
        else:
            await ws.send(accepted(frame, 1))

    async def scenario(client, fake):
        await client.connect()
        assert (await client.send("c", "hello", message_id="m-1")).seq == 1
        second = [f for n, f in fake.frames if n == 2]
        assert [f["action"] for f in second] == ["resume", "send"]
        assert second[0]["cursors"] == {"c": 0}  # the conversation sent to is followed
        assert second[1]["messageId"] == "m-1"

    run(with_fake(script, scenario, send_timeout=30))


def test_gap_triggers_one_resume_from_last_and_the_app_sees_each_seq_once():
    async def script(ws, frame, fake):
        if frame["action"] == "resume":
            after = frame["cursors"].get("c", 0)
            if fake.connections == 1 and not any(f["action"] == "resume" and f["cursors"]
                                                 for _, f in fake.frames[:-1]):
                if not frame["cursors"]:  # the first resume: live traffic with a gap and a duplicate
                    await ws.send(json.dumps({"type": "resumed", "conversations": {}}))
                    for seq in (1, 1, 3, 5):
                        await ws.send(message(seq))
                    return
            for seq in range(after + 1, 6):
                await ws.send(message(seq))
            await ws.send(json.dumps({"type": "resumed", "conversations": {"c": 5}}))

    async def scenario(client, fake):
        await client.connect()
        seen = []
        async for m in client.messages():
            seen.append(m.seq)
            if m.seq == 5:
                break
        assert seen == [1, 2, 3, 4, 5]
        resumes = [f["cursors"] for _, f in fake.frames if f["action"] == "resume"]
        assert resumes == [{}, {"c": 1}]

    run(with_fake(script, scenario, gap_delay=0.05))


def test_own_message_fills_its_place_in_the_sequence():
    async def script(ws, frame, fake):
        if await resumed_on_resume(ws, frame) or frame["action"] != "send":
            return
        await ws.send(message(1))
        await ws.send(accepted(frame, 2))
        await ws.send(message(3))

    async def scenario(client, fake):
        await client.connect()
        client.send("c", "mine", message_id="own-1")
        seen = []
        async for m in client.messages():
            seen.append((m.seq, m.sender_id, m.body))
            if m.seq == 3:
                break
        assert seen == [(1, "bob", "b1"), (2, "alice", "mine"), (3, "bob", "b3")]
        assert [f["cursors"] for _, f in fake.frames if f["action"] == "resume"] == [{}]  # no gap resume

    run(with_fake(script, scenario))


def test_acks_are_cumulative_and_debounced():
    async def script(ws, frame, fake):
        if frame["action"] == "resume":
            for seq in range(1, 6):
                await ws.send(message(seq))
            await ws.send(json.dumps({"type": "resumed", "conversations": {"c": 5}}))

    async def scenario(client, fake):
        await client.connect()
        async for m in client.messages():
            await asyncio.sleep(0.01)  # the app works on it; the pump gets to run
            if m.seq == 5:
                break
        await asyncio.sleep(0.3)
        acks = [f["seq"] for _, f in fake.frames if f["action"] == "ack"]
        assert acks == [2, 4, 5]  # every 2, then the rest after the delay

    run(with_fake(script, scenario, ack_every=2, ack_delay=0.1))


def test_failed_handshakes_back_off_and_give_up_after_max_attempts():
    attempts = []

    def refuse(connection, request):
        attempts.append(1)
        return Response(503, "Service Unavailable", __import__("websockets").Headers(), b"")

    async def scenario():
        async with serve(lambda ws: asyncio.sleep(0), "127.0.0.1", 0, process_request=refuse) as server:
            port = server.sockets[0].getsockname()[1]
            client = OnceChatClient(f"ws://127.0.0.1:{port}/api", TOKEN,
                                    backoff=Backoff(base=0.01, cap=0.02, max_attempts=3))
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(client.connect(), 5)
        assert len(attempts) == 3

    run(scenario())
