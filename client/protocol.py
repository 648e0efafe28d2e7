"""A small asyncio client speaking protocol v1, for tests and scripts.

It connects with a token, sends (waiting for ``accepted``), receives
``message`` frames, acks and resumes. It applies the protocol's client rule
in ``messages()`` (process seq == last + 1, drop seq <= last, resume on a
gap). Reconnection and a persistent outbox are not its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection


class ErrorFrame(Exception):
    """The server answered with an ``error`` frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code: str | None = frame.get("code")


async def connect(url: str, token: str, **kwargs: Any) -> Client:
    """Open a connection to ``url`` (``ws://host:port/stage``) with a token."""
    sep = "&" if "?" in url else "?"
    ws = await websockets.connect(f"{url}{sep}{urlencode({'token': token})}", **kwargs)
    return Client(ws)


class Client:
    """One protocol v1 connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # every frame received, in order
        self.last: dict[str, int] = {}  # per conversation: highest seq processed
        self._own: dict[str, set[int]] = {}  # seqs of this connection's accepted sends, not yet passed
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # typing, read, conversation
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._resumes: list[asyncio.Future[dict[str, Any]]] = []
        self._reader = asyncio.create_task(self._read())

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------- actions

    async def send(self, conversation_id: str, body: str, message_id: str | None = None,
                   timeout: float = 60.0) -> dict[str, Any]:
        """Send a message and wait for its ``accepted`` frame (ErrorFrame on ``error``)."""
        message_id = message_id or uuid.uuid4().hex
        fut = self._pending.setdefault(message_id, asyncio.get_running_loop().create_future())
        await self.send_raw({"action": "send", "conversationId": conversation_id,
                             "messageId": message_id, "body": body})
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if fut.done():
                self._pending.pop(message_id, None)

    async def ack(self, conversation_id: str, seq: int) -> None:
        """Acknowledge every message of the conversation up to ``seq``."""
        await self.send_raw({"action": "ack", "conversationId": conversation_id, "seq": seq})

    async def resume(self, cursors: dict[str, int] | None = None,
                     timeout: float = 60.0) -> dict[str, Any]:
        """Ask for a replay; return the ``resumed`` frame once the replay is over."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._resumes.append(fut)
        await self.send_raw({"action": "resume", "cursors": dict(cursors or {})})
        return await asyncio.wait_for(fut, timeout)

    async def typing(self, conversation_id: str) -> None:
        """Tell the other participants this user is typing (ephemeral)."""
        await self.send_raw({"action": "typing", "conversationId": conversation_id})

    async def read(self, conversation_id: str, seq: int) -> None:
        """Move this user's read cursor of the conversation to ``seq``."""
        await self.send_raw({"action": "read", "conversationId": conversation_id, "seq": seq})

    async def send_raw(self, frame: dict[str, Any] | str) -> None:
        """Send a frame as is (a dict is JSON-encoded)."""
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    # ------------------------------------------------------------ receiving

    async def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next ``message`` frame as received (duplicates and gaps included)."""
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def next_error(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next ``error`` frame that no pending send was waiting for."""
        return await asyncio.wait_for(self._errors.get(), timeout)

    async def next_event(self, type_: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """The next ``typing``, ``read`` or ``conversation`` frame (of ``type_`` if given)."""
        async def wanted() -> dict[str, Any]:
            while True:
                frame = await self._events.get()
                if type_ is None or frame.get("type") == type_:
                    return frame

        return await asyncio.wait_for(wanted(), timeout)

    async def messages(self, idle_timeout: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        """Messages under the client rule: each seq exactly once, in order.

        A gap triggers ``resume`` from the last processed seq. Ends after
        ``idle_timeout`` seconds without a new frame.
        """
        while True:
            try:
                frame = await self.recv(idle_timeout)
            except TimeoutError:
                return
            cid, seq = frame["conversationId"], frame["seq"]
            last = self.last.get(cid, 0)
            if seq == last + 1:
                self.last[cid] = seq
                self._skip_own(cid)
                yield frame
            elif seq > last + 1:
                await self.send_raw({"action": "resume", "cursors": {cid: last}})

    def _skip_own(self, cid: str) -> None:
        # This connection's own messages are never pushed back to it: once
        # the sequence reaches one of them, it counts as processed.
        own = self._own.get(cid, set())
        while self.last.get(cid, 0) + 1 in own:
            self.last[cid] += 1
            own.discard(self.last[cid])

    async def collect(self, conversation_id: str, upto: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Process messages of one conversation under the client rule until ``upto`` is reached."""
        out: list[dict[str, Any]] = []

        async def run() -> None:
            async for frame in self.messages(idle_timeout=timeout):
                if frame["conversationId"] == conversation_id:
                    out.append(frame)
                if self.last.get(conversation_id, 0) >= upto:
                    return

        await asyncio.wait_for(run(), timeout)
        return out

    async def close(self) -> None:
        """Close the connection."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    # ------------------------------------------------------------- internals

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue
                self.frames.append(frame)
                self._dispatch(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in [*self._pending.values(), *self._resumes]:
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            self._inbox.put_nowait(frame)
        elif kind == "accepted" or (kind == "error" and frame.get("messageId") in self._pending):
            fut = self._pending.get(frame.get("messageId", ""))
            if fut is not None and not fut.done():
                if kind == "accepted":
                    cid = frame["conversationId"]
                    self.last.setdefault(cid, 0)
                    self._own.setdefault(cid, set()).add(frame["seq"])
                    self._skip_own(cid)
                    fut.set_result(frame)
                else:
                    fut.set_exception(ErrorFrame(frame))
        elif kind in ("typing", "read", "conversation"):
            self._events.put_nowait(frame)
        elif kind == "resumed":
            while self._resumes:
                fut = self._resumes.pop(0)
                if not fut.done():
                    fut.set_result(frame)
                    break
        else:  # an error without a pending send, or API Gateway's own error frames
            if kind == "error" and self._resumes and frame.get("messageId") is None:
                fut = self._resumes.pop(0)
                if not fut.done():
                    fut.set_exception(ErrorFrame(frame))
                    return
            self._errors.put_nowait(frame)
