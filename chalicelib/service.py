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
    AgentUnavailable,
    BadRequest,
    Conflict,
    ConnectionGone,
    ConversationClosed,
    DuplicateMessage,
    DuplicateRequest,
    NotFound,
    OnceChatError,
    RateLimited,
    SequenceConflict,
    StaleConversation,
    Unauthorized,
)
from chalicelib.models import (
    AckFrame,
    AgentRecord,
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
from chalicelib.ports import Delivery, DeliveryQueue, Pusher
from chalicelib.storage.base import Storage

log = logging.getLogger("oncechat")

Clock = Callable[[], int]

#: How often a lifecycle step is re-planned when a message or another step
#: moved the conversation between the read and the conditional write.
TRANSITION_ATTEMPTS = 16


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
            agent = self.storage.agent_connected(principal.user_id, core.iso_ms(now))
            if agent.has_room:
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
        frame: core.AnyClientFrame | None = None
        try:
            principal = self.principal_of(origin.connection_id)
            frame = core.parse_client_frame(raw, self.config.max_body_bytes)
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
        conv: Conversation | None
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
        """``open_conversation`` without an idempotency key."""
        return self.open_conversation(principal)[0]

    def open_conversation(self, principal: Principal,
                          request_key: str | None = None) -> tuple[Conversation, bool]:
        """A customer opens a conversation; it goes to the queue and, room permitting, to an agent.

        With ``request_key`` (the Idempotency-Key header) a retried request
        returns the conversation the first one created. Returns the
        conversation and whether this call created it.
        """
        core.require_role(principal, "customer", "open conversations")
        if request_key is not None and not core.valid_request_key(request_key):
            raise BadRequest("Idempotency-Key must be 1 to 128 characters of A-Z a-z 0-9 _ - . :")
        self._limit_requests(principal)
        now_ms = self.clock()
        now = core.iso_ms(now_ms)
        conv = Conversation(
            conversation_id=self.new_id(),
            customer_id=principal.user_id,
            created_at=now,
            updated_at=now,
            queued_at=now,
        )
        try:
            self.storage.create_conversation(
                conv, request_key, now_ms // 1000 + self.config.idempotency_ttl_seconds,
                now_ms // 1000)
        except DuplicateRequest as dup:
            existing = self._conversation(dup.existing_id)
            if existing.customer_id != principal.user_id:  # cannot happen: keys are per customer
                raise Conflict("Idempotency-Key belongs to another request") from None
            return existing, False
        self.assign_new_waiting(conv.conversation_id)
        return self._conversation(conv.conversation_id), True

    def get_conversation(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        """One conversation with its participants' cursors (participants; agents also while it waits)."""
        conv = self._conversation(conversation_id)
        core.require_view(principal, conv)
        current = set(conv.participant_ids())
        members = [p for p in self.storage.participants_of_conversation(conversation_id)
                   if p.user_id in current]
        view = conv.rest_view()
        view["participants"] = [
            {"userId": p.user_id, "role": p.role, "ackSeq": p.ack_seq, "readSeq": p.read_seq}
            for p in members
        ]
        return view

    def list_conversations(self, principal: Principal, status: str | None, limit: int,
                           cursor: str | None) -> dict[str, Any]:
        """A customer's own or an agent's assigned conversations, newest first."""
        page, next_cursor = self.storage.conversations_of(
            principal.user_id, principal.role, status, limit, cursor)
        return {"conversations": [c.rest_view() for c in page], "next": next_cursor}

    def waiting_queue(self, principal: Principal, limit: int) -> dict[str, Any]:
        """The waiting queue, oldest first (agents only)."""
        core.require_role(principal, "agent", "see the waiting queue")
        waiting = self.storage.waiting_conversations(limit)
        return {"conversations": [
            c.rest_view() | {"position": i} for i, c in enumerate(waiting, start=1)]}

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

    # -------------------------------------------------------------- lifecycle

    def close(self, principal: Principal, conversation_id: str) -> Conversation:
        """waiting/active -> closed, by its customer or its agent; frees the agent's place."""
        self._limit_requests(principal)
        conv = self._transition(conversation_id, lambda c, now: core.plan_close(principal, c, now))
        self.assign_waiting()
        return conv

    def transfer(self, principal: Principal, conversation_id: str, to_agent: str) -> Conversation:
        """Move an active conversation from the calling agent to ``to_agent`` (online, with room)."""
        core.require_role(principal, "agent", "transfer conversations")
        self._limit_requests(principal)
        if self.storage.get_agent(to_agent) is None:
            raise NotFound(f"agent {to_agent} not found")
        try:
            conv = self._transition(conversation_id,
                                    lambda c, now: core.plan_transfer(principal, c, to_agent, now))
        except AgentUnavailable:
            raise Conflict(f"agent {to_agent} is not online or has no room") from None
        self.assign_waiting()
        return conv

    def _transition(self, conversation_id: str,
                    plan: Callable[[Conversation, int], core.Transition]) -> Conversation:
        """Plan and commit one lifecycle step, re-planning when the conversation moved meanwhile."""
        for _ in range(TRANSITION_ATTEMPTS):
            conv = self._conversation(conversation_id)
            transition = plan(conv, self.clock())  # raises Conflict / Forbidden when illegal now
            if self._commit_once(transition):
                return transition.after
        raise Conflict(f"conversation {conversation_id} is too busy; retry")

    def _commit_once(self, transition: core.Transition) -> bool:
        """Write a step and enqueue its system message; False when the conversation moved first."""
        try:
            self._commit(transition)
        except (StaleConversation, SequenceConflict):
            return False
        return True

    def _commit(self, transition: core.Transition) -> None:
        """Write a step (raising the storage's signals), then enqueue its system message."""
        self.storage.apply_transition(transition, self.clock() // 1000)
        try:
            self._enqueue(Delivery(transition.message, None))
        except OnceChatError:
            pass  # stored and pending: the sweeper enqueues it

    # ------------------------------------------------------------- agents

    def set_agent_status(self, principal: Principal, status: str | None,
                         capacity: int | None) -> AgentRecord:
        """``PUT /agents/me/status``: presence and/or capacity; an agent with room gets work."""
        core.require_role(principal, "agent", "set an agent status")
        self._limit_requests(principal)
        agent = self.storage.set_agent_status(principal.user_id, status, capacity,
                                              core.iso_ms(self.clock()))
        if agent.has_room:
            self.assign_waiting()
            agent = self.storage.get_agent(principal.user_id) or agent
        return agent

    def list_agents(self, principal: Principal) -> list[AgentRecord]:
        """Every agent's presence and load (agents only)."""
        core.require_role(principal, "agent", "list agents")
        return self.storage.list_agents()

    # ------------------------------------------------------------- assignment

    def assign_new_waiting(self, conversation_id: str) -> None:
        """A conversation just started waiting: run the queue, then make sure it was seen.

        The waiting queue is read from a GSI, which on AWS may not show a
        conversation written a moment ago; if it is still waiting after the
        queue ran and an agent still has room, it gets that agent directly
        (every older waiting conversation the queue showed was served first).
        """
        self.assign_waiting()
        conv = self.storage.get_conversation(conversation_id)
        if conv is not None and conv.status == "waiting":
            self._assign_one(conv)

    def assign_waiting(self, limit: int = 25) -> int:
        """Assign waiting conversations, oldest first, each to the online agent with the fewest.

        Called whenever a conversation starts waiting, an agent comes online
        or frees a place. Racing callers are safe: each assignment is one
        transaction conditioned on the conversation still waiting and the
        agent still online and below capacity.
        """
        assigned = 0
        while True:
            batch = self.storage.waiting_conversations(limit)
            progress = 0
            for conv in batch:
                outcome = self._assign_one(conv)
                if outcome is None:
                    return assigned  # nobody has room: the rest waits too
                progress += outcome
            assigned += progress
            # A full page all assigned: read the next one. A page that made
            # no progress (all taken by racing callers, or an index lagging
            # behind) ends the round; the next trigger or sweep goes on.
            if len(batch) < limit or not progress:
                return assigned

    def _assign_one(self, conv: Conversation) -> int | None:
        """1 when assigned here, 0 when it no longer waits, None when no agent has room."""
        for _ in range(TRANSITION_ATTEMPTS):
            agents = [a for a in self.storage.online_agents() if a.has_room]
            if not agents:
                return None
            try:
                transition = core.plan_assign(conv, agents[0].agent_id, self.clock())
            except Conflict:
                return 0
            try:
                self._commit(transition)
            except AgentUnavailable:
                continue  # that agent filled up or left meanwhile: choose again
            except (StaleConversation, SequenceConflict):
                fresh = self.storage.get_conversation(conv.conversation_id)
                if fresh is None or fresh.status != "waiting":
                    return 0
                conv = fresh
                continue
            return 1
        return 0

    # ---------------------------------------------------------------- helpers

    def _take_tokens(self, buckets: list[tuple[str, int]], message_id: str | None = None) -> None:
        """Count a request in fixed-window buckets; RateLimited (nothing done) when one is full."""
        window = self.config.rate_window_seconds
        now_s = self.clock() // 1000
        start = now_s - now_s % window
        if not self.storage.take_tokens([(f"{key}#{start}", limit) for key, limit in buckets],
                                        start + 2 * window):
            raise RateLimited(f"rate limit reached; retry in {start + window - now_s} s",
                              message_id=message_id)

    def _limit_requests(self, principal: Principal) -> None:
        """REST writes (open, close, transfer, status): one per-user bucket."""
        self._take_tokens([(f"rest#user#{principal.user_id}", self.config.rate_user_requests)])

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
        self.reconcile_presence()
        # The queue runs on every trigger (a conversation waits, an agent comes
        # online or frees a place); a trigger lost with a crashed handler is
        # made up for here, within one schedule period.
        assigned = self.assign_waiting()
        if assigned:
            log.warning("sweeper assigned %d waiting conversation(s)", assigned)
        return len(due)

    def reconcile_presence(self) -> int:
        """Make agents' presence follow their real connections; return how many fixes.

        ``$disconnect`` is best effort and connection records also expire by
        TTL, neither of which lowers an agent's connection count: an agent
        could stay online with no connection and keep being assigned work.
        For every agent not offline, each recorded connection older than
        the ``$connect`` settle time is asked for (management API GET): a
        410 prunes it as a failed push would. Then an agent whose count no
        longer matches its records (and who has not changed for the settle
        time) gets the count of its records, and goes offline at 0.
        """
        fixed = 0
        now = self.clock()
        for agent in self.storage.list_agents():
            if agent.presence == "offline" and agent.connections == 0:
                continue
            live = []
            pruned = 0
            for conn in self.storage.connections_of(agent.agent_id):
                settled = now - core.epoch_ms(conn.connected_at) >= core.CONNECT_SETTLE_MS
                if settled and not self.pusher.alive(conn.connection_id, conn.domain_name, conn.stage):
                    pruned += self.prune_gone(conn)
                else:
                    live.append(conn)
            fixed += pruned
            # A prune moved the count: read it back; otherwise the listing is current.
            fresh = (self.storage.get_agent(agent.agent_id) or agent) if pruned else agent
            if (fresh.connections != len(live)
                    and now - core.epoch_ms(fresh.updated_at) >= core.CONNECT_SETTLE_MS
                    and self.storage.set_agent_connections(
                        fresh.agent_id, fresh.updated_at, len(live), core.iso_ms(now))):
                log.warning("agent %s had %d connection(s) counted, %d open",
                            fresh.agent_id, fresh.connections, len(live))
                fixed += 1
        return fixed

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
            if message.event is not None:
                self._announce(message, audience)
        if failures:
            raise DeliveryFailed(f"{len(failures)} push(es) failed: {', '.join(failures[:5])}")
        return pushed

    def _announce(self, message: MessageRecord, audience: _Audience) -> None:
        """A lifecycle event's ``conversation`` frame, to every connection the event concerns.

        The customer, the agent the event leaves the conversation with and
        the agent it took it from (transfer, reopening): decided by the
        event, not by whoever holds the conversation when the consumer runs.
        Best effort, like typing: the system message itself is the durable,
        exactly-once record of the event; a repeated delivery repeats the
        frame, which carries the event's seq to tell.
        """
        users = dict.fromkeys(u for u in (audience.conv.customer_id, message.agent_id,
                                          message.previous_agent_id) if u)
        self.chat.push_to_users(users, core.conversation_frame(message, audience.conv),
                                known=audience.connections)

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
