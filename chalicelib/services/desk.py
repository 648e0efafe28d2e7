"""The customer-service desk: conversations, their lifecycle, agents and assignment.

Every lifecycle step runs the lifecycle state machine
(``chalicelib.core.lifecycle``); ``Desk._step`` executes its commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chalicelib import core
from chalicelib.config import Config
from chalicelib.core import lifecycle
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateRequest,
    NotFound,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.limits import RestLimits
from chalicelib.models import AgentRecord, Conversation, Principal
from chalicelib.services.common import Clock, Conversations
from chalicelib.services.outbox import Outbox
from chalicelib.storage.base import DeskStore

log = logging.getLogger("oncechat")

#: How far into the queue `GET /conversations/{id}` looks for a waiting conversation's position.
QUEUE_POSITION_LIMIT = 100


class Desk:
    """Open, view, close, transfer, reopen; agents' status; the waiting queue."""

    def __init__(self, config: Config, storage: DeskStore, outbox: Outbox, conversations: Conversations,
                 limits: RestLimits, clock: Clock, new_id: Callable[[], str]) -> None:
        self.config = config
        self.storage = storage
        self.outbox = outbox
        self.conversations = conversations
        self.limits = limits
        self.clock = clock
        self.new_id = new_id

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
        self.limits.admit(principal)
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
            existing = self.conversations.get(dup.existing_id)
            if existing.customer_id != principal.user_id:  # cannot happen: keys are per customer
                raise Conflict("Idempotency-Key belongs to another request") from None
            return existing, False
        self.assign_new_waiting(conv.conversation_id)
        return self.conversations.get(conv.conversation_id), True

    def get_conversation(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        """One conversation with its participants' cursors (participants; agents also while it waits)."""
        conv = self.conversations.get(conversation_id)
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
        self.limits.admit(principal)
        done = self.step(self.close_machine(principal, conversation_id))
        self.assign_waiting()
        assert done.after is not None
        return done.after

    def close_machine(self, principal: Principal, conversation_id: str) -> lifecycle.LifecycleProtocol:
        """The lifecycle step of ``principal`` closing a conversation, not started yet."""
        return lifecycle.LifecycleProtocol(
            conversation_id, lambda conv, now, _agent: core.plan_close(principal, conv, now), self.clock())

    def transfer(self, principal: Principal, conversation_id: str, to_agent: str) -> Conversation:
        """Move an active conversation from the calling agent to ``to_agent`` (online, with room)."""
        core.require_role(principal, "agent", "transfer conversations")
        self.limits.admit(principal)
        if self.storage.get_agent(to_agent) is None:
            raise NotFound(f"agent {to_agent} not found")
        conv = self._transition(conversation_id,
                                lambda c, now: core.plan_transfer(principal, c, to_agent, now))
        self.assign_waiting()
        return conv

    def _transition(self, conversation_id: str,
                    plan: Callable[[Conversation, int], core.Transition]) -> Conversation:
        """Plan and commit one lifecycle step, re-planning when the conversation moved meanwhile."""
        done = self.step(lifecycle.LifecycleProtocol(
            conversation_id, lambda conv, now, _agent: plan(conv, now), self.clock()))
        assert done.after is not None
        return done.after

    def step(self, machine: lifecycle.LifecycleProtocol) -> lifecycle.Done:
        """Drive a lifecycle step to its end; raise its failure."""
        command = machine.start()
        while True:
            if isinstance(command, lifecycle.Done):
                return command
            if isinstance(command, lifecycle.Fail):
                raise command.error
            command = machine.advance(self.execute(command), self.clock())

    def execute(self, command: lifecycle.Command) -> lifecycle.Outcome:
        """Run one command of a lifecycle step against storage and the outbox."""
        if isinstance(command, lifecycle.ReadConversation):
            conv = self.storage.get_conversation(command.conversation_id)
            if conv is not None:
                self.conversations.seen(conv)
            return lifecycle.ConversationRead(conv)
        if isinstance(command, lifecycle.ReadAgents):
            return lifecycle.AgentsRead(tuple(self.storage.online_agents()))
        if isinstance(command, lifecycle.Commit):
            try:
                self.storage.apply_transition(command.transition, self.clock() // 1000)
            except (StaleConversation, SequenceConflict):
                return lifecycle.Moved()
            except AgentUnavailable as full:
                return lifecycle.AgentFull(full.agent_id)
            return lifecycle.Committed()
        if isinstance(command, lifecycle.Announce):
            self.outbox.announce(command.message)
            return lifecycle.Announced()
        raise TypeError(f"not a command to execute: {command!r}")

    def reopen(self, transition: core.Transition) -> bool:
        """Commit a reopening planned by a send; False when the conversation moved first."""
        machine = lifecycle.LifecycleProtocol(
            transition.before.conversation_id, lambda _c, _n, _a: transition, self.clock(),
            known=transition.before, max_attempts=0)
        try:
            return self.step(machine).after is not None
        except Conflict:  # moved first: the send plans again
            return False

    # ------------------------------------------------------------- agents

    def set_agent_status(self, principal: Principal, status: str | None,
                         capacity: int | None) -> AgentRecord:
        """``PUT /agents/me/status``: presence and/or capacity; an agent with room gets work."""
        core.require_role(principal, "agent", "set an agent status")
        self.limits.admit(principal)
        agent = self.storage.set_agent_status(principal.user_id, status, capacity,
                                              core.iso_ms(self.clock()))
        if agent.presence != "online" and self.requeue_agent(agent.agent_id):
            agent = self.storage.get_agent(principal.user_id) or agent
        if agent.has_room:
            self.assign_waiting()
            agent = self.storage.get_agent(principal.user_id) or agent
        return agent

    def requeue_agent(self, agent_id: str) -> int:
        """Put every active conversation of an agent who left back in the queue; return how many moved.

        Each move is one lifecycle step (``core.plan_requeue``: its system
        message, the agent's load -1), conditioned on the conversation still
        being active with that agent; then the queue runs, so another agent
        with room takes them, oldest first. The agent's conversations are read
        from the byAgent index, which may not show one assigned a moment ago:
        the sweep moves that one after the grace (``requeue_gone``).
        """
        moved = 0
        cursor: str | None = None
        while True:
            page, cursor = self.storage.conversations_of(agent_id, "agent", "active", 100, cursor)
            for conv in page:
                try:
                    self.step(self.requeue_machine(conv.conversation_id, agent_id, conv))
                except Conflict:  # closed or transferred meanwhile (or a lagging index): nothing to move
                    continue
                moved += 1
            if cursor is None:
                break
        if moved:
            log.info("agent %s left: %d conversation(s) back in the queue", agent_id, moved)
            self.assign_waiting()
        return moved

    def requeue_machine(self, conversation_id: str, agent_id: str,
                        known: Conversation | None = None) -> lifecycle.LifecycleProtocol:
        """The lifecycle step of a conversation leaving ``agent_id`` for the queue, not started yet."""
        return lifecycle.LifecycleProtocol(
            conversation_id, lambda c, now, _a: core.plan_requeue(c, agent_id, now), self.clock(), known=known)

    def requeue_gone(self, agents: list[AgentRecord]) -> int:
        """Requeue the conversations of agents away or offline past the grace (the sweep); return how many.

        An agent set away or offline is requeued at once by
        ``set_agent_status``; one whose last connection closed keeps their
        conversations for ``agent_gone_grace_seconds`` (a reload or a short
        network loss reconnects well within it). Whichever way they left, a
        conversation still counted on them past the grace moves here, within
        one schedule period.
        """
        now = self.clock()
        grace_ms = self.config.agent_gone_grace_seconds * 1000

        def gone(agent: AgentRecord) -> bool:
            return (agent.presence != "online" and agent.active_count > 0
                    and now - core.epoch_ms(agent.updated_at) >= grace_ms)

        moved = 0
        for listed in agents:
            # The listing may be older than a reconnect: read the agent again first.
            agent = self.storage.get_agent(listed.agent_id) if gone(listed) else None
            if agent is not None and gone(agent):
                moved += self.requeue_agent(agent.agent_id)
        return moved

    def assign_reopened(self, conversation_id: str, previous_agent: str | None) -> None:
        """A customer reopened a conversation: back to its agent when online with room, else the queue."""
        agent = self.storage.get_agent(previous_agent) if previous_agent else None
        if agent is not None and agent.has_room:
            try:  # the step reads the conversation; plan_assign refuses one no longer waiting
                self.step(lifecycle.LifecycleProtocol(
                    conversation_id, lambda c, now, _a: core.plan_assign(c, agent.agent_id, now), self.clock()))
                return
            except Conflict:  # they filled up or left meanwhile, or it moved: the queue decides
                pass
        self.assign_new_waiting(conversation_id)

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
        done = self.step(lifecycle.LifecycleProtocol(
            conv.conversation_id, _plan_assign, self.clock(), assign=True, known=conv))
        if done.no_room:
            return None
        return 0 if done.after is None else 1


def _plan_assign(conv: Conversation, now_ms: int, agent_id: str | None) -> core.Transition:
    assert agent_id is not None
    return core.plan_assign(conv, agent_id, now_ms)
