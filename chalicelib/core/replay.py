"""The replay of a resume as a sans-I/O state machine: pages in, frames and voids out.

A reconnecting client asks for what follows its cursor. The replay sends
the stored messages in seq order, a page at a time, within a budget of
frames. A seq with no message is reserved by a send still storing it, or
by one that died. Seqs are reserved in order, so once a later message (or,
at the tail, the latest reservation) is older than the sweep grace, the
send of the empty seq cannot still be running: the seq is made void and
replayed as such. A younger hole stops the replay there: its message is on
its way, pushed like any other, and ``resumed`` names the latest seq so the
client knows to resume again.

::

    START --> PAGE --messages--> EMIT each (VOID each old hole first) --> PAGE ...
                 '--young hole--> WAIT (bounded) --> PAGE from the hole
                 '--young hole, waited enough / budget spent--> Done
                 '--end of pages--> TAIL: VOID old reserved tail --> Done
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from chalicelib import core
from chalicelib.models import Conversation, MessageRecord


@dataclass(frozen=True)
class ReadPage:
    after: int
    limit: int


@dataclass(frozen=True)
class Void:
    """Make the empty ``seq`` void (``storage.fill_hole``); the outcome is what the slot holds."""

    seq: int


@dataclass(frozen=True)
class Wait:
    """Wait ``ms`` for a seq still being stored, then read again from it."""

    ms: int


@dataclass(frozen=True)
class Emit:
    """Send this message (or void) to the resuming connection."""

    message: MessageRecord


@dataclass(frozen=True)
class Done:
    position: int  #: the last seq replayed
    budget: int  #: frames left


Command = ReadPage | Void | Wait | Emit | Done


@dataclass(frozen=True)
class Page:
    messages: tuple[MessageRecord, ...]


@dataclass(frozen=True)
class Voided:
    slot: MessageRecord


@dataclass(frozen=True)
class Emitted:
    pass


@dataclass(frozen=True)
class Waited:
    pass


Outcome = Page | Voided | Emitted | Waited


class State(Enum):
    START = "start"
    PAGE = "page"
    VOID = "void"
    WAIT = "wait"
    EMIT = "emit"
    DONE = "done"


#: One wait for a young hole (ms).
HOLE_STEP_MS = 25


@dataclass
class ReplayProtocol:
    """Replay ``conversation`` after ``after`` within ``budget`` frames."""

    conversation: Conversation
    after: int
    budget: int
    now_ms: int
    grace_seconds: int
    page_size: int
    #: How long a young hole may be waited for in all (ms), in steps of ``HOLE_STEP_MS``.
    hole_wait_ms: int = 0

    state: State = State.START
    position: int = 0
    page: deque[MessageRecord] = field(default_factory=deque)
    page_full: bool = False
    tail: bool = False

    @property
    def dead_before(self) -> int:
        """A reservation older than this (ms) belongs to a send that is no longer running."""
        return self.now_ms - self.grace_seconds * 1000

    def start(self) -> Command:
        if self.state is not State.START:
            raise core.ProtocolError("started twice")
        self.position = self.after
        return self._next_page()

    def advance(self, outcome: Outcome) -> Command:
        state = self.state
        if state is State.WAIT and isinstance(outcome, Waited):
            return self._go(State.PAGE, ReadPage(self.position, min(self.page_size, self.budget)))
        if state is State.PAGE and isinstance(outcome, Page):
            self.page = deque(outcome.messages)
            self.page_full = len(outcome.messages) >= self.page_size
            return self._next()
        if state is State.VOID and isinstance(outcome, Voided):
            self.position += 1
            self.budget -= 1
            return self._go(State.EMIT, Emit(outcome.slot))
        if state is State.EMIT and isinstance(outcome, Emitted):
            return self._next()
        raise core.ProtocolError(f"{type(outcome).__name__} in state {state.value}")

    def _go(self, state: State, command: Command) -> Command:
        self.state = state
        return command

    def _done(self) -> Command:
        return self._go(State.DONE, Done(self.position, self.budget))

    def _next_page(self) -> Command:
        if self.budget <= 0 or self.position >= self.conversation.last_seq:
            return self._done()
        return self._go(State.PAGE, ReadPage(self.position, min(self.page_size, self.budget)))

    def _next(self) -> Command:
        """The next frame of the page, the next page, or the tail."""
        if self.tail:
            if self.position < self.conversation.last_seq and self.budget > 0:
                return self._go(State.VOID, Void(self.position + 1))
            return self._done()
        if self.budget <= 0:
            return self._done()
        if self.page:
            message = self.page[0]
            if message.seq > self.position + 1:
                if core.epoch_ms(message.sent_at) >= self.dead_before:
                    # A hole that may still fill: its send is storing (a few ms
                    # in the common case). Wait a bounded moment and read again;
                    # then stop short (``resumed`` tells the client to resume again).
                    if self.hole_wait_ms >= HOLE_STEP_MS:
                        self.hole_wait_ms -= HOLE_STEP_MS
                        return self._go(State.WAIT, Wait(HOLE_STEP_MS))
                    return self._done()
                return self._go(State.VOID, Void(self.position + 1))
            self.page.popleft()
            self.position = message.seq
            self.budget -= 1
            return self._go(State.EMIT, Emit(message))
        if self.page_full:
            return self._next_page()
        # The tail: seqs reserved after the last stored message.
        if self.position < self.conversation.last_seq and (self.conversation.reserved_at or 0) < self.dead_before:
            self.tail = True
            return self._next()
        return self._done()
