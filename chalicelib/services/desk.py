"""The customer-service desk: conversations, their lifecycle, agents and assignment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chalicelib import core
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateRequest,
    NotFound,
    OnceChatError,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.models import (
    AgentRecord,
    Conversation,
    Principal,
)
from chalicelib.ports import Delivery
from chalicelib.services.base import TRANSITION_ATTEMPTS, ServiceBase

log = logging.getLogger("oncechat")

#: How far into the queue `GET /conversations/{id}` looks for a waiting conversation's position.
QUEUE_POSITION_LIMIT = 100


class DeskMixin(ServiceBase):
    """Open, view, close, transfer, reopen; agents' status; the waiting queue."""

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
        if conv.status == "waiting":  # the customer's place in the queue (None beyond the first page)
            queue = self.storage.waiting_conversations(QUEUE_POSITION_LIMIT)
            view["position"] = next((i for i, c in enumerate(queue, start=1)
                                     if c.conversation_id == conv.conversation_id), None)
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
