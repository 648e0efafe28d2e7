"""Messaging: the client frames (send, ack, typing, read, resume) and message history."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from typing import Any

from chalicelib import core
from chalicelib.errors import (
    BadRequest,
    ConnectionGone,
    ConversationClosed,
    DuplicateMessage,
    OnceChatError,
    RateLimited,
    SequenceConflict,
)
from chalicelib.models import (
    AckFrame,
    ConnectionRecord,
    IdempotencyRecord,
    Principal,
    ReadFrame,
    ResumeFrame,
    SendFrame,
    TypingFrame,
)
from chalicelib.ports import Delivery
from chalicelib.services.base import Origin, ServiceBase

log = logging.getLogger("oncechat")


class MessagingMixin(ServiceBase):
    """The hot path: every client frame, and the history routes."""

    def on_frame(self, origin: Origin, raw: str | None) -> None:
        """Handle one client frame; every failure becomes an ``error`` frame."""
        frame: core.AnyClientFrame | None = None
        try:
            principal = self.principal_of(origin.connection_id)
            frame = core.parse_client_frame(raw, self.config.max_body_bytes)
            self.frame_limits.admit(origin.connection_id, frame.action, self.clock())
            if isinstance(frame, SendFrame):
                self.reply(origin, self.send(principal, origin, frame))
            elif isinstance(frame, AckFrame):
                self.ack(principal, frame)
            elif isinstance(frame, ResumeFrame):
                self.resume(principal, origin, frame)
            elif isinstance(frame, TypingFrame):
                self.typing(principal, origin, frame)
            else:
                self.read(principal, origin, frame)
        except OnceChatError as err:
            self.reply(origin, core.error_frame(err))
        except ConnectionGone:
            log.info("connection %s left before its reply", origin.connection_id)
        except Exception:
            log.exception("frame on %s failed", origin.connection_id)
            message_id = frame.message_id if isinstance(frame, SendFrame) else None
            self.reply(origin, core.error_frame(OnceChatError(
                "internal error; retry with the same messageId", message_id=message_id)))

    def reply(self, origin: Origin, frame: dict[str, Any]) -> None:
        """Push a frame to the connection a request came from."""
        self.pusher.push(origin.connection_id, origin.domain_name, origin.stage, core.encode(frame))

    # ------------------------------------------------------------------- send

    def send(self, principal: Principal, origin: Origin | None, frame: SendFrame) -> dict[str, Any]:
        """Store a message exactly once, enqueue it, and return the ``accepted`` frame.

        The loop is optimistic concurrency on the conversation's counter:
        read ``last_seq``, write seq ``last_seq + 1`` on condition that the
        counter has not moved, re-read and retry when it has. A racing
        duplicate loses the idempotency condition and is answered from the
        record the winner wrote.
        """
        origin_id = origin.connection_id if origin else None
        buckets = [(f"send#user#{principal.user_id}", self.config.rate_user_sends)]
        if origin_id:
            buckets.append((f"send#conn#{origin_id}", self.config.rate_connection_sends))
        # Optimistic: the first attempt does not read the idempotency record;
        # the transaction's condition on it tells a retry from a new message.
        existing: IdempotencyRecord | None = None
        try:
            self._take_tokens(buckets, frame.message_id)
        except RateLimited:
            # Over the limit: a retry of a stored message is still answered
            # (it stores nothing); only a new message is refused.
            existing = self._idempotency(principal, frame, self.clock())
            if existing is None:
                raise
        reopened = False
        for attempt in range(self.config.append_max_attempts):
            now = self.clock()
            conv = self._conversation(frame.conversation_id)
            if conv.status == "closed" and existing is None:  # a retry is still answered
                existing = self._idempotency(principal, frame, now)
                if existing is None:
                    # The customer's message reopens it within the window
                    # (ConversationClosed otherwise); then it is appended.
                    core.require_participant(principal, conv)
                    reopened = self._commit_once(core.plan_reopen(
                        principal, conv, now, self.config.reopen_window_seconds,
                        frame.message_id)) or reopened
                    continue
            decision = core.decide_send(
                principal, conv, frame, existing, now, self.config.idempotency_ttl_seconds,
                self.config.message_retention_days * 86400,
            )
            if isinstance(decision, core.Replay):
                idem = decision.idem
                stored = self.storage.get_message(idem.conversation_id, idem.seq)
                if stored is not None:
                    # The first attempt may have died between commit and
                    # enqueue: enqueue again. If it did enqueue, SQS dedup
                    # (5 min) or the recipients' seq rule drops the copy.
                    self._enqueue(Delivery(stored, origin_id))
                return core.accepted_frame(
                    idem.conversation_id, idem.message_id, idem.seq, idem.sent_at, True
                )
            try:
                self.storage.append_message(
                    decision.message, decision.idem, decision.expected_last_seq, now // 1000
                )
            except SequenceConflict:
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
                continue
            except DuplicateMessage:
                # Stored before (a retry), or a concurrent duplicate committed
                # first: answer from the record it wrote.
                existing = self._idempotency(principal, frame, now)
                continue
            except ConversationClosed:
                continue  # closed since we read it: re-read (reopen, or refuse)
            self._enqueue(Delivery(decision.message, origin_id))
            if reopened:
                self.assign_new_waiting(frame.conversation_id)
            m = decision.message
            return core.accepted_frame(m.conversation_id, m.message_id, m.seq, m.sent_at, False)
        raise OnceChatError("conversation too busy, retry the send", message_id=frame.message_id)

    # -------------------------------------------------------------------- ack

    def ack(self, principal: Principal, frame: AckFrame) -> None:
        """Move the caller's cumulative ack cursor forward (never back)."""
        conv = self._conversation(frame.conversation_id)
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
        conv = self._conversation(frame.conversation_id)
        core.require_participant(principal, conv)
        if conv.status == "closed":
            raise ConversationClosed("conversation is closed")
        self._take_tokens([(f"typing#conn#{origin.connection_id}",
                            self.config.rate_connection_typing)])
        others = [u for u in conv.participant_ids() if u != principal.user_id]
        self.push_to_users(others, core.typing_frame(conv.conversation_id, principal))

    def read(self, principal: Principal, origin: Origin, frame: ReadFrame) -> None:
        """Move the caller's read cursor forward and tell the others (and the caller's other devices)."""
        conv = self._conversation(frame.conversation_id)
        core.require_participant(principal, conv)
        if frame.seq > conv.last_seq:
            raise BadRequest(f"seq {frame.seq} is beyond the latest message {conv.last_seq}")
        moved = self.storage.advance_read(principal.user_id, conv.conversation_id, frame.seq)
        if not moved and self.storage.get_participant(principal.user_id, conv.conversation_id) is None:
            self._join(principal, conv.conversation_id)
            moved = self.storage.advance_read(principal.user_id, conv.conversation_id, frame.seq)
        if moved:
            self.push_to_users(conv.participant_ids(),
                                core.read_frame(conv.conversation_id, principal, frame.seq),
                                skip_connection=origin.connection_id)

    def push_to_users(self, users: Iterable[str], frame: dict[str, Any],
                       skip_connection: str | None = None,
                       known: dict[str, list[ConnectionRecord]] | None = None) -> int:
        """Best-effort push of an ephemeral frame to every connection of ``users``.

        ``known`` holds connections the caller already read (by user); the
        others are looked up.
        """
        data = core.encode(frame)
        pushed = 0
        for user in users:
            conns = known[user] if known and user in known else self.storage.connections_of(user)
            for conn in conns:
                if conn.connection_id == skip_connection:
                    continue
                try:
                    self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
                    pushed += 1
                except ConnectionGone:
                    self.prune_gone(conn)
                except Exception as exc:  # ephemeral: a lost one is not retried
                    log.info("push of %s to %s failed: %s", frame["type"], conn.connection_id, exc)
        return pushed

    # ----------------------------------------------------------------- resume

    def resume(self, principal: Principal, origin: Origin, frame: ResumeFrame) -> None:
        """Replay from DynamoDB, in seq order and in pages, then send ``resumed``.

        Listed conversations replay after the client's cursor, the user's
        other conversations after the stored ack cursor. At most
        ``resume_max_messages`` frames go out per resume; ``resumed`` tells
        the latest seq of each conversation, so a client still behind
        simply resumes again.
        """
        requested = {cid: self._conversation(cid) for cid in frame.cursors}
        for conv in requested.values():
            core.require_participant(principal, conv)
        memberships = self.storage.participants_of_user(principal.user_id)
        cursors = core.resume_cursors(frame.cursors, memberships)
        budget = self.config.resume_max_messages
        latest: dict[str, int] = {}
        for cid, after in cursors.items():
            conv = requested.get(cid) or self.storage.get_conversation(cid)
            if conv is None or not core.is_participant(principal, conv):
                continue  # e.g. a conversation transferred away
            position = after
            while budget > 0 and position < conv.last_seq:
                page = self.storage.messages_after(cid, position, min(self.config.page_size, budget))
                if not page:
                    break
                for message in page:
                    self.reply(origin, message.frame())
                budget -= len(page)
                position = page[-1].seq
            latest[cid] = conv.last_seq
        self.reply(origin, core.resumed_frame(latest))

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
        conv = self._conversation(conversation_id)
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
