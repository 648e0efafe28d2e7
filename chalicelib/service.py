"""The services: they read state, ask the pure core what to do, and write.

``ChatService`` serves the WebSocket actions and the REST routes;
``DeliveryService`` is the SQS consumer that pushes stored messages to
recipients. Both depend only on the ports (storage, queue, pusher) and a
clock, so tests run them against the in-memory adapters or against AWS.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chalicelib import core
from chalicelib.auth import verify_token
from chalicelib.config import Config
from chalicelib.errors import (
    BadRequest,
    ConnectionGone,
    DuplicateMessage,
    Forbidden,
    NotFound,
    OnceChatError,
    SequenceConflict,
    Unauthorized,
)
from chalicelib.models import (
    AckFrame,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    Principal,
    ResumeFrame,
    SendFrame,
)
from chalicelib.ports import Delivery, DeliveryQueue, Pusher
from chalicelib.storage.base import Storage

log = logging.getLogger("oncechat")

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Origin:
    """The connection a frame arrived on, and where its management API lives."""

    connection_id: str
    domain_name: str
    stage: str


class ChatService:
    """Connections, the three client actions, and the REST routes."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        queue: DeliveryQueue,
        pusher: Pusher,
        clock: Clock = wall_clock_ms,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.config = config
        self.storage = storage
        self.queue = queue
        self.pusher = pusher
        self.clock = clock
        self.new_id = new_id

    # ------------------------------------------------------------ connections

    def connect(self, token: str | None, origin: Origin) -> Principal:
        """Verify the token and record the connection. Never pushes (AWS answers 410 in $connect)."""
        principal = verify_token(token, self.config.jwt_secret)
        now = self.clock()
        self.storage.put_connection(
            ConnectionRecord(
                connection_id=origin.connection_id,
                user_id=principal.user_id,
                role=principal.role,
                connected_at=core.iso_ms(now),
                domain_name=origin.domain_name,
                stage=origin.stage,
                expires_at=now // 1000 + self.config.connection_ttl_seconds,
            )
        )
        if principal.role == "agent":
            self.storage.agent_connected(principal.user_id, core.iso_ms(now))
            self.assign_waiting()
        return principal

    def disconnect(self, connection_id: str) -> None:
        """Forget a connection (``$disconnect``, best-effort on AWS)."""
        self.forget_connection(connection_id)

    def forget_connection(self, connection_id: str) -> None:
        """Remove a connection record once; an agent's last connection takes it offline."""
        removed = self.storage.delete_connection(connection_id)
        if removed is not None and removed.role == "agent":
            self.storage.agent_disconnected(removed.user_id, core.iso_ms(self.clock()))

    def prune_gone(self, conn: ConnectionRecord) -> bool:
        """A push got 410: forget the connection, unless it may still be in ``$connect``.

        API Gateway answers 410 for a connection whose ``$connect`` has not
        returned yet, and ``$connect`` writes the record before it returns:
        a delivery racing a new connection would delete the record of a
        connection about to open. ``$connect`` cannot run longer than the
        29 s integration timeout, so only records older than
        ``core.CONNECT_SETTLE_MS`` are pruned; a younger one that is really
        gone goes with its ``$disconnect``, a later 410, or its TTL.
        """
        if self.clock() - core.epoch_ms(conn.connected_at) < core.CONNECT_SETTLE_MS:
            return False
        self.forget_connection(conn.connection_id)
        return True

    def principal_of(self, connection_id: str) -> Principal:
        """The user behind a connection, from the record made at ``$connect``."""
        conn = self.storage.get_connection(connection_id)
        if conn is None:
            raise Unauthorized("unknown connection; reconnect with a token")
        return Principal(user_id=conn.user_id, role=conn.role)

    # ----------------------------------------------------------------- frames

    def on_frame(self, origin: Origin, raw: str | None) -> None:
        """Handle one client frame; every failure becomes an ``error`` frame."""
        frame: SendFrame | AckFrame | ResumeFrame | None = None
        try:
            principal = self.principal_of(origin.connection_id)
            frame = core.parse_client_frame(raw, self.config.max_body_bytes)
            if isinstance(frame, SendFrame):
                self.reply(origin, self.send(principal, origin, frame))
            elif isinstance(frame, AckFrame):
                self.ack(principal, frame)
            else:
                self.resume(principal, origin, frame)
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
        # Optimistic: the first attempt does not read the idempotency record;
        # the transaction's condition on it tells a retry from a new message.
        existing: IdempotencyRecord | None = None
        for attempt in range(self.config.append_max_attempts):
            now = self.clock()
            conv = self._conversation(frame.conversation_id)
            if conv.status == "closed" and existing is None:  # a retry is still answered
                existing = self._idempotency(principal, frame, now)
            decision = core.decide_send(
                principal, conv, frame, existing, now, self.config.idempotency_ttl_seconds
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
            self._enqueue(Delivery(decision.message, origin_id))
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

    # ------------------------------------------------------------------- REST

    def create_conversation(self, principal: Principal) -> Conversation:
        """A customer opens a conversation; it goes to an online agent if there is one."""
        if principal.role != "customer":
            raise Forbidden("only customers open conversations")
        now = core.iso_ms(self.clock())
        conv = Conversation(
            conversation_id=self.new_id(),
            customer_id=principal.user_id,
            created_at=now,
            updated_at=now,
        )
        self.storage.create_conversation(conv)
        self.try_assign(conv.conversation_id)
        return self._conversation(conv.conversation_id)

    def list_messages(
        self, principal: Principal, conversation_id: str, after: int, limit: int
    ) -> dict[str, Any]:
        """A page of messages after ``after``; ``next`` is the cursor of the next page or None."""
        conv = self._conversation(conversation_id)
        core.require_participant(principal, conv)
        page = self.storage.messages_after(conversation_id, after, limit)
        more = bool(page) and len(page) == limit and page[-1].seq < conv.last_seq
        return {
            "messages": [m.frame() for m in page],
            "next": page[-1].seq if more else None,
        }

    # ------------------------------------------------------------- assignment

    def try_assign(self, conversation_id: str) -> bool:
        """Give a waiting conversation to the online agent with the fewest active ones."""
        now = core.iso_ms(self.clock())
        for agent in self.storage.online_agents():
            if self.storage.assign_conversation(conversation_id, agent.agent_id, now):
                return True
        return False

    def assign_waiting(self, limit: int = 25) -> int:
        """Assign waiting conversations, oldest first, while an online agent takes them."""
        assigned = 0
        for conv in self.storage.waiting_conversations(limit):
            if not self.try_assign(conv.conversation_id):
                break
            assigned += 1
        return assigned

    # ---------------------------------------------------------------- helpers

    def _idempotency(self, principal: Principal, frame: SendFrame, now_ms: int) -> IdempotencyRecord | None:
        return self.storage.get_idempotency(
            principal.user_id, frame.conversation_id, frame.message_id, now_ms // 1000)

    def _enqueue(self, delivery: Delivery) -> None:
        message = delivery.message
        try:
            self.queue.enqueue(delivery)
        except OnceChatError as err:
            # Stored but maybe not queued: the client's retry (same
            # messageId) is answered as a duplicate and enqueues again; if
            # the client never returns, the sweeper enqueues it.
            log.error("enqueue of %s#%d failed: %s", message.conversation_id, message.seq,
                      err.message)
            raise OnceChatError("message stored but not yet queued; retry with the same messageId",
                                message_id=message.message_id) from err
        self._mark_enqueued(message)

    def _mark_enqueued(self, message: MessageRecord) -> None:
        try:
            self.storage.mark_enqueued(message.conversation_id, message.seq)
        except OnceChatError as err:  # the sweeper enqueues it once more: harmless
            log.warning("could not mark %s#%d enqueued: %s", message.conversation_id,
                        message.seq, err.message)

    def sweep(self) -> int:
        """Enqueue messages committed but never marked enqueued; return how many.

        A handler that died between its commit and its enqueue, for a
        sender who never retries, leaves its message pending; after
        ``sweep_grace_seconds`` (longer than any send takes) the sweeper
        enqueues it. Run on a schedule, this bounds the delay of such a
        message to grace + schedule period + delivery.
        """
        due = self.storage.pending_messages(
            self.clock() // 1000 - self.config.sweep_grace_seconds, self.config.sweep_batch)
        for message in due:
            log.warning("sweeper enqueues %s#%d", message.conversation_id, message.seq)
            self.queue.enqueue(Delivery(message, None))
            self._mark_enqueued(message)
        return len(due)

    def _conversation(self, conversation_id: str) -> Conversation:
        conv = self.storage.get_conversation(conversation_id)
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        return conv

    def _join(self, principal: Principal, conversation_id: str) -> None:
        self.storage.add_participant(
            Participant(
                user_id=principal.user_id,
                conversation_id=conversation_id,
                role=principal.role,
                joined_at=core.iso_ms(self.clock()),
            )
        )


class DeliveryFailed(OnceChatError):
    """Some pushes of a batch failed with something other than 410: SQS must redeliver."""


class DeliveryService:
    """The SQS FIFO consumer: push each stored message to its recipients' connections."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.storage = chat.storage
        self.pusher = chat.pusher

    def deliver(self, bodies: Iterable[str]) -> int:
        """Push a batch; return the number of frames pushed.

        A 410 prunes that connection (unless it may still be in its
        ``$connect``) and does not fail the batch. Any other
        failure is raised after the whole batch was tried, so SQS redelivers
        the batch; recipients drop the copies they already have by seq.
        Who to push to is read once per conversation and batch (a FIFO batch
        often holds several messages of one conversation).
        """
        failures: list[str] = []
        pushed = 0
        audiences: dict[str, _Audience | None] = {}
        for body in bodies:
            delivery = Delivery.from_json(body)
            message = delivery.message
            cid = message.conversation_id
            if cid not in audiences:
                audiences[cid] = self._audience(cid)
            audience = audiences[cid]
            if audience is None:
                log.error("delivery for unknown conversation %s dropped", cid)
                continue
            targets = core.delivery_targets(message, audience.conv, audience.connections,
                                            audience.cursors, delivery.origin_connection_id)
            data = core.encode(message.frame())
            for conn in targets:
                try:
                    self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
                    pushed += 1
                except ConnectionGone:
                    self.chat.prune_gone(conn)
                    audience.drop(conn.connection_id)
                except Exception as exc:
                    log.warning("push of %s#%d to %s failed: %s", cid, message.seq,
                                conn.connection_id, exc)
                    failures.append(conn.connection_id)
        if failures:
            raise DeliveryFailed(f"{len(failures)} push(es) failed: {', '.join(failures[:5])}")
        return pushed

    def _audience(self, conversation_id: str) -> _Audience | None:
        conv = self.storage.get_conversation(conversation_id)
        if conv is None:
            return None
        users = conv.participant_ids()
        cursors = {}
        for user in users:
            p = self.storage.get_participant(user, conversation_id)
            cursors[user] = p.ack_seq if p else 0
        return _Audience(conv, {u: self.storage.connections_of(u) for u in users}, cursors)


@dataclass
class _Audience:
    """A conversation's participants, their open connections and ack cursors."""

    conv: Conversation
    connections: dict[str, list[ConnectionRecord]]
    cursors: dict[str, int]

    def drop(self, connection_id: str) -> None:
        """Forget a connection found gone, for the rest of the batch."""
        for user, conns in self.connections.items():
            self.connections[user] = [c for c in conns if c.connection_id != connection_id]
