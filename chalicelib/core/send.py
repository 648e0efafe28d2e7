"""The send protocol as a sans-I/O state machine: storage outcomes in, the next command out.

A send stores one message exactly once however often its frame arrives,
however many handlers run it at once, and whichever of them dies after
which write. Three conditional writes do it, none retried under
contention:

1. **reserve** the conversation's next seq (an atomic increment that also
   checks that the sender holds the open conversation);
2. **claim** the messageId for that seq (the idempotency record: the
   first claim wins, for good);
3. **store** the message in the slot (condition: the slot is empty).

A send whose claim fails is a retry, or the twin of a concurrent one: the
seq it reserved stays empty for good, so it **voids** it, and **settles**
the claim that won: the slot named by the claim holds the message (answer
with its seq), is empty (the first attempt is storing, or died: store it
there), or is void (a reader found it empty past the sweep grace: the
message was never stored, so it is stored at a **new seq** and the claim
**moved** there; of two sends moving it, one wins and the other settles
the moved claim).

The machine decides; ``chalicelib.services.messaging`` drives it, executing
each command against storage and feeding the outcome back::

    machine = SendProtocol(...)
    command = machine.start()
    while not isinstance(command, (Accept, Fail)):
        command = machine.advance(execute(command))

States (the arrows are outcomes)::

    START --limited--> LOOKUP --claim--> SETTLE ...      --none--> Fail(rate_limited)
    START --cached claim--> SETTLE
    START --> RESERVE --reserved--> CLAIM --claimed--> STORE --stored--> Accept(new)
                 |                    |                  '--slot taken--> SETTLE (own claim)
                 |                    '--claim taken--> VOID_OWN --> SETTLE (or LOOKUP)
                 '--refused--> LOOKUP --claim--> SETTLE
                                  '--none, closed--> REOPEN --> RESERVE
    SETTLE = READ_SLOT --message of the claim--> Accept(duplicate)
                       --empty--> STORE_CLAIMED --stored--> Accept(stored now)
                       --void--> RESERVE_NEW --> MOVE_CLAIM --moved--> STORE_MOVED --> Accept(new)
                                                     '--lost--> VOID_NEW --> LOOKUP

Every return to RESERVE or SETTLE counts an attempt; past
``max_attempts`` the send fails with ``internal`` ("too busy, retry with
the same messageId"), having accepted nothing it did not also store.
``tests/property/test_interleavings.py`` runs this machine, with the
lifecycle machine, over every interleaving of small scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from chalicelib import core
from chalicelib.errors import (
    ConversationClosed,
    Forbidden,
    NotFound,
    OnceChatError,
    RateLimited,
)
from chalicelib.models import Conversation, IdempotencyRecord, MessageRecord, Principal, SendFrame

# ------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Reserve:
    """Reserve the conversation's next seq for the sender (``storage.reserve_seq``)."""

    conversation_id: str


@dataclass(frozen=True)
class Claim:
    """Claim the messageId for the reserved seq (``storage.claim_message_id``)."""

    idem: IdempotencyRecord


@dataclass(frozen=True)
class Store:
    """Store the message in its slot (``storage.put_message``).

    ``recipients`` (a new message) lets the driver read their connections
    while the write is under way; None for a claim being settled.
    """

    message: MessageRecord
    recipients: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Lookup:
    """Read the sender's claim of this messageId (``storage.get_idempotency``)."""


@dataclass(frozen=True)
class ReadSlot:
    """Read what a claimed slot holds (``storage.get_message``)."""

    conversation_id: str
    seq: int


@dataclass(frozen=True)
class Void:
    """Make a reserved, empty seq void (``storage.fill_hole``), and deliver the void."""

    conversation: Conversation
    seq: int


@dataclass(frozen=True)
class MoveClaim:
    """Move a claim from a void slot to a new seq (``storage.move_claim``)."""

    idem: IdempotencyRecord
    from_seq: int


@dataclass(frozen=True)
class Reopen:
    """Commit the reopening of a closed conversation (a lifecycle step)."""

    transition: core.Transition


