"""The oncechat client SDK: an asyncio client a real app can build on.

::

    async with OnceChatClient(ws_url, token, rest_url=rest_url, store=SqliteStore("me.db")) as chat:
        conv = await chat.open_conversation()
        accepted = await chat.send(conv.conversation_id, "hello")
        async for message in chat.messages():
            print(message.seq, message.sender_id, message.body)

It reconnects by itself (exponential backoff, full jitter), keeps every
message in an outbox until the server ``accepted`` it (resending it with the
same messageId), applies the protocol's seq rule to what arrives (the app
sees each message of each conversation once, in seq order, its own messages
included), resumes after every (re)connect and on every gap, acks
cumulatively, and can persist its outbox and cursors in SQLite.

The decisions live in ``client.core`` (no I/O); this module moves frames
between them and one WebSocket at a time. docs/client.md is the manual.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from client.core import (RETRYABLE_SEND_CODES, Accepted, AckTracker, Backoff, Inbox, Message, Outbox,
                         PendingSend, token_claims, validate_send)
from client.errors import (AuthError, Closed, ConnectionLost, OnceChatClientError, ProtocolError, Rejected,
                           SendRejected)
from client.store import MemoryStore, Store

log = logging.getLogger("oncechat.client")

TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]


class ConnectionState(enum.Enum):
    """Where the client's connection stands (reported to ``on_state``)."""

    CONNECTING = "connecting"  # opening a WebSocket (first time or after a loss)
    CONNECTED = "connected"  # open; the resume after connecting has been answered
    DISCONNECTED = "disconnected"  # lost; waiting for the backoff before reconnecting
    CLOSED = "closed"  # closed by close(), or given up (AuthError, ConnectionLost)


