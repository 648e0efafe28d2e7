"""Messaging: the client frames (send, ack, typing, read, resume) and message history."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from chalicelib import core
from chalicelib.errors import (
    BadRequest,
    ConnectionGone,
    ConversationClosed,
    DuplicateMessage,
    NotFound,
    OnceChatError,
    RateLimited,
    ReservationRefused,
    SequenceConflict,
)
from chalicelib.models import (
    AckFrame,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
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

    def on_frame(self, origin: Origin, raw: str | None) -> dict[str, Any] | None:
        """Handle one client frame; every failure becomes an ``error`` frame.

        The reply to the frame's own connection (``accepted``, ``error``) is
        returned when the route sends it as its response
        (``config.reply_by_route``), else pushed now (and None returned).
        """
        frame: core.AnyClientFrame | None = None
        try:
            principal = self.principal_of(origin.connection_id)
            frame = core.parse_client_frame(raw, self.config.max_body_bytes)
            self.frame_limits.admit(origin.connection_id, frame.action, self.clock())
            if isinstance(frame, SendFrame):
                return self.answer(origin, self.send(principal, origin, frame))
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
        self.reply(origin, frame)
        return None

    def reply(self, origin: Origin, frame: dict[str, Any]) -> None:
        """Push a frame to the connection a request came from."""
        self.pusher.push(origin.connection_id, origin.domain_name, origin.stage, core.encode(frame))

    # ------------------------------------------------------------------- send

    def send(self, principal: Principal, origin: Origin | None, frame: SendFrame) -> dict[str, Any]:
        """Store a message exactly once, push it, and return the ``accepted`` frame.

        Three conditional writes, none retried under contention: reserve the
        next seq (an atomic increment that also checks the sender holds the
        open conversation), claim the messageId for that seq (the
        idempotency record), then store the message in the slot. A retry of
        a claimed messageId fails the claim: it is answered from the claim
        (``_settle``), and the seq it reserved is made void.

        The sending handler then pushes the message to every connection of
        the recipients (the fast path). Only what that could not do goes
        through the queue: pushes that failed, or all of them when the
        connections could not be read. A handler that dies after storing is
        covered by the sender's retry and by the sweeper.
        """
        origin_id = origin.connection_id if origin else None
        buckets = [(f"send#user#{principal.user_id}", self.config.rate_user_sends)]
        if origin_id:
            buckets.append((f"send#conn#{origin_id}", self.config.rate_connection_sends))
        existing: IdempotencyRecord | None = None
        try:
            self._limit_frames(buckets, frame.message_id)
        except RateLimited:
            # Over the limit: a retry of a stored message is still answered
            # (it stores nothing); only a new message is refused.
            existing = self._idempotency(principal, frame, self.clock())
            if existing is None:
                raise
        if existing is None:
            # A resend often reaches the container that stored the first copy:
            # answering from memory spares a reservation that would turn void.
            existing = self.accepted.get(core.idempotency_key_of(principal, frame))
            if existing is not None and existing.expires_at < self.clock() // 1000:
                existing = None
        reopened = False
        for _ in range(self.config.append_max_attempts):
            if existing is not None:
                settled = self._settle(principal, origin_id, frame, existing)
                if isinstance(settled, dict):
                    return settled
                existing = settled
                continue
            now = self.clock()
            try:
                conv = self.storage.reserve_seq(frame.conversation_id, principal, now)
            except ReservationRefused as refused:
                conv = refused.conversation
                if conv is None:
                    raise NotFound(f"conversation {frame.conversation_id} not found") from None
                core.require_participant(principal, conv)  # Forbidden
                # Closed: a retry of a stored message is still answered;
                # a new message of the customer reopens it within the
                # window (ConversationClosed otherwise), then is appended.
                existing = self._idempotency(principal, frame, now)
                if existing is None and conv.status == "closed":
                    reopened = self._commit_once(core.plan_reopen(
                        principal, conv, now, self.config.reopen_window_seconds,
                        frame.message_id)) or reopened
                continue
            self.last_seqs.raise_to(conv.conversation_id, conv.last_seq)
            append = core.new_message(
                principal, conv.conversation_id, frame, conv.last_seq, now,
                self.config.idempotency_ttl_seconds, self.config.message_retention_days * 86400)
            try:
                self.storage.claim_message_id(append.idem, now // 1000)
            except DuplicateMessage as dup:
                # Claimed before (a retry), or a concurrent duplicate claimed
                # first: our seq stays empty for good, so void it now, and
                # answer from the claim the first one wrote.
                self._void(conv, conv.last_seq, now)
                existing = dup.existing or self._idempotency(principal, frame, now)
                continue
            # The recipients' connections are read while the message is
            # stored: the fast path waits for one write less. A connection
            # that opens and resumes within that write misses both the push
            # and the replay; the sweeper pushes to it (it has not acked).
            recipients = tuple(conv.participant_ids())
            reading = self.background.submit(self.storage.connections_of_users, list(recipients))
            try:
                self.storage.put_message(append.message)
            except SequenceConflict:
                # A twin send of this claim stored it, or our slot was voided
                # (this send outlived the grace): settle the claim.
                existing = append.idem
                continue
            m = append.message
            self.accepted.put(append.idem.key, append.idem)
            self._deliver_now(m, recipients, origin_id, reading)
            if reopened:
                self.assign_new_waiting(frame.conversation_id)
            return core.accepted_frame(m.conversation_id, m.message_id, m.seq, m.sent_at, False)
        raise OnceChatError("conversation too busy, retry the send", message_id=frame.message_id)

    def _deliver_now(self, message: MessageRecord, recipients: tuple[str, ...],
                     origin_id: str | None,
                     reading: Future[dict[str, list[ConnectionRecord]]] | None = None) -> None:
        """Push a message just stored; queue only what the fast path could not push."""
        retry = self._push_now(message, recipients, origin_id, reading)
        if retry is None or retry:
            self._enqueue(Delivery(message, origin_id, recipients,
                                   fast=retry is not None, retry=retry or ()))

    def _push_now(self, message: MessageRecord, recipients: tuple[str, ...],
                  origin_id: str | None,
                  reading: Future[dict[str, list[ConnectionRecord]]] | None = None,
                  ) -> tuple[ConnectionRecord, ...] | None:
        """The fast path: push a message just stored to its recipients' connections.

        Returns the connections the push failed for (None when the fast path
        could not run at all: the caller queues the whole delivery). The
        consumer then pushes only to those connections, reading nothing. A
        connection opened after the read resumes on its own, after the
        message was stored (the read overlapping the store leaves a window
        of one write, which the sweeper covers). A 410 prunes, as in the
        consumer. ``reading`` is the connections read already under way.
        """
        data = core.encode(message.frame())
        try:
            connections = (reading.result() if reading is not None
                           else self.storage.connections_of_users(list(recipients)))
        except Exception as err:
            log.info("fast path of %s#%d skipped: %s", message.conversation_id, message.seq, err)
            return None
        retry: list[ConnectionRecord] = []
        for conn in core.delivery_targets(recipients, connections, origin_id):
            try:
                self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
            except ConnectionGone:
                if not self.prune_gone(conn):
                    retry.append(conn)  # maybe still in its $connect: the consumer tries again
            except Exception as exc:
                log.info("fast push of %s#%d to %s failed: %s", message.conversation_id,
                         message.seq, conn.connection_id, exc)
                retry.append(conn)
        return tuple(retry)

    def _void(self, conv: Conversation, seq: int, now_ms: int) -> MessageRecord:
        """Make an empty seq void and push it like a message (best effort: resume also has it).

        Recipients that got later seqs are waiting for this one; the push
        spares them a resume.
        """
        filled = self.storage.fill_hole(conv.conversation_id, seq, now_ms // 1000)
        if filled.void:
            try:
                self.queue.enqueue(Delivery(filled, None, tuple(conv.participant_ids())))
            except OnceChatError as err:
                log.info("void %s#%d not enqueued: %s", conv.conversation_id, seq, err.message)
        return filled

    def _settle(self, principal: Principal, origin_id: str | None, frame: SendFrame,
                existing: IdempotencyRecord) -> dict[str, Any] | IdempotencyRecord | None:
        """Answer a send of a claimed messageId; return the ``accepted`` frame, or the claim to settle next.

        - The claimed slot holds the message: answer with its seq (a
          duplicate), and deliver it again through the queue. The first
          attempt may have died before pushing; if it queued a delivery,
          SQS deduplication (5 min) drops this one, and recipients drop
          a second push by seq.
        - The slot is empty: the first attempt is still storing, or died
          after its claim. Store the message there now (the same payload:
          ``replay_of`` checked it); of two sends storing it, one writes and
          the other finds its twin.
        - The slot is void (a reader found it empty past the sweep grace):
          the message was never stored, nor ever accepted. Reserve a new
          seq and move the claim there (``move_claim``: one of two racing
          sends moves it; the other settles the moved claim).
        """
        core.replay_of(frame, existing)  # Conflict for another body
        cid, seq = existing.conversation_id, existing.seq
        stored = self.storage.get_message(cid, seq)
        stored_now = False
        if stored is None:
            claimed = core.claimed_message(principal, frame, existing,
                                           self.config.message_retention_days * 86400)
            try:
                self.storage.put_message(claimed)
                stored, stored_now = claimed, True
            except SequenceConflict as taken:
                stored = taken.existing or self.storage.get_message(cid, seq)
        if stored is not None and core.is_claimed_by(stored, existing):
            self.accepted.put(existing.key, existing)
            self._enqueue(Delivery(stored, origin_id))
            return core.accepted_frame(cid, existing.message_id, seq, existing.sent_at, not stored_now)
        # Void: store the message at a new seq.
        now = self.clock()
        try:
            conv = self.storage.reserve_seq(cid, principal, now)
        except ReservationRefused as refused:
            if refused.conversation is None:
                raise NotFound(f"conversation {cid} not found") from None
            core.require_participant(principal, refused.conversation)  # Forbidden
            raise ConversationClosed("conversation is closed") from None
        self.last_seqs.raise_to(cid, conv.last_seq)
        append = core.new_message(
            principal, cid, frame, conv.last_seq, now,
            self.config.idempotency_ttl_seconds, self.config.message_retention_days * 86400)
        if not self.storage.move_claim(append.idem, seq):
            self._void(conv, conv.last_seq, now)
            return self._idempotency(principal, frame, now)
        try:
            self.storage.put_message(append.message)
        except SequenceConflict:
            return append.idem
        m = append.message
        self.accepted.put(append.idem.key, append.idem)
        self._deliver_now(m, tuple(conv.participant_ids()), origin_id)
        return core.accepted_frame(cid, m.message_id, m.seq, m.sent_at, False)

    # -------------------------------------------------------------------- ack

    def ack(self, principal: Principal, frame: AckFrame) -> None:
        """Move the caller's cumulative ack cursor forward (never back).

        The conversation is read only when this container has not yet seen
        its counter reach ``seq`` (``lastSeq`` only grows): the cursor update
        is conditioned on the caller's own membership, so a known-valid
        ``seq`` needs nothing else. A refused update takes the full path.
        """
        if frame.seq <= self.last_seqs.get(frame.conversation_id, 0) and self.storage.advance_ack(
                principal.user_id, frame.conversation_id, frame.seq):
            return
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
        self._limit_frames([(f"typing#conn#{origin.connection_id}",
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
        users = list(users)
        unknown = [u for u in users if not known or u not in known]
        found = self.storage.connections_of_users(unknown) if unknown else {}
        for user in users:
            conns = known[user] if known and user in known else found[user]
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

        Listed conversations replay after the client's cursor; the other
        conversations the user holds now (a customer's open ones, an agent's
        active ones: a sparse index, so closed history costs nothing) after
        the stored ack cursor. At most ``resume_max_messages`` frames go out
        per resume; ``resumed`` tells where each conversation stands, so a
        client still behind simply resumes again.
        """
        requested = {cid: self._conversation(cid) for cid in frame.cursors}
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
        self.reply(origin, core.resumed_frame(latest))

    def _replay_after(self, origin: Origin, conv: Conversation, after: int,
                      budget: int) -> tuple[int, int]:
        """Push the messages after ``after`` in seq order; return where it stopped and the budget left.

        A seq with no message is reserved by a send still storing it, or by
        one that died. Seqs are reserved in order, so once a later message
        (or, at the tail, the latest reservation) is older than the sweep
        grace, the send of the empty seq cannot still be running: the seq is
        made void (``fill_hole``) and replayed as such. A younger hole stops
        the replay there: its message is on its way, pushed like any other.
        """
        cid, position = conv.conversation_id, after
        now = self.clock()
        dead_before = now - self.config.sweep_grace_seconds * 1000
        while budget > 0 and position < conv.last_seq:
            page = self.storage.messages_after(cid, position, min(self.config.page_size, budget))
            for message in page:
                if message.seq > position + 1 and core.epoch_ms(message.sent_at) >= dead_before:
                    return position, budget  # a hole that may still fill
                while position + 1 < message.seq and budget > 0:
                    position += 1
                    budget -= 1
                    self.reply(origin, self._void(conv, position, now).frame())
                if budget <= 0:
                    return position, budget
                self.reply(origin, message.frame())
                position = message.seq
                budget -= 1
            if not page or len(page) < self.config.page_size:
                break
        # The tail: seqs reserved after the last stored message.
        if position < conv.last_seq and (conv.reserved_at or 0) < dead_before:
            while position < conv.last_seq and budget > 0:
                position += 1
                budget -= 1
                self.reply(origin, self._void(conv, position, now).frame())
        return position, budget

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