@dataclass(frozen=True)
class Accept:
    """Done: the message is stored at ``message.seq``; answer ``accepted`` and deliver it.

    ``fast``: push it now to ``recipients`` (a message this send stored);
    otherwise enqueue it (a settled claim: the first attempt may have died
    before pushing). ``reopened``: this send reopened the conversation, so
    the queue runs for it.
    """

    message: MessageRecord
    claim: IdempotencyRecord
    duplicate: bool
    fast: bool
    recipients: tuple[str, ...] | None
    reopened: bool

    def frame(self) -> dict[str, object]:
        return core.accepted_frame(self.message.conversation_id, self.claim.message_id,
                                   self.message.seq, self.claim.sent_at, self.duplicate)


@dataclass(frozen=True)
class Fail:
    """Done: the send is refused with ``error`` (nothing it accepted is lost)."""

    error: OnceChatError


Command = Reserve | Claim | Store | Lookup | ReadSlot | Void | MoveClaim | Reopen | Accept | Fail

# ------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Reserved:
    conversation: Conversation  #: its ``last_seq`` is the reserved seq


@dataclass(frozen=True)
class Refused:
    conversation: Conversation | None  #: as it stood; None when absent


@dataclass(frozen=True)
class Claimed:
    pass


@dataclass(frozen=True)
class ClaimTaken:
    existing: IdempotencyRecord | None  #: the winning claim, when the backend returned it


@dataclass(frozen=True)
class Stored:
    pass


@dataclass(frozen=True)
class SlotTaken:
    existing: MessageRecord | None  #: what holds the slot, when the backend returned it


@dataclass(frozen=True)
class Found:
    """The answer to Lookup (a claim or None) or ReadSlot (a message or None)."""

    record: IdempotencyRecord | MessageRecord | None


@dataclass(frozen=True)
class Voided:
    slot: MessageRecord  #: what the slot holds now (a void, or a message stored first)


@dataclass(frozen=True)
class Moved:
    moved: bool


@dataclass(frozen=True)
class Reopened:
    committed: bool  #: False: the conversation moved first (re-planned on the next attempt)


Outcome = Reserved | Refused | Claimed | ClaimTaken | Stored | SlotTaken | Found | Voided | Moved | Reopened


class State(Enum):
    START = "start"
    LOOKUP = "lookup"
    RESERVE = "reserve"
    REOPEN = "reopen"
    CLAIM = "claim"
    STORE = "store"
    VOID_OWN = "void own seq"
    READ_SLOT = "read slot"
    STORE_CLAIMED = "store claimed"
    READ_SLOT_AGAIN = "read slot again"
    RESERVE_NEW = "reserve new seq"
    MOVE_CLAIM = "move claim"
    VOID_NEW = "void new seq"
    STORE_MOVED = "store moved"
    DONE = "done"