@dataclass(frozen=True)
class Conversation:
    """A conversation as the REST API returns it."""

    conversation_id: str
    customer_id: str
    agent_id: str | None
    status: str
    created_at: str
    last_seq: int
    closed_at: str | None = None

    @classmethod
    def from_rest(cls, body: dict[str, Any]) -> Conversation:
        """Build from a REST conversation; ProtocolError if a field is missing."""
        try:
            return cls(body["conversationId"], body["customerId"], body.get("agentId"),
                       body["status"], body["createdAt"], int(body.get("lastSeq", 0)),
                       body.get("closedAt"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad conversation: {body!r}") from exc


@dataclass(frozen=True)
class Event:
    """An ephemeral frame: ``conversation`` (a lifecycle event), ``typing`` or ``read``.

    Events are notifications for screens, not part of exactly-once: one
    may be missed with a connection or repeated. The durable record of a
    lifecycle event is its system message in ``messages()``.
    """

    type: str
    conversation_id: str
    frame: dict[str, Any]

    @property
    def user_id(self) -> str | None:
        """Who is typing or reading (``typing``, ``read``)."""
        return self.frame.get("userId")


#: Events kept for an app that reads ``events()`` late; older ones are dropped.
EVENTS_KEPT = 1000


_END = object()  # put on the message queue when the client ends


class OnceChatClient:
    """One user's connection to oncechat, kept alive, with outbox, inbox and acks.

    :param url: the WebSocket URL of the stage (``ws://127.0.0.1:8001/api``).
    :param token: a JWT, or a function (sync or async) returning a fresh one;
        a function is called before every (re)connect and REST request.
    :param rest_url: base URL of the REST API, for ``open_conversation``.
    :param store: where the outbox and cursors live (default: in memory;
        ``SqliteStore(path)`` survives restarts). The caller owns and closes it.
    :param user_id: the token's ``sub``; by default read from the token
        (decoded, not verified). Own messages are yielded with this sender id.
    :param role: the token's ``role`` (same default).
    :param backoff: reconnect delays and ``max_attempts``; also the pacing of
        retries after ``internal`` errors and of repeated resumes.
    :param send_timeout: resend a message that got no answer within this many seconds.
    :param error_resend_timeout: after an error that names no message (API
        Gateway's ``Internal server error``), in-flight messages and resumes
        not answered within this many seconds are sent again.
    :param resume_timeout: send ``resume`` again when ``resumed`` takes longer.
    :param gap_delay: how long a gap may stay open before resuming (an own
        message's ``accepted`` usually fills it within milliseconds).
    :param ack_every: ack a conversation after this many processed messages...
    :param ack_delay: ...or this many seconds after its first un-acked one.
    :param auto_commit: commit each message (cursor + ack) as it is handed to
        the app; with False the app calls ``commit(message)`` after processing.
    :param ordered_sends: one message in flight per conversation, so the
        server stores a client's messages in the order ``send`` was called.
    :param on_state: called with each ``ConnectionState`` change.
    :param connect_options: extra keyword arguments for ``websockets.connect``.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        rest_url: str | None = None,
        store: Store | None = None,
        user_id: str | None = None,
        role: str | None = None,
        backoff: Backoff | None = None,
        send_timeout: float = 5.0,
        error_resend_timeout: float = 1.0,
        resume_timeout: float = 10.0,
        gap_delay: float = 0.2,
        ack_every: int = 20,
        ack_delay: float = 5.0,
        auto_commit: bool = True,
        include_void: bool = False,
        ordered_sends: bool = False,
        on_state: Callable[[ConnectionState], None] | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.store: Store = store if store is not None else MemoryStore()
        self.user_id = user_id
        self.role = role
        self.backoff = backoff or Backoff()
        self.error_resend_timeout = error_resend_timeout
        self.resume_timeout = resume_timeout
        self.gap_delay = gap_delay
        self.auto_commit = auto_commit
        self.include_void = include_void
        self.on_state = on_state
        self.connect_options: dict[str, Any] = {"open_timeout": 10, "close_timeout": 2,
                                                **(connect_options or {})}
        self._token_source = token
        self._outbox = Outbox(send_timeout, ordered=ordered_sends)
        self._inbox = Inbox()
        self._acks = AckTracker(ack_every, ack_delay)
        self._futures: dict[str, asyncio.Future[Accepted]] = {}
        self._committed: dict[str, int] = {}  # cursor of what the app has processed
        self._handed: dict[str, int] = {}  # highest seq handed to the app
        self._queue: asyncio.Queue[Message | object] = asyncio.Queue()
        self._events: asyncio.Queue[Event | object] = asyncio.Queue()
        self._reads: dict[str, int] = {}  # read cursors to send
        self._state = ConnectionState.CLOSED
        self._loaded = False
        self._bound = False
        self._closing = False
        self._fatal: OnceChatClientError | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        # Resume state machine: at most one resume in flight per connection,
        # listing every known conversation, so no conversation ever has two.
        self._resume_wanted_at: float | None = None
        self._resume_answer_by: float | None = None
        self._resume_sent: dict[str, int] | None = None
        self._resume_failures = 0
        self._resume_progress = -1  # sum of cursors when the last resume was sent
        self._probes: list[str] = []  # conversations to resume one by one after a refused resume
        self._healthy = False
        self._closer: asyncio.Task[None] | None = None  # a close the client asked for

    # ------------------------------------------------------------- lifecycle

    @property
    def state(self) -> ConnectionState:
        """The current ``ConnectionState``."""
        return self._state

    @property
    def cursors(self) -> dict[str, int]:
        """``{conversationId: seq}`` the app has processed (committed)."""
        return dict(self._committed)

    async def connect(self) -> None:
        """Start the connection loop and wait until connected and the first resume answered.

        Raises AuthError (401, not retried), ConnectionLost (``max_attempts``
        failures in a row) or StoreError (the store belongs to another user).
        """
        self._check_open()
        self._load()
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._ready = loop.create_future()
            self._runner = asyncio.create_task(self._run(), name="oncechat-client")
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def close(self) -> None:
        """Flush pending acks, close the connection, end ``messages()``.

        Unaccepted sends fail with Closed; with a persistent store they stay
        there and the next client resends them.
        """
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await self._send_acks(ws, self._acks.pending())
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._end(Closed("client closed"))

    async def __aenter__(self) -> OnceChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- sending

    def send(self, conversation_id: str, body: str, message_id: str | None = None) -> asyncio.Future[Accepted]:
        """Queue a message; return a future of its ``Accepted``.

        The message is written to the store first, then sent, and resent
        (same messageId) after reconnects, timeouts and ``internal`` errors
        until ``accepted``. The future fails with SendRejected on a final
        error code, Closed if the client closes first, or the fatal error
        (AuthError, ConnectionLost) that ended the client. A local check
        raises SendRejected at once for what the server would refuse
        (bad messageId, empty body, body over 16 KiB).
        """
        self._check_open()
        message_id = message_id or uuid.uuid4().hex
        refusal = validate_send(body, message_id)
        if refusal is not None:
            raise SendRejected(refusal[0], refusal[1], message_id)
        self._load()
        if message_id in self._outbox:
            raise ValueError(f"messageId {message_id} is already pending")
        entry = PendingSend(conversation_id, message_id, body)
        self.store.put_outbox(entry)  # write-ahead: stored before it is first sent
        self._inbox.track(conversation_id)
        self._outbox.add(entry, time.monotonic())
        fut = self._future(message_id)
        self._wake.set()
        return fut

    def pending_sends(self) -> dict[str, asyncio.Future[Accepted]]:
        """Futures of every unaccepted message, including those loaded from the store."""
        self._load()
        return {mid: self._futures[mid] for mid in (e.message_id for e in self._outbox.entries())}

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued message is accepted or refused (TimeoutError after ``timeout``)."""
        futs = list(self.pending_sends().values())
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), timeout)

    async def open_conversation(self, idempotency_key: str | None = None) -> Conversation:
        """``POST /conversations`` (customers): open a conversation and follow it.

        With ``idempotency_key``, retrying after a lost answer returns the
        conversation the first request opened instead of opening another.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        conv = Conversation.from_rest(await self._rest("POST", "/conversations", headers=headers))
        self._load()
        self._inbox.track(conv.conversation_id)
        return conv

    async def close_conversation(self, conversation_id: str) -> Conversation:
        """``POST /conversations/{id}/close`` (its customer or agent)."""
        return Conversation.from_rest(await self._rest("POST", f"/conversations/{conversation_id}/close"))

    async def transfer(self, conversation_id: str, agent_id: str) -> Conversation:
        """``POST /conversations/{id}/transfer`` (its agent): hand it to ``agent_id``."""
        return Conversation.from_rest(await self._rest(
            "POST", f"/conversations/{conversation_id}/transfer", {"agentId": agent_id}))

    async def set_status(self, status: str | None = None, capacity: int | None = None) -> dict[str, Any]:
        """``PUT /agents/me/status`` (agents): presence and/or capacity; returns the agent."""
        body = {k: v for k, v in (("status", status), ("capacity", capacity)) if v is not None}
        return await self._rest("PUT", "/agents/me/status", body)

    async def conversations(self, status: str | None = None) -> list[Conversation]:
        """``GET /conversations``, every page: the user's own (customers) or assigned (agents)."""
        out: list[Conversation] = []
        cursor: str | None = None
        while True:
            query = {k: v for k, v in (("status", status), ("cursor", cursor), ("limit", "100")) if v}
            page = await self._rest("GET", f"/conversations?{urlencode(query)}")
            out += [Conversation.from_rest(c) for c in page.get("conversations", [])]
            cursor = page.get("next")
            if not cursor:
                return out

    async def _rest(self, method: str, path: str, body: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
        if not self.rest_url:
            raise OnceChatClientError("REST calls need rest_url")
        token = await self._token()
        status, answer = await asyncio.to_thread(
            request_json, method, f"{self.rest_url}{path}", token, body, headers or {})
        if status == 401:
            raise AuthError(answer.get("message", "unauthorized"))
        if status >= 400:
            raise Rejected(str(answer.get("code", "internal")), str(answer.get("message", "")), status)
        return answer

    # --------------------------------------------------------- typing & read

    def typing(self, conversation_id: str) -> bool:
        """Tell the other participants the user is typing; False when not connected (dropped)."""
        self._check_open()
        ws = self._ws
        if ws is None:
            return False
        frame = json.dumps({"action": "typing", "conversationId": conversation_id})
        asyncio.get_running_loop().create_task(_send_quietly(ws, frame))
        return True

    def mark_read(self, conversation_id: str, seq: int) -> None:
        """Move the user's read cursor to ``seq`` (sent now, or after the next reconnect)."""
        self._check_open()
        if seq > self._reads.get(conversation_id, 0):
            self._reads[conversation_id] = seq
            self._wake.set()

    async def events(self) -> AsyncIterator[Event]:
        """``conversation``, ``typing`` and ``read`` frames as they come (ends after ``close()``)."""
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)
                return
            assert isinstance(item, Event)
            yield item

    # -------------------------------------------------------------- receiving

    async def messages(self) -> AsyncIterator[Message]:
        """Every message of every conversation of the user, once each, in seq order.

        Own messages are included (when the sequence reaches them). Ends
        after ``close()``; raises AuthError or ConnectionLost if the client
        gave up. Meant for one consumer at a time.
        """
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # for any other waiting iterator
                if self._fatal is not None and not isinstance(self._fatal, Closed):
                    raise self._fatal
                return
            assert isinstance(item, Message)
            self._handed[item.conversation_id] = item.seq
            if item.void and not self.include_void:
                # Nothing to show: passed over, and committed along with what
                # the app committed before it.
                if self.auto_commit or self._committed.get(item.conversation_id, 0) >= item.seq - 1:
                    self.commit(item)
                continue
            if self.auto_commit:
                self.commit(item)
            yield item

    def commit(self, message: Message) -> None:
        """Record that the app has processed ``message`` and all before it in its conversation.

        Persists the cursor and schedules a cumulative ack. Called for you
        with ``auto_commit=True`` (as the message is handed over). Only
        messages already handed to the app can be committed.
        """
        cid, seq = message.conversation_id, message.seq
        if seq <= self._committed.get(cid, 0):
            return
        if seq > self._handed.get(cid, 0):
            raise ValueError(f"{cid}#{seq} has not been handed to the app yet")
        self._committed[cid] = seq
        self.store.save_cursor(cid, seq)
        self._acks.processed(cid, seq, time.monotonic())
        self._wake.set()

    # ------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise Closed("client is closed")

    def _future(self, message_id: str) -> asyncio.Future[Accepted]:
        fut = self._futures.get(message_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            # A fire-and-forget send that fails should not log "exception never retrieved".
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._futures[message_id] = fut
        return fut

    def _load(self) -> None:
        """Load the store once: cursors into the inbox, unaccepted messages into the outbox."""
        if self._loaded:
            return
        self._loaded = True
        if self.user_id is not None:
            self.store.bind_user(self.user_id)
            self._bound = True
        cursors = self.store.load_cursors()
        self._inbox = Inbox(cursors)
        self._committed = dict(cursors)
        self._handed = dict(cursors)
        now = time.monotonic()
        for entry in self.store.load_outbox():
            if entry.message_id not in self._outbox:
                self._outbox.add(entry, now)
                self._inbox.track(entry.conversation_id)
                self._future(entry.message_id)

    async def _token(self) -> str:
        source = self._token_source
        if isinstance(source, str):
            return source
        try:
            value = source()
            if inspect.isawaitable(value):
                value = await value
        except OnceChatClientError:
            raise
        except Exception as exc:
            raise AuthError(f"token provider failed: {exc!r}") from exc
        if not isinstance(value, str) or not value:
            raise AuthError("token provider returned no token")
        return value

    def _learn_identity(self, token: str) -> None:
        if self.user_id is None or self.role is None:
            claims = token_claims(token)
            self.user_id = self.user_id or str(claims.get("sub", ""))
            self.role = self.role or str(claims.get("role", ""))
        if not self._bound:
            assert self.user_id is not None
            self.store.bind_user(self.user_id)
            self._bound = True

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("on_state callback failed")

    def _end(self, error: OnceChatClientError) -> None:
        """The client is over: fail what waits, end the iterators."""
        if self._fatal is None:
            self._fatal = error
        self._closing = True
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(self._fatal)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(self._fatal)
            self._ready.exception()  # retrieved: connect() re-raises it from the shield
        self._queue.put_nowait(_END)
        self._events.put_nowait(_END)
        self._set_state(ConnectionState.CLOSED)

    # ------------------------------------------------------- connection loop

    async def _run(self) -> None:
        failures = 0  # consecutive connection attempts that did not become healthy
        try:
            while not self._closing:
                self._set_state(ConnectionState.CONNECTING)
                try:
                    token = await self._token()
                    self._learn_identity(token)
                    sep = "&" if "?" in self.url else "?"
                    ws = await websockets.connect(f"{self.url}{sep}{urlencode({'token': token})}",
                                                  **self.connect_options)
                except InvalidStatus as exc:
                    if exc.response.status_code == 401:
                        # A refused token stays refused: retrying would only loop.
                        raise AuthError("the server refused the token (HTTP 401)") from exc
                    log.warning("handshake refused with HTTP %s", exc.response.status_code)
                except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
                    log.info("connect failed: %r", exc)
                else:
                    await self._session(ws)
                    if self._healthy:
                        failures = 0  # a healthy connection resets the backoff
                if self._closing:
                    break
                self._set_state(ConnectionState.DISCONNECTED)
                if self._healthy:
                    self._healthy = False
                    await asyncio.sleep(self.backoff.delay(0))
                    continue
                failures += 1
                if self.backoff.exhausted(failures):
                    raise ConnectionLost(f"no healthy connection after {failures} attempts")
                await asyncio.sleep(self.backoff.delay(failures - 1))
        except OnceChatClientError as exc:
            self._end(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("client loop failed")
            self._end(ConnectionLost(f"client loop failed: {exc!r}"))

    async def _session(self, ws: ClientConnection) -> None:
        """Run one connection until it closes."""
        now = time.monotonic()
        self._ws = ws
        self._healthy = False
        # Resume first, then (same pump tick) the outbox: everything that was
        # in flight on the old connection is sent again with its messageId.
        self._resume_wanted_at, self._resume_answer_by, self._resume_sent = now, None, None
        self._resume_progress = -1
        self._outbox.connection_changed(now)
        pump = asyncio.create_task(self._pump(ws), name="oncechat-pump")
        try:
            async for raw in ws:
                self._dispatch(raw, ws)
        except websockets.ConnectionClosed:
            pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            self._ws = None
            log.info("connection closed: %s", ws.close_code)

    async def _pump(self, ws: ClientConnection) -> None:
        """Write what is due: the resume, then outbox entries, then acks; sleep until the next deadline."""
        try:
            while True:
                self._wake.clear()
                now = time.monotonic()
                if self._resume_answer_by is not None and now >= self._resume_answer_by:
                    self._resume_answer_by, self._resume_sent = None, None
                    self._resume_wanted_at = now  # no answer: the resume may be lost
                if (self._resume_answer_by is None and self._resume_wanted_at is not None
                        and now >= self._resume_wanted_at):
                    await self._send_resume(ws, now)
                for entry in self._outbox.due(now):
                    await ws.send(json.dumps({"action": "send", "conversationId": entry.conversation_id,
                                              "messageId": entry.message_id, "body": entry.body}))
                    self._outbox.mark_sent(entry.message_id, now)
                due_acks = self._acks.due(now)
                if due_acks:
                    await self._send_acks(ws, due_acks)
                while self._reads:
                    cid, seq = self._reads.popitem()
                    await ws.send(json.dumps({"action": "read", "conversationId": cid, "seq": seq}))
                deadlines = [d for d in (self._outbox.next_deadline(), self._acks.next_deadline(),
                                         self._resume_answer_by,
                                         self._resume_wanted_at if self._resume_answer_by is None else None)
                             if d is not None]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        except websockets.ConnectionClosed:
            pass  # the reader sees the close too and ends the session

    async def _send_resume(self, ws: ClientConnection, now: float) -> None:
        if self._probes:
            cid = self._probes[0]
            cursors = {cid: self._inbox.last.get(cid, 0)}
        else:
            cursors = self._inbox.cursors()
            self._resume_progress = self._inbox.progress()
        self._resume_sent = cursors
        self._resume_wanted_at = None
        self._resume_answer_by = now + self.resume_timeout
        log.debug("%s resume %s", self.user_id, cursors)
        await ws.send(json.dumps({"action": "resume", "cursors": cursors}))

    async def _send_acks(self, ws: ClientConnection, acks: dict[str, int]) -> None:
        for cid, seq in acks.items():
            await ws.send(json.dumps({"action": "ack", "conversationId": cid, "seq": seq}))
        self._acks.sent(acks)

    # ---------------------------------------------------------------- frames

    def _dispatch(self, raw: str | bytes, ws: ClientConnection) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("dropping a frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        log.debug("%s <- %s %s", self.user_id, kind, frame.get("seq", frame.get("code", "")))
        try:
            if kind == "message":
                self._on_message(Message.from_frame(frame))
            elif kind == "accepted":
                self._on_accepted(Accepted.from_frame(frame))
            elif kind == "resumed":
                self._on_resumed(frame.get("conversations") or {})
            elif kind in ("conversation", "typing", "read"):
                self._on_event(kind, frame)
            elif kind == "error":
                self._on_error(frame, ws)
            elif kind is None and "message" in frame:
                # API Gateway's own "Internal server error": some request of
                # ours failed, it does not say which; retry all soon.
                self._some_request_failed()
        except ProtocolError as exc:
            log.warning("dropping a frame: %s", exc)
        self._wake.set()

    def _on_event(self, kind: str, frame: dict[str, Any]) -> None:
        cid = frame.get("conversationId")
        if not isinstance(cid, str):
            raise ProtocolError(f"{kind} frame without conversationId")
        if kind == "conversation" and frame.get("agentId") == self.user_id:
            self._inbox.track(cid)  # assigned to this agent: follow it from now on
        elif kind == "conversation" and frame.get("previousAgentId") == self.user_id:
            self._inbox.pause(cid)  # transferred away: stop resuming it, keep the cursor
        if self._events.qsize() >= EVENTS_KEPT:
            self._events.get_nowait()  # the app is not reading events: keep the newest
        self._events.put_nowait(Event(kind, cid, frame))

    def _release(self, released: list[Message]) -> None:
        for msg in released:
            self._queue.put_nowait(msg)

    def _on_message(self, msg: Message) -> None:
        self._release(self._inbox.receive(msg))
        self._want_resume_if_behind()

    def _want_resume_if_behind(self) -> None:
        if self._inbox.behind() and self._resume_wanted_at is None and self._resume_answer_by is None:
            # Not at once: the accepted of an own message in the gap is usually
            # a few milliseconds behind a live message that follows it.
            self._resume_wanted_at = time.monotonic() + self.gap_delay

    def _on_accepted(self, acc: Accepted) -> None:
        entry = self._outbox.accepted(acc.message_id)
        if entry is None:
            return  # a late answer to a retry we already have
        self.store.delete_outbox(acc.message_id)
        fut = self._futures.pop(acc.message_id, None)
        if fut is not None and not fut.done():
            fut.set_result(acc)
        # The server never pushes a message back to the connection it came
        # from: the SDK knows it and puts it in the sequence itself. If a copy
        # also arrives (resume, another device), the seq rule drops one.
        own = Message(acc.conversation_id, acc.seq, acc.message_id, self.user_id or "", self.role or "",
                      entry.body, acc.sent_at)
        self._release(self._inbox.receive(own))
        self._want_resume_if_behind()

    def _on_resumed(self, latest: dict[str, Any]) -> None:
        log.debug("%s resumed %s; last %s", self.user_id, latest, self._inbox.last)
        self._inbox.note_latest(latest)
        now = time.monotonic()
        self._resume_answer_by = None
        sent, self._resume_sent = self._resume_sent, None
        if self._probes and sent is not None and list(sent) == self._probes[:1]:
            self._probes.pop(0)
            if self._probes:
                self._resume_wanted_at = now
                return
        if not self._healthy:
            self._healthy = True
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            self._set_state(ConnectionState.CONNECTED)
        if self._inbox.behind():
            # Still behind after the replay: the server capped it, or live
            # messages raced it. Again at once if the last one made progress,
            # else paced by the backoff so a stuck server is not hammered.
            if self._inbox.progress() > self._resume_progress:
                self._resume_failures = 0
                self._resume_wanted_at = now
            else:
                self._resume_wanted_at = now + self.backoff.delay(self._resume_failures)
                self._resume_failures += 1
        else:
            self._resume_failures = 0
            self._resume_wanted_at = None

    def _on_error(self, frame: dict[str, Any], ws: ClientConnection) -> None:
        code = str(frame.get("code", "internal"))
        mid = frame.get("messageId")
        now = time.monotonic()
        if code == "unauthorized":
            # The server does not know this connection: only a new one helps.
            self._closer = asyncio.create_task(ws.close(1000, "reconnecting"))  # held until done
            return
        if isinstance(mid, str) and mid in self._outbox:
            entry = self._outbox.get(mid)
            assert entry is not None
            if code in RETRYABLE_SEND_CODES:
                self._outbox.retry_after(mid, now, self.backoff.delay(entry.failures))
                return
            self._outbox.reject(mid)
            self.store.delete_outbox(mid)
            fut = self._futures.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_exception(SendRejected(code, str(frame.get("message", "")), mid))
            return
        if mid is not None:
            return  # about a message no longer pending
        if self._resume_answer_by is not None and code in ("forbidden", "not_found"):
            # A resume listing a conversation the user may not read is refused
            # whole. Find the culprit by resuming the conversations one by one.
            # (An ack of such a conversation gets the same error; then the
            # probes simply succeed.)
            sent, self._resume_sent, self._resume_answer_by = self._resume_sent, None, None
            if self._probes and sent is not None and list(sent) == self._probes[:1]:
                gone = self._probes.pop(0)
                log.warning("no longer following conversation %s (%s)", gone, code)
                # Paused, not forgotten: the cursor stays, so if the
                # conversation comes back (transferred back to this agent)
                # nothing the app processed is handed over again.
                self._inbox.pause(gone)
            elif sent:
                self._probes = list(sent)
            self._resume_wanted_at = now
            return
        # internal, rate_limited, or anything else without a messageId.
        self._some_request_failed()

    def _some_request_failed(self) -> None:
        now = time.monotonic()
        self._outbox.shorten_deadlines(now, self.error_resend_timeout)
        if self._resume_answer_by is not None:
            self._resume_answer_by = min(self._resume_answer_by, now + self.error_resend_timeout)


def request_json(method: str, url: str, token: str, body: dict[str, Any] | None,
                  headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One REST call with a Bearer token; the status and the JSON body (errors included)."""
    data = json.dumps(body).encode() if body is not None else (b"{}" if method != "GET" else None)
    req = urllib.request.Request(url, method=method, data=data, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, _json_object(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, _json_object(err.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionLost(f"REST request failed: {exc}") from exc


async def _send_quietly(ws: ClientConnection, frame: str) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(frame)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("REST answer is not JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError("REST answer is not a JSON object")
    return data
