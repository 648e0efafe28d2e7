"""The storage interface every implementation honours.

One contract test suite (tests/contract/) runs against each implementation,
so the in-memory store used by the core tests behaves exactly like DynamoDB.

The interface comes in slices, one per table group (ConnectionStore,
AgentStore, ...); ``Storage`` is all of them, and each service is typed with
the combination it uses (PresenceStore, DeskStore, ...), so a service's
constructor says which tables it touches.

Expected races are reported with the signals of chalicelib.errors
(SequenceConflict, DuplicateMessage) or with return values, never with a
backend's own exception types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chalicelib.core import Transition
from chalicelib.models import (
    AgentRecord,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    Principal,
)


class ConnectionStore(Protocol):
    """The connections table: open WebSocket connections, by id and by user."""

    def put_connection(self, conn: ConnectionRecord) -> None:
        """Record an open connection (overwrites a record with the same id)."""

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's record, or None."""

    def delete_connection(self, connection_id: str, user_id: str | None = None) -> ConnectionRecord | None:
        """Remove a connection record; return what was removed (None when absent).

        Idempotent: two concurrent deletes return the record to exactly one caller.
        ``user_id`` (when the caller knows whose it was) also removes it from
        the user's connections when the record itself is already gone.
        """

    def connections_of(self, user_id: str) -> list[ConnectionRecord]:
        """Every recorded connection of a user, by id (strongly consistent)."""

    def connections_of_users(self, user_ids: Sequence[str],
                             consistent: bool = False) -> dict[str, list[ConnectionRecord]]:
        """``connections_of`` for several users at once (one request on DynamoDB).

        Eventually consistent unless ``consistent``: a connection opened a
        moment ago may be missing (it resumes on its own, and the sweeper
        pushes what it has not acked).
        """


class AgentStore(Protocol):
    """The agents table: presence, connection count and load of each agent."""

    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        """Count one more open connection of an agent; return the new state.

        An agent not ``away`` becomes online (an away agent stays away). A
        new agent gets ``active_count`` 0 and the default capacity.
        """

    def agent_disconnected(self, agent_id: str, now: str) -> AgentRecord | None:
        """Count one connection fewer (never below 0); offline at 0. None if the agent is unknown."""

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent's presence and load, or None."""

    def set_agent_connections(self, agent_id: str, seen_updated_at: str, count: int, now: str) -> bool:
        """Correct an agent's connection count (offline at 0), if unchanged since it was read.

        For presence reconciliation: records that vanished without a
        ``$disconnect`` (TTL, a lost event) leave the count too high. The
        condition (``updated_at`` still ``seen_updated_at``) keeps a connect
        or status change made meanwhile. Returns whether it was written.
        """

    def online_agents(self) -> list[AgentRecord]:
        """Agents whose presence is online, fewest active conversations first, then by id."""

    def list_agents(self) -> list[AgentRecord]:
        """Every known agent, by id."""

    def set_agent_status(
        self, agent_id: str, presence: str | None, capacity: int | None, now: str
    ) -> AgentRecord:
        """Set an agent's presence and/or capacity (creating the agent if new); return the new state."""


