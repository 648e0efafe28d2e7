"""The lifecycle protocol as a sans-I/O state machine: one step of a conversation's life.

A lifecycle step (assign, transfer, close, reopen) moves the conversation
from the state it was read in to the next, writes the step's system
message at the next seq and moves the agents' loads: one commit,
conditioned on the conversation, the slot and the agents being as they
were read (``storage.apply_transition``). When a message or another step
moved the conversation first, the step is planned again from a fresh read;
its system message is then delivered like any message (``Announce``: best
effort, the sweeper covers a lost one).

::

    START --known conversation--> (AGENTS | COMMIT)
    START --> READ --conversation--> plan --> (AGENTS | COMMIT)      --absent--> Fail(not_found)
                                       '--illegal now--> Fail / Done(skipped)
    AGENTS --an agent with room--> plan --> COMMIT     --none--> Done(no room)
    COMMIT --committed--> ANNOUNCE --> Done(after)
           --conversation moved--> READ (another attempt)
           --agent full or gone--> AGENTS (assignment) | Fail(conflict)

The driver is ``chalicelib.services.desk``; ``tests/property/test_interleavings.py``
runs the machine against concurrent sends and steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from chalicelib import core
from chalicelib.errors import Conflict, NotFound, OnceChatError
from chalicelib.models import AgentRecord, Conversation, MessageRecord

#: How often a step is re-planned when a message or another step moved the
#: conversation between the read and the conditional write.
TRANSITION_ATTEMPTS = 16

#: A step's plan: the conversation as read, now (ms) and the chosen agent
#: (assignment only) give the transition, or raise when illegal now.
Plan = Callable[[Conversation, int, str | None], core.Transition]

# ------------------------------------------------------------------- commands


@dataclass(frozen=True)
class ReadConversation:
    conversation_id: str


@dataclass(frozen=True)
class ReadAgents:
    """The online agents, fewest active conversations first (``storage.online_agents``)."""


@dataclass(frozen=True)
class Commit:
    """Write the step: conversation, system message and loads, all or nothing."""

    transition: core.Transition


@dataclass(frozen=True)
class Announce:
    """Deliver the step's system message (enqueue; best effort)."""

    message: MessageRecord


@dataclass(frozen=True)
class Done:
    """The step is over: ``after`` when committed here; else why not (``skipped``, ``no_room``)."""

    after: Conversation | None
    transition: core.Transition | None = None
    skipped: bool = False
    no_room: bool = False


@dataclass(frozen=True)
class Fail:
    error: OnceChatError


Command = ReadConversation | ReadAgents | Commit | Announce | Done | Fail

# ------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class ConversationRead:
    conversation: Conversation | None


@dataclass(frozen=True)
class AgentsRead:
    agents: tuple[AgentRecord, ...]


@dataclass(frozen=True)
class Committed:
    pass


@dataclass(frozen=True)
class Moved:
    """The conversation (or its next slot) changed since it was read."""


@dataclass(frozen=True)
class AgentFull:
    """An agent of a +1 is not online or below capacity any more."""

    agent_id: str


@dataclass(frozen=True)
class Announced:
    pass


Outcome = ConversationRead | AgentsRead | Committed | Moved | AgentFull | Announced


class State(Enum):
    START = "start"
    READ = "read"
    AGENTS = "agents"
    COMMIT = "commit"
    ANNOUNCE = "announce"
    DONE = "done"


@dataclass
class LifecycleProtocol:
    """One lifecycle step of ``conversation_id`` planned by ``plan``.

    ``assign``: the step needs an online agent with room (the least loaded
    is chosen; a full one is passed over on the next attempt), and a
    conversation that is no longer waiting is skipped rather than refused.
    ``known``: the conversation as the caller has just read it.
    """

    conversation_id: str
    plan: Plan
    now_ms: int
    assign: bool = False
    known: Conversation | None = None
    max_attempts: int = TRANSITION_ATTEMPTS

    state: State = State.START
    attempts: int = 0
    conversation: Conversation | None = None
    transition: core.Transition | None = None

    def start(self) -> Command:
        if self.state is not State.START:
            raise core.ProtocolError("started twice")
        if self.known is not None:
            return self._read(self.known)
        return self._go(State.READ, ReadConversation(self.conversation_id))

    def advance(self, outcome: Outcome, now_ms: int | None = None) -> Command:
        if now_ms is not None:
            self.now_ms = now_ms
        state = self.state
        if state is State.READ and isinstance(outcome, ConversationRead):
            if outcome.conversation is None:
                if self.assign:
                    return self._go(State.DONE, Done(None, skipped=True))
                return self._fail(NotFound(f"conversation {self.conversation_id} not found"))
            return self._read(outcome.conversation)
        if state is State.AGENTS and isinstance(outcome, AgentsRead):
            room = [a for a in outcome.agents if a.has_room]
            if not room:
                return self._go(State.DONE, Done(None, no_room=True))
            return self._planned(room[0].agent_id)
        if state is State.COMMIT:
            if isinstance(outcome, Committed):
                transition = self._transition()
                return self._go(State.ANNOUNCE, Announce(transition.message))
            if isinstance(outcome, Moved):
                return self._again()
            if isinstance(outcome, AgentFull):
                if self.assign:
                    if not self._attempt():
                        return self._go(State.DONE, Done(None, skipped=True))
                    return self._go(State.AGENTS, ReadAgents())  # that agent filled up or left: choose again
                return self._fail(Conflict(f"agent {outcome.agent_id} is not online or has no room"))
        if state is State.ANNOUNCE and isinstance(outcome, Announced):
            transition = self._transition()
            return self._go(State.DONE, Done(transition.after, transition))
        raise core.ProtocolError(f"{type(outcome).__name__} in state {state.value}")

    # --------------------------------------------------------------- steps

    def _go(self, state: State, command: Command) -> Command:
        self.state = state
        return command

    def _fail(self, err: OnceChatError) -> Command:
        return self._go(State.DONE, Fail(err))

    def _attempt(self) -> bool:
        self.attempts += 1
        return self.attempts <= self.max_attempts

    def _again(self) -> Command:
        if not self._attempt():
            if self.assign:
                return self._go(State.DONE, Done(None, skipped=True))
            return self._fail(Conflict(f"conversation {self.conversation_id} is too busy; retry"))
        return self._go(State.READ, ReadConversation(self.conversation_id))

    def _read(self, conv: Conversation) -> Command:
        self.conversation = conv
        if self.assign:
            if conv.status != "waiting":
                return self._go(State.DONE, Done(None, skipped=True))
            return self._go(State.AGENTS, ReadAgents())
        return self._planned(None)

    def _planned(self, agent_id: str | None) -> Command:
        assert self.conversation is not None
        try:
            self.transition = self.plan(self.conversation, self.now_ms, agent_id)
        except OnceChatError as err:
            if self.assign and isinstance(err, Conflict):
                return self._go(State.DONE, Done(None, skipped=True))
            return self._fail(err)
        return self._go(State.COMMIT, Commit(self.transition))

    def _transition(self) -> core.Transition:
        if self.transition is None:
            raise core.ProtocolError(f"no transition in state {self.state.value}")
        return self.transition