@dataclass
class SendProtocol:
    """One send of ``frame`` by ``principal``; see the module docstring for the states.

    ``limited``: the send is over its rate limit (only a retry of a stored
    message is answered). ``cached``: the claim this container remembers
    answering, if any. ``now_ms`` is read once per reservation through
    ``clock`` (the driver's), so a retried reservation is stamped anew.
    """

    principal: Principal
    frame: SendFrame
    now_ms: int
    idempotency_ttl_seconds: int
    retention_seconds: int
    reopen_window_seconds: int
    max_attempts: int
    limited: RateLimited | None = None
    cached: IdempotencyRecord | None = None

    state: State = State.START
    attempts: int = 0
    reopened: bool = False
    #: The conversation as last reserved or refused.
    conversation: Conversation | None = None
    #: The claim being settled.
    claim: IdempotencyRecord | None = None
    #: What this send is writing now (its claim and message at the reserved seq).
    pending: core.Append | None = None
    #: The outcome of a lookup after a refused reservation (vs. after a lost claim).
    after_refusal: bool = False

    # ------------------------------------------------------------- driving

    def start(self) -> Command:
        """The first command."""
        if self.state is not State.START:
            raise core.ProtocolError("started twice")
        if self.limited is not None:
            return self._lookup()
        if self.cached is not None:
            return self._settle(self.cached)
        return self._reserve()

    def advance(self, outcome: Outcome, now_ms: int | None = None) -> Command:
        """Feed the outcome of the last command; return the next one.

        ``now_ms`` (the driver's clock at this step) stamps a new reservation.
        """
        if now_ms is not None:
            self.now_ms = now_ms
        state = self.state
        if state is State.LOOKUP and isinstance(outcome, Found):
            return self._looked_up(outcome.record)
        if state is State.RESERVE:
            if isinstance(outcome, Reserved):
                return self._reserved(outcome.conversation)
            if isinstance(outcome, Refused):
                return self._refused(outcome.conversation)
        if state is State.REOPEN and isinstance(outcome, Reopened):
            self.reopened = self.reopened or outcome.committed
            return self._reserve()
        if state is State.CLAIM:
            if isinstance(outcome, Claimed):
                return self._store_pending(State.STORE)
            if isinstance(outcome, ClaimTaken):
                # Claimed before (a retry), or a concurrent twin claimed first:
                # our seq stays empty for good. Void it, then settle the winner.
                self.claim = outcome.existing
                assert self.conversation is not None
                return self._go(State.VOID_OWN, Void(self.conversation, self._pending().message.seq))
        if state in (State.STORE, State.STORE_MOVED):
            if isinstance(outcome, Stored):
                pending = self._pending()
                assert self.conversation is not None
                return self._accept(pending.message, pending.idem, duplicate=False, fast=True,
                                    recipients=tuple(self.conversation.participant_ids()))
            if isinstance(outcome, SlotTaken):
                # A twin send of this claim stored it, or the slot was voided
                # (this send outlived the grace): settle our own claim.
                return self._settle(self._pending().idem)
        if state is State.VOID_OWN and isinstance(outcome, Voided):
            if self.claim is not None:
                return self._settle(self.claim)
            return self._lookup()
        if state in (State.READ_SLOT, State.READ_SLOT_AGAIN) and isinstance(outcome, Found):
            slot = outcome.record
            assert slot is None or isinstance(slot, MessageRecord)
            if slot is None and state is State.READ_SLOT:
                # Empty: the first attempt is still storing, or died after its
                # claim. Store the same message there now (replay_of checked
                # the payload); of two sends storing it one writes, the other
                # finds its twin.
                claim = self._claim()
                message = core.claimed_message(self.principal, self.frame, claim, self.retention_seconds)
                self.pending = core.Append(message, claim)
                return self._go(State.STORE_CLAIMED, Store(message))
            return self._judge_slot(slot, stored_now=False)
        if state is State.STORE_CLAIMED:
            claim = self._claim()
            if isinstance(outcome, Stored):
                return self._accept(self._pending().message, claim, duplicate=False, fast=False, recipients=None)
            if isinstance(outcome, SlotTaken):
                if outcome.existing is None:
                    return self._go(State.READ_SLOT_AGAIN, ReadSlot(claim.conversation_id, claim.seq))
                return self._judge_slot(outcome.existing, stored_now=False)
        if state is State.RESERVE_NEW:
            if isinstance(outcome, Reserved):
                self.conversation = outcome.conversation
                self.pending = self._new_message(outcome.conversation)
                return self._go(State.MOVE_CLAIM, MoveClaim(self.pending.idem, self._claim().seq))
            if isinstance(outcome, Refused):
                return self._fail(self._not_theirs(outcome.conversation) or ConversationClosed(
                    "conversation is closed", message_id=self.frame.message_id))
        if state is State.MOVE_CLAIM and isinstance(outcome, Moved):
            if outcome.moved:
                return self._store_pending(State.STORE_MOVED)
            # Another send moved the claim first: our new seq stays empty.
            assert self.conversation is not None
            return self._go(State.VOID_NEW, Void(self.conversation, self._pending().message.seq))
        if state is State.VOID_NEW and isinstance(outcome, Voided):
            return self._lookup()
        raise core.ProtocolError(f"{type(outcome).__name__} in state {state.value}")

    # --------------------------------------------------------------- steps

    def _go(self, state: State, command: Command) -> Command:
        self.state = state
        return command

    def _lookup(self) -> Command:
        """Read the sender's claim (not after a refused reservation)."""
        self.after_refusal = False
        return self._go(State.LOOKUP, Lookup())

    def _store_pending(self, state: State) -> Command:
        """Store the message this send holds the claim of, reading its recipients' connections meanwhile."""
        assert self.conversation is not None
        return self._go(state, Store(self._pending().message, tuple(self.conversation.participant_ids())))

    def _attempt(self) -> bool:
        self.attempts += 1
        return self.attempts <= self.max_attempts

    def _too_busy(self) -> Command:
        return self._fail(OnceChatError("conversation too busy, retry the send",
                                        message_id=self.frame.message_id))

    def _reserve(self) -> Command:
        if not self._attempt():
            return self._too_busy()
        self.pending = None
        return self._go(State.RESERVE, Reserve(self.frame.conversation_id))

    def _settle(self, claim: IdempotencyRecord) -> Command:
        if not self._attempt():
            return self._too_busy()
        try:
            core.replay_of(self.frame, claim)
        except OnceChatError as err:  # the messageId was used with another body
            return self._fail(err)
        self.claim = claim
        return self._go(State.READ_SLOT, ReadSlot(claim.conversation_id, claim.seq))

    def _reserved(self, conv: Conversation) -> Command:
        self.conversation = conv
        self.pending = self._new_message(conv)
        return self._go(State.CLAIM, Claim(self.pending.idem))

    def _not_theirs(self, conv: Conversation | None) -> OnceChatError | None:
        """Why a refused reservation is final whatever the claim: no such conversation, or not the sender's."""
        if conv is None:
            return NotFound(f"conversation {self.frame.conversation_id} not found",
                            message_id=self.frame.message_id)
        if not core.is_participant(self.principal, conv):
            return Forbidden(f"not a participant of conversation {conv.conversation_id}",
                             message_id=self.frame.message_id)
        return None

    def _refused(self, conv: Conversation | None) -> Command:
        error = self._not_theirs(conv)
        if error is not None:
            return self._fail(error)
        assert conv is not None
        # Closed: a retry of a stored message is still answered; a new
        # message of the customer reopens it within the window
        # (ConversationClosed otherwise), then is appended.
        self.conversation = conv
        self.after_refusal = True
        return self._go(State.LOOKUP, Lookup())

    def _looked_up(self, record: IdempotencyRecord | MessageRecord | None) -> Command:
        assert record is None or isinstance(record, IdempotencyRecord)
        if record is not None:
            return self._settle(record)
        if self.limited is not None and not self.after_refusal and self.attempts == 0:
            return self._fail(self.limited)
        refused = self.conversation
        if self.after_refusal and refused is not None and refused.status == "closed":
            try:
                transition = core.plan_reopen(self.principal, refused, self.now_ms,
                                              self.reopen_window_seconds, self.frame.message_id)
            except OnceChatError as err:
                return self._fail(err)
            return self._go(State.REOPEN, Reopen(transition))
        return self._reserve()

    def _judge_slot(self, slot: MessageRecord | None, stored_now: bool) -> Command:
        claim = self._claim()
        if slot is not None and core.is_claimed_by(slot, claim):
            return self._accept(slot, claim, duplicate=not stored_now, fast=False, recipients=None)
        # Void: the message was never stored nor accepted; store it at a new seq.
        return self._go(State.RESERVE_NEW, Reserve(claim.conversation_id))

    def _accept(self, message: MessageRecord, claim: IdempotencyRecord, duplicate: bool, fast: bool,
                recipients: tuple[str, ...] | None) -> Command:
        return self._go(State.DONE, Accept(message, claim, duplicate, fast, recipients, self.reopened))

    def _fail(self, err: OnceChatError) -> Command:
        return self._go(State.DONE, Fail(err))

    def _new_message(self, conv: Conversation) -> core.Append:
        return core.new_message(self.principal, conv.conversation_id, self.frame, conv.last_seq,
                                self.now_ms, self.idempotency_ttl_seconds, self.retention_seconds)

    def _pending(self) -> core.Append:
        if self.pending is None:
            raise core.ProtocolError(f"no message pending in state {self.state.value}")
        return self.pending

    def _claim(self) -> IdempotencyRecord:
        if self.claim is None:
            raise core.ProtocolError(f"no claim in state {self.state.value}")
        return self.claim