class ConversationStore(Protocol):
    """The conversations table and the lifecycle steps written across tables."""

    def create_conversation(
        self, conv: Conversation, request_key: str | None = None, expires_at: int = 0,
        now_epoch: int = 0,
    ) -> None:
        """Store a new conversation; its customer becomes a participant (ack 0).

        With ``request_key`` (the customer's Idempotency-Key) a request record
        is written in the same transaction (kept until ``expires_at``, epoch s);
        if an unexpired one exists, nothing is written and DuplicateRequest
        carries the conversation id it created. Raises chalicelib.errors.Conflict
        when the id exists.
        """

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The conversation (strongly consistent), or None."""

    def waiting_conversations(self, limit: int) -> list[Conversation]:
        """Up to ``limit`` conversations with status waiting, oldest ``queued_at`` first, then by id."""

    def open_conversations_of(self, user: Principal) -> list[Conversation]:
        """What ``user`` holds now, any order: a customer's conversations that are not
        closed, or an agent's active ones. Its cost does not grow with closed history."""

    def conversations_of(
        self, user_id: str, role: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Conversation], str | None]:
        """A customer's own (role customer) or an agent's assigned conversations, newest first.

        Filtered by ``status`` when given; at most ``limit``; ``cursor`` is
        the opaque value returned by the previous page (None: first page).
        Returns the page and the next page's cursor (None: no more).
        Raises BadRequest for a cursor this method did not make.
        """

    def conversations_at(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        """The conversations that exist among ``conversation_ids`` (strongly consistent, any order)."""

    def apply_transition(self, transition: Transition, now_epoch: int) -> None:
        """Write one lifecycle step atomically (see chalicelib.core.Transition).

        One transaction: the conversation becomes ``after`` on condition that
        its status, agent and ``last_seq`` are still those of ``before``; the
        system message is stored at its seq, and the conversation is marked
        active (``active_conversations``), so the sweeper covers it; each
        agent's ``active_count`` moves by its delta, a +1 on condition that
        the agent is online and below capacity; ``join`` becomes a
        participant (ack 0, kept if already one). On any failed condition
        nothing is written: NotFound (no such conversation),
        StaleConversation (the conversation changed), AgentUnavailable (an
        agent has no room), SequenceConflict (the message slot is taken).
        """


class MessageStore(Protocol):
    """The messages and idempotency tables: seqs, claims, message slots."""

    def reserve_seq(self, conversation_id: str, sender: Principal, now_ms: int) -> Conversation:
        """Reserve the conversation's next seq for a message of ``sender``; return the conversation.

        One atomic increment of ``last_seq`` (the returned conversation's
        ``last_seq`` is the reserved seq; ``reserved_at`` becomes ``now_ms``),
        on condition that the conversation exists, is not closed, and
        ``sender`` holds it (its customer, or its assigned agent, by role).
        Racing senders each get their own seq and nobody retries.
        Raises ReservationRefused (carrying the conversation, or None when
        absent) otherwise, reserving nothing.
        """

    def claim_message_id(self, idem: IdempotencyRecord, now_epoch: int) -> None:
        """Claim a sender's messageId for the seq it reserved: one conditional write.

        Condition: no record, or an expired one (``expires_at < now_epoch``).
        Raises DuplicateMessage (with the stored record) otherwise: the
        messageId was claimed before, at the seq that record names.
        The claim comes before the message (``put_message``), so a message
        is never visible without its claim.
        """

    def put_message(self, message: MessageRecord) -> None:
        """Store a message at its seq.

        One conditional write (condition: the slot is empty). Raises
        SequenceConflict carrying what holds the slot otherwise: the same
        messageId (a twin send of the same claim stored it first: done), or a
        void (``fill_hole``: this send outlived the sweep grace; the claim is
        moved to a new seq with ``move_claim``). Never an overwrite.
        """

    def move_claim(self, idem: IdempotencyRecord, from_seq: int) -> bool:
        """Replace a claim by ``idem`` (a new seq and time) if it still names ``from_seq``; False if not."""

    def fill_hole(self, conversation_id: str, seq: int, now_epoch: int) -> MessageRecord:
        """Make an empty seq void (never overwriting); return what the slot holds now.

        For a seq reserved by a send that never stored its message: the send
        was a retry (it answers with the first seq), or its handler died.
        Only a caller sure that no send is still coming calls it (the send
        itself, or a reader after the sweep grace): a slow send that finds
        its slot void reserves another seq.
        """

    def get_idempotency(
        self, sender_id: str, conversation_id: str, message_id: str, now_epoch: int
    ) -> IdempotencyRecord | None:
        """The idempotency record, or None when absent or expired (``expires_at < now_epoch``)."""

    def get_message(self, conversation_id: str, seq: int) -> MessageRecord | None:
        """One message, or None."""

    def messages_after(self, conversation_id: str, after: int, limit: int) -> list[MessageRecord]:
        """Up to ``limit`` messages with seq > ``after``, ascending seq (strongly consistent)."""

    def messages_before(self, conversation_id: str, before: int, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages with seq < ``before``, ascending seq (strongly consistent)."""


class ParticipantStore(Protocol):
    """The participants table: memberships and their ack and read cursors."""

    def add_participant(self, participant: Participant) -> None:
        """Record a membership; an existing one (and its cursor) is kept unchanged."""

    def get_participant(self, user_id: str, conversation_id: str) -> Participant | None:
        """A user's membership of a conversation, or None."""

    def participants_at(self, keys: Sequence[tuple[str, str]]) -> list[Participant]:
        """The memberships at ``(user_id, conversation_id)`` keys that exist (strongly consistent, any order)."""

    def participants_of_user(self, user_id: str) -> list[Participant]:
        """Every membership of a user (any order)."""

    def participants_of_conversation(self, conversation_id: str) -> list[Participant]:
        """Every membership of a conversation (past agents included), by user id."""

    def advance_ack(self, user_id: str, conversation_id: str, seq: int) -> bool:
        """Move the user's ack cursor forward to ``seq``; never back.

        Conditional update (``ack_seq < seq``); returns True when it moved.
        Returns False when the cursor is already >= seq or the membership is absent.
        """

    def advance_read(self, user_id: str, conversation_id: str, seq: int) -> bool:
        """Move the user's read cursor forward to ``seq``; never back (like ``advance_ack``)."""


class SweepStore(Protocol):
    """What the sweeper reads and writes: active conversations and its watermark."""

    def active_conversations(self, since: int) -> list[str]:
        """Ids of the conversations whose latest seq was taken at or after epoch second ``since``.

        A seq is taken by a reservation (``reserve_seq``) or a lifecycle
        event (``apply_transition``); each records the conversation's
        latest activity, and nothing is written per message for this. The
        result may also hold conversations active a little before
        ``since`` (DynamoDB keeps the time rounded down to the minute). The
        sweeper reads the conversations active since its watermark
        (chalicelib/services/outbox.py).
        """

    def get_sweep_mark(self) -> int | None:
        """Where the last sweep stopped (epoch s), or None before the first sweep."""

    def set_sweep_mark(self, mark: int) -> None:
        """Record where a sweep stopped; the mark never moves back."""


class LimitStore(Protocol):
    """The limits table: rate-limit counters."""

    def take_tokens(self, buckets: Sequence[tuple[str, int]], expires_at: int) -> bool:
        """Count one hit in every bucket ``(key, limit)``, atomically, or none.

        Returns False, counting nothing, when any bucket already holds
        ``limit`` hits. Buckets are fixed windows: the key names the window,
        and a bucket is forgotten after ``expires_at`` (epoch s).
        """


class Storage(ConnectionStore, AgentStore, ConversationStore, MessageStore, ParticipantStore,
              SweepStore, LimitStore, Protocol):
    """Persistent state of oncechat."""


# ------------------------------------------------ what each service needs


class PresenceStore(ConnectionStore, AgentStore, Protocol):
    """What Connections and Presence need: connections and agents."""


class DeskStore(ConversationStore, AgentStore, ParticipantStore, Protocol):
    """What Desk needs: conversations, agents and memberships."""


class DeliveryStore(ConversationStore, ConnectionStore, Protocol):
    """What the delivery consumer needs: conversations and connections."""


class MessagingStore(MessageStore, ParticipantStore, ConversationStore, ConnectionStore, Protocol):
    """What Messaging needs: messages, memberships, conversations and connections."""


class SweeperStore(SweepStore, MessageStore, ParticipantStore, ConversationStore, ConnectionStore, AgentStore,
                   Protocol):
    """What the Sweeper needs: its watermark, messages, memberships, conversations, connections and agents."""
