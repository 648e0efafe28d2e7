"""Messaging: the client frames (send, ack, typing, read, resume) and message history.

A send runs the send state machine (``chalicelib.core.send``) and a resume
the replay machine (``chalicelib.core.replay``); this module executes their
commands against storage and the push channel.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable
from typing import Any

from chalicelib import core
from chalicelib.config import Config
from chalicelib.core import replay as replay_protocol
from chalicelib.core import send as send_protocol
from chalicelib.errors import (
    BadRequest,
    ConnectionGone,
    ConversationClosed,
    DuplicateMessage,
    OnceChatError,
    RateLimited,
    ReservationRefused,
    SequenceConflict,
)
from chalicelib.limits import FrameLimits
from chalicelib.models import (
    AckFrame,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    Principal,
    ReadFrame,
    ResumeFrame,
    SendFrame,
    TypingFrame,
)
from chalicelib.ports import Delivery
from chalicelib.services.common import Clock, Origin
from chalicelib.services.common import Conversations
from chalicelib.services.connections import Connections
from chalicelib.services.desk import Desk
from chalicelib.services.fanout import Fanout
from chalicelib.services.local_state import BoundedCache
from chalicelib.services.outbox import Outbox
from chalicelib.storage.base import MessagingStore

log = logging.getLogger("oncechat")

#: Accepted messageIds a container remembers.
ACCEPTED_CACHE_SIZE = 50_000


class Messaging:
    """The hot path: every client frame, and the history routes."""

    def __init__(self, config: Config, storage: MessagingStore, conversations: Conversations,
                 connections: Connections, desk: Desk, outbox: Outbox, fanout: Fanout,
                 limits: FrameLimits, clock: Clock, sleep: Callable[[float], None]) -> None:
        self.config = config
        self.storage = storage
        self.conversations = conversations
        self.connections = connections
        self.desk = desk
        self.outbox = outbox
        self.fanout = fanout
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        #: Idempotency records of sends this container stored or answered (see local_state).
        self.accepted: BoundedCache[str, IdempotencyRecord] = BoundedCache(ACCEPTED_CACHE_SIZE)
        self._background: ThreadPoolExecutor | None = None

    @property
    def background(self) -> ThreadPoolExecutor:
        """Threads for a read that overlaps a write of the same handler (the fast path's)."""
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oncechat")
        return self._background

    def on_frame(self, origin: Origin, raw: str | None) -> dict[str, Any] | None:
        """Handle one client frame; every failure becomes an ``error`` frame.

        The frame is admitted by the connection's frame budget before
        anything else (no AWS request), then by its action's. The reply to
        the frame's own connection (``accepted``, ``error``) is returned when
        the route sends it as its response (``config.reply_by_route``), else
        pushed now (and None returned).
        """
        frame: core.AnyClientFrame | None = None
        try:
            self.limits.admit_frame(origin.connection_id, self.clock())
            principal = self.connections.principal_of(origin.connection_id)
            frame = core.parse_client_frame(raw, self.config.max_body_bytes)
            if isinstance(frame, SendFrame):
                return self.answer(origin, self.send(principal, origin, frame))
            self.limits.admit_action(origin.connection_id, principal, frame.action, self.clock())
            if isinstance(frame, AckFrame):
                self.ack(principal, frame)
            elif isinstance(frame, ResumeFrame):
                self.resume(principal, origin, frame)
            elif isinstance(frame, TypingFrame):
                self.typing(principal, origin, frame)
            else:
                self.read(principal, origin, frame)
        except OnceChatError as err:
            return self.answer(origin, core.error_frame(err))
        except ConnectionGone:
            log.info("connection %s left before its reply", origin.connection_id)
        except Exception:
            log.exception("frame on %s failed", origin.connection_id)
            message_id = frame.message_id if isinstance(frame, SendFrame) else None
            return self.answer(origin, core.error_frame(OnceChatError(
                "internal error; retry with the same messageId", message_id=message_id)))
        return None

    def answer(self, origin: Origin, frame: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to a frame: returned for the route to send, or pushed now."""
        if self.config.reply_by_route:
            return frame
        self.fanout.reply(origin, frame)
        return None

    # ------------------------------------------------------------------- send

    def send(self, principal: Principal, origin: Origin | None, frame: SendFrame) -> dict[str, Any]:
        """Store a message exactly once, push it, and return the ``accepted`` frame.

        The decisions are the send protocol's (``chalicelib.core.send``);
        this drives it. The sending handler then pushes the message to every
        connection of the recipients (the fast path). Only what that could
        not do goes through the queue: pushes that failed, or all of them
        when the connections could not be read. A handler that dies after
        storing is covered by the sender's retry and by the sweeper.
        Raises the protocol's refusal.
        """
        machine, run = self.begin_send(principal, origin, frame)
        command = machine.start()
        while True:
            if isinstance(command, send_protocol.Accept):
                return run.accept(command)
            if isinstance(command, send_protocol.Fail):
                raise command.error
            command = machine.advance(run.execute(command), self.clock())

    def begin_send(self, principal: Principal, origin: Origin | None,
                   frame: SendFrame) -> tuple[send_protocol.SendProtocol, SendRun]:
        """The send protocol of one frame and the I/O that runs its commands, not started yet.

        The frame is admitted by the send limits here (a refusal is the
        machine's to answer: a retry of an accepted message still is).
        """
        origin_id = origin.connection_id if origin else None
        limited: RateLimited | None = None
        if origin_id is not None:
            try:
                self.limits.admit_action(origin_id, principal, "send", self.clock(), frame.message_id)
            except RateLimited as err:
                limited = err
        # A resend often reaches the container that stored the first copy:
        # answering from memory spares a reservation that would turn void.
        cached = self.accepted.get(core.idempotency_key_of(principal, frame))
        if cached is not None and cached.expires_at < self.clock() // 1000:
            cached = None
        return self.send_machine(principal, frame, limited, cached), SendRun(self, principal, frame, origin_id)

    def send_machine(self, principal: Principal, frame: SendFrame, limited: RateLimited | None = None,
                     cached: IdempotencyRecord | None = None) -> send_protocol.SendProtocol:
        """The send protocol of one frame, with this stage's settings."""
        return send_protocol.SendProtocol(
            principal, frame, self.clock(), self.config.idempotency_ttl_seconds,
            self.config.message_retention_days * 86400, self.config.reopen_window_seconds,
            self.config.append_max_attempts, limited, cached)

    def void(self, conv: Conversation, seq: int, now_ms: int) -> MessageRecord:
        """Make an empty seq void and deliver it like a message (best effort: resume also has it)."""
        filled = self.storage.fill_hole(conv.conversation_id, seq, now_ms // 1000)
        if filled.void:
            self.outbox.void(conv, filled)
        return filled

    # -------------------------------------------------------------------- ack

    def ack(self, principal: Principal, frame: AckFrame) -> None:
        """Move the caller's cumulative ack cursor forward (never back).

        The conversation is read only when this container has not yet seen
        its counter reach ``seq`` (``lastSeq`` only grows): the cursor update
        is conditioned on the caller's own membership, so a known-valid
        ``seq`` needs nothing else. A refused update takes the full path.
        """
        if frame.seq <= self.conversations.last_seqs.get(frame.conversation_id, 0) and self.storage.advance_ack(
                principal.user_id, frame.conversation_id, frame.seq):
            return
        conv = self.conversations.get(frame.conversation_id)
        core.require_participant(principal, conv)
        if frame.seq > conv.last_seq:
            raise BadRequest(f"seq {frame.seq} is beyond the latest message {conv.last_seq}")
        if self.storage.advance_ack(principal.user_id, conv.conversation_id, frame.seq):
            return
        if self.storage.get_participant(principal.user_id, conv.conversation_id) is None:
            self._join(principal, conv.conversation_id)
            self.storage.advance_ack(principal.user_id, conv.conversation_id, frame.seq)

    # ------------------------------------------------------- typing & read

    def typing(self, principal: Principal, origin: Origin, frame: TypingFrame) -> None:
        """Relay ``typing`` to the other participants' connections; nothing is stored."""
        conv = self.conversations.get(frame.conversation_id)
        core.require_participant(principal, conv)
        if conv.status == "closed":
            raise ConversationClosed("conversation is closed")
        others = [u for u in conv.participant_ids() if u != principal.user_id]
        self.fanout.push_to_users(others, core.typing_frame(conv.conversation_id, principal))

    def read(self, principal: Principal, origin: Origin, frame: ReadFrame) -> None:
        """Move the caller's read cursor forward and tell the others (and the caller's other devices)."""
        conv = self.conversations.get(frame.conversation_id)
        core.require_participant(principal, conv)
        if frame.seq > conv.last_seq:
            raise BadRequest(f"seq {frame.seq} is beyond the latest message {conv.last_seq}")
        moved = self.storage.advance_read(principal.user_id, conv.conversation_id, frame.seq)
        if not moved and self.storage.get_participant(principal.user_id, conv.conversation_id) is None:
            self._join(principal, conv.conversation_id)
            moved = self.storage.advance_read(principal.user_id, conv.conversation_id, frame.seq)
        if moved:
            self.fanout.push_to_users(conv.participant_ids(),
                                core.read_frame(conv.conversation_id, principal, frame.seq),
                                skip_connection=origin.connection_id)

    # ----------------------------------------------------------------- resume

    def resume(self, principal: Principal, origin: Origin, frame: ResumeFrame) -> None:
        """Replay from DynamoDB, in seq order and in pages, then send ``resumed``.

        Listed conversations replay after the client's cursor; the other
        conversations the user holds now (a customer's open ones, an agent's
        active ones: a sparse index, so closed history costs nothing) after
        the stored ack cursor. At most ``resume_max_messages`` frames go out
        per resume; ``resumed`` tells where each conversation stands, so a
        client still behind simply resumes again.
        """
        requested = {cid: self.conversations.get(cid) for cid in frame.cursors}
        for conv in requested.values():
            core.require_participant(principal, conv)
        held = {c.conversation_id: c for c in self.storage.open_conversations_of(principal)
                if c.conversation_id not in requested}
        cursors = dict(frame.cursors)
        for cid in held:
            member = self.storage.get_participant(principal.user_id, cid)
            cursors[cid] = member.ack_seq if member else 0
        budget = self.config.resume_max_messages
        latest: dict[str, int] = {}
        for cid, after in cursors.items():
            conv = requested.get(cid) or held[cid]
            if not core.is_participant(principal, conv):
                continue  # e.g. a conversation transferred away
            _, budget = self._replay_after(origin, conv, after, budget)
            # The latest seq, even when the replay stopped short (the budget, or
            # a seq still being stored): a client behind it resumes again. Its
            # later seqs may have been pushed to a connection it no longer has.
            latest[cid] = conv.last_seq
        self.fanout.reply(origin, core.resumed_frame(latest))

    def _replay_after(self, origin: Origin, conv: Conversation, after: int,
                      budget: int) -> tuple[int, int]:
        """Push the messages after ``after`` in seq order; return where it stopped and the budget left.

        The replay protocol (``chalicelib.core.replay``) decides which seqs
        are sent, which old holes are made void, and where a young hole
        stops the replay.
        """
        machine = replay_protocol.ReplayProtocol(conv, after, budget, self.clock(),
                                                 self.config.sweep_grace_seconds, self.config.page_size,
                                                 self.config.resume_hole_wait_ms)
        command = machine.start()
        while not isinstance(command, replay_protocol.Done):
            command = machine.advance(self.replay_step(origin, conv, command, machine.now_ms))
        return command.position, command.budget

    def replay_step(self, origin: Origin, conv: Conversation, command: replay_protocol.Command,
                    now_ms: int) -> replay_protocol.Outcome:
        """Run one command of a replay."""
        if isinstance(command, replay_protocol.ReadPage):
            return replay_protocol.Page(tuple(self.storage.messages_after(
                conv.conversation_id, command.after, command.limit)))
        if isinstance(command, replay_protocol.Void):
            return replay_protocol.Voided(self.void(conv, command.seq, now_ms))
        if isinstance(command, replay_protocol.Wait):
            self.sleep(command.ms / 1000)
            return replay_protocol.Waited()
        if isinstance(command, replay_protocol.Emit):
            self.fanout.reply(origin, command.message.frame())
            return replay_protocol.Emitted()
        raise TypeError(f"not a command to execute: {command!r}")

    def list_messages(
        self, principal: Principal, conversation_id: str, after: int | None = None,
        limit: int = 50, before: int | None = None,
    ) -> dict[str, Any]:
        """A page of messages in seq order, after ``after`` or before ``before``.

        ``next`` is the ``after`` of the following page (None at the latest
        message); ``prev`` is the ``before`` of the preceding page (None at seq 1).
        """
        if after is not None and before is not None:
            raise BadRequest("give after or before, not both")
        conv = self.conversations.get(conversation_id)
        core.require_participant(principal, conv)
        if before is not None:
            page = self.storage.messages_before(conversation_id, before, limit)
        else:
            page = self.storage.messages_after(conversation_id, after or 0, limit)
        return {
            "messages": [m.frame() for m in page],
            "next": page[-1].seq if page and page[-1].seq < conv.last_seq else None,
            "prev": page[0].seq if page and page[0].seq > 1 else None,
        }

    def _join(self, principal: Principal, conversation_id: str) -> None:
        self.storage.add_participant(Participant(
            user_id=principal.user_id, conversation_id=conversation_id, role=principal.role,
            joined_at=core.iso_ms(self.clock())))


class SendRun:
    """The I/O of one send: executes the send protocol's commands and its final ``Accept``."""

    def __init__(self, messaging: Messaging, principal: Principal, frame: SendFrame,
                 origin_id: str | None) -> None:
        self.m = messaging
        self.principal = principal
        self.frame = frame
        self.origin_id = origin_id
        #: The recipients' connections, read while the message is stored.
        self.reading: Future[dict[str, list[ConnectionRecord]]] | None = None
        #: The agent of the conversation this send reopened (it gets it back if it can).
        self.previous_agent: str | None = None

    def execute(self, command: send_protocol.Command) -> send_protocol.Outcome:
        m, storage = self.m, self.m.storage
        if isinstance(command, send_protocol.Reserve):
            try:
                conv = storage.reserve_seq(command.conversation_id, self.principal, m.clock())
            except ReservationRefused as refused:
                return send_protocol.Refused(refused.conversation)
            m.conversations.seen(conv)
            return send_protocol.Reserved(conv)
        if isinstance(command, send_protocol.Claim):
            try:
                storage.claim_message_id(command.idem, m.clock() // 1000)
            except DuplicateMessage as dup:
                return send_protocol.ClaimTaken(dup.existing)
            return send_protocol.Claimed()
        if isinstance(command, send_protocol.Store):
            if command.recipients is not None:
                # The recipients' connections are read while the message is
                # stored: the fast path waits for one write less. A connection
                # that opens and resumes within that write misses both the push
                # and the replay; the sweeper pushes to it (it has not acked).
                self.reading = m.background.submit(storage.connections_of_users, list(command.recipients))
            try:
                storage.put_message(command.message)
            except SequenceConflict as taken:
                return send_protocol.SlotTaken(taken.existing)
            return send_protocol.Stored()
        if isinstance(command, send_protocol.Lookup):
            return send_protocol.Found(storage.get_idempotency(
                self.principal.user_id, self.frame.conversation_id, self.frame.message_id,
                m.clock() // 1000))
        if isinstance(command, send_protocol.ReadSlot):
            return send_protocol.Found(storage.get_message(command.conversation_id, command.seq))
        if isinstance(command, send_protocol.Void):
            return send_protocol.Voided(m.void(command.conversation, command.seq, m.clock()))
        if isinstance(command, send_protocol.MoveClaim):
            return send_protocol.Moved(storage.move_claim(command.idem, command.from_seq))
        if isinstance(command, send_protocol.Reopen):
            committed = m.desk.reopen(command.transition)
            if committed:
                self.previous_agent = command.transition.before.agent_id
            return send_protocol.Reopened(committed)
        raise TypeError(f"not a command to execute: {command!r}")

    def accept(self, done: send_protocol.Accept) -> dict[str, Any]:
        """Deliver what the protocol accepted, and answer ``accepted``."""
        m = self.m
        m.accepted.put(done.claim.key, done.claim)
        if done.fast and done.recipients is not None:
            m.fanout.deliver_now(done.message, done.recipients, self.origin_id, self.reading)
        else:
            # A settled claim: the first attempt may have died before pushing.
            # If it queued a delivery, SQS deduplication (5 min) drops this one,
            # and recipients drop a second push by seq.
            m.outbox.enqueue(Delivery(done.message, self.origin_id))
        if done.reopened:
            m.desk.assign_reopened(done.message.conversation_id, self.previous_agent)
        return done.frame()
