"""The storage interface every implementation honours.

One contract test suite (tests/contract/) runs against each implementation,
so the in-memory store used by the core tests behaves exactly like DynamoDB.

Expected races are reported with the signals of chalicelib.errors
(SequenceConflict, DuplicateMessage) or with return values, never with a
backend's own exception types.
"""

from __future__ import annotations

from typing import Protocol

from chalicelib.models import (
    AgentRecord,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
)


class Storage(Protocol):
    """Persistent state of oncechat."""

    # ---------------------------------------------------------- connections
    def put_connection(self, conn: ConnectionRecord) -> None:
        """Record an open connection (overwrites a record with the same id)."""

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's record, or None."""

    def delete_connection(self, connection_id: str) -> ConnectionRecord | None:
        """Remove a connection record; return what was removed (None when absent).

        Idempotent: two concurrent deletes return the record to exactly one caller.
        """

    def connections_of(self, user_id: str) -> list[ConnectionRecord]:
        """Every recorded connection of a user (any order)."""

    # --------------------------------------------------------------- agents
    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        """Count one more open connection of an agent and mark it online; return the new state."""

    def agent_disconnected(self, agent_id: str, now: str) -> AgentRecord | None:
        """Count one connection fewer (never below 0); offline at 0. None if the agent is unknown."""

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent's presence and load, or None."""

    def online_agents(self) -> list[AgentRecord]:
        """Agents whose presence is online, fewest active conversations first, then by id."""

    # -------------------------------------------------------- conversations
    def create_conversation(self, conv: Conversation) -> None:
        """Store a new conversation; its customer becomes a participant (ack 0).

        Raises chalicelib.errors.Conflict when the id exists.
        """

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The conversation (strongly consistent), or None."""

    def waiting_conversations(self, limit: int) -> list[Conversation]:
        """Up to ``limit`` conversations with status waiting, oldest ``created_at`` first."""

    def assign_conversation(self, conversation_id: str, agent_id: str, now: str) -> bool:
        """Atomically assign a waiting conversation to an online agent.

        In one transaction: the conversation goes waiting -> active with
        ``agent_id`` (condition: still waiting), the agent's ``active_count``
        grows by one (condition: the agent is online), and the agent becomes
        a participant (ack 0, kept if already one). Returns False, writing
        nothing, when either condition fails.
        """

    # ------------------------------------------------------------- messages
    def append_message(
        self, message: MessageRecord, idem: IdempotencyRecord, expected_last_seq: int, now_epoch: int
    ) -> None:
        """Store a message with its idempotency record and move the counter, atomically.

        One transaction of three conditional writes:
        - the idempotency record (condition: absent, or present but expired: ``expires_at < now_epoch``);
        - the conversation: ``last_seq`` from ``expected_last_seq`` to ``message.seq``
          (condition: ``last_seq == expected_last_seq`` and status is not closed);
        - the message item keyed (conversation_id, seq) (condition: absent),
          marked pending since ``now_epoch`` until ``mark_enqueued``.
        ``message.seq`` must be ``expected_last_seq + 1``.

        Raises DuplicateMessage when the idempotency record exists (and is not
        expired), SequenceConflict when the counter moved or the message slot
        is taken, NotFound when the conversation does not exist,
        ConversationClosed when it is closed. On any raise nothing is written.
        """

    def mark_enqueued(self, conversation_id: str, seq: int) -> None:
        """Forget that a message is pending: it is on the delivery queue.

        ``append_message`` stores every message as pending (since
        ``now_epoch``); the sweeper enqueues what stays pending too long.
        Idempotent; a missing message is ignored.
        """

    def pending_messages(self, committed_before: int, limit: int) -> list[MessageRecord]:
        """Up to ``limit`` pending messages committed before ``committed_before`` (epoch s), oldest first."""

    def get_idempotency(
        self, sender_id: str, conversation_id: str, message_id: str, now_epoch: int
    ) -> IdempotencyRecord | None:
        """The idempotency record, or None when absent or expired (``expires_at < now_epoch``)."""

    def get_message(self, conversation_id: str, seq: int) -> MessageRecord | None:
        """One message, or None."""

    def messages_after(self, conversation_id: str, after: int, limit: int) -> list[MessageRecord]:
        """Up to ``limit`` messages with seq > ``after``, ascending seq (strongly consistent)."""

    # ------------------------------------------------ participants & cursors
    def add_participant(self, participant: Participant) -> None:
        """Record a membership; an existing one (and its cursor) is kept unchanged."""

    def get_participant(self, user_id: str, conversation_id: str) -> Participant | None:
        """A user's membership of a conversation, or None."""

    def participants_of_user(self, user_id: str) -> list[Participant]:
        """Every membership of a user (any order)."""

    def advance_ack(self, user_id: str, conversation_id: str, seq: int) -> bool:
        """Move the user's ack cursor forward to ``seq``; never back.

        Conditional update (``ack_seq < seq``); returns True when it moved.
        Returns False when the cursor is already >= seq or the membership is absent.
        """
