"""In-memory storage: the same contract as DynamoDB, for the core tests and tools.

One lock serialises every operation, which gives the same atomicity the
DynamoDB transactions give.
"""

from __future__ import annotations

import threading

from chalicelib.errors import (
    Conflict,
    ConversationClosed,
    DuplicateMessage,
    NotFound,
    SequenceConflict,
)
from chalicelib.models import (
    AgentRecord,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    idempotency_key,
)


class MemoryStorage:
    """A thread-safe, process-local implementation of chalicelib.storage.Storage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, ConnectionRecord] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[tuple[str, int], MessageRecord] = {}
        self._idempotency: dict[str, IdempotencyRecord] = {}
        self._participants: dict[tuple[str, str], Participant] = {}
        self._pending: dict[tuple[str, int], int] = {}

    # ---------------------------------------------------------- connections
    def put_connection(self, conn: ConnectionRecord) -> None:
        with self._lock:
            self._connections[conn.connection_id] = conn

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        with self._lock:
            return self._connections.get(connection_id)

    def delete_connection(self, connection_id: str) -> ConnectionRecord | None:
        with self._lock:
            return self._connections.pop(connection_id, None)

    def connections_of(self, user_id: str) -> list[ConnectionRecord]:
        with self._lock:
            return [c for c in self._connections.values() if c.user_id == user_id]

    # --------------------------------------------------------------- agents
    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        with self._lock:
            old = self._agents.get(agent_id) or AgentRecord(agent_id=agent_id, updated_at=now)
            new = old.model_copy(
                update={"connections": old.connections + 1, "presence": "online", "updated_at": now}
            )
            self._agents[agent_id] = new
            return new

    def agent_disconnected(self, agent_id: str, now: str) -> AgentRecord | None:
        with self._lock:
            old = self._agents.get(agent_id)
            if old is None:
                return None
            count = max(0, old.connections - 1)
            new = old.model_copy(
                update={
                    "connections": count,
                    "presence": old.presence if count else "offline",
                    "updated_at": now,
                }
            )
            self._agents[agent_id] = new
            return new

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            return self._agents.get(agent_id)

    def online_agents(self) -> list[AgentRecord]:
        with self._lock:
            online = [a for a in self._agents.values() if a.presence == "online"]
        return sorted(online, key=lambda a: (a.active_count, a.agent_id))

    # -------------------------------------------------------- conversations
    def create_conversation(self, conv: Conversation) -> None:
        with self._lock:
            if conv.conversation_id in self._conversations:
                raise Conflict(f"conversation {conv.conversation_id} exists")
            self._conversations[conv.conversation_id] = conv
            key = (conv.customer_id, conv.conversation_id)
            self._participants.setdefault(
                key,
                Participant(
                    user_id=conv.customer_id,
                    conversation_id=conv.conversation_id,
                    role="customer",
                    joined_at=conv.created_at,
                ),
            )

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with self._lock:
            return self._conversations.get(conversation_id)

    def waiting_conversations(self, limit: int) -> list[Conversation]:
        with self._lock:
            waiting = [c for c in self._conversations.values() if c.status == "waiting"]
        return sorted(waiting, key=lambda c: (c.created_at, c.conversation_id))[:limit]

    def assign_conversation(self, conversation_id: str, agent_id: str, now: str) -> bool:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            agent = self._agents.get(agent_id)
            if conv is None or conv.status != "waiting" or agent is None or agent.presence != "online":
                return False
            self._conversations[conversation_id] = conv.model_copy(
                update={"status": "active", "agent_id": agent_id, "updated_at": now}
            )
            self._agents[agent_id] = agent.model_copy(
                update={"active_count": agent.active_count + 1, "updated_at": now}
            )
            self._participants.setdefault(
                (agent_id, conversation_id),
                Participant(
                    user_id=agent_id, conversation_id=conversation_id, role="agent", joined_at=now
                ),
            )
            return True

    # ------------------------------------------------------------- messages
    def append_message(
        self, message: MessageRecord, idem: IdempotencyRecord, expected_last_seq: int, now_epoch: int
    ) -> None:
        if message.seq != expected_last_seq + 1:
            raise ValueError("message.seq must be expected_last_seq + 1")
        with self._lock:
            existing = self._idempotency.get(idem.key)
            if existing is not None and existing.expires_at >= now_epoch:
                raise DuplicateMessage(idem.key)
            conv = self._conversations.get(message.conversation_id)
            if conv is None:
                raise NotFound(f"conversation {message.conversation_id} not found")
            if conv.status == "closed":
                raise ConversationClosed("conversation is closed")
            if conv.last_seq != expected_last_seq:
                raise SequenceConflict(message.conversation_id)
            if (message.conversation_id, message.seq) in self._messages:
                raise SequenceConflict(message.conversation_id)
            self._idempotency[idem.key] = idem
            self._conversations[conv.conversation_id] = conv.model_copy(
                update={"last_seq": message.seq}
            )
            self._messages[(message.conversation_id, message.seq)] = message
            self._pending[(message.conversation_id, message.seq)] = now_epoch

    def mark_enqueued(self, conversation_id: str, seq: int) -> None:
        with self._lock:
            self._pending.pop((conversation_id, seq), None)

    def pending_messages(self, committed_before: int, limit: int) -> list[MessageRecord]:
        with self._lock:
            due = sorted((since, key) for key, since in self._pending.items() if since < committed_before)
            return [self._messages[key] for _, key in due[:limit]]

    def get_idempotency(
        self, sender_id: str, conversation_id: str, message_id: str, now_epoch: int
    ) -> IdempotencyRecord | None:
        with self._lock:
            rec = self._idempotency.get(idempotency_key(sender_id, conversation_id, message_id))
        if rec is None or rec.expires_at < now_epoch:
            return None
        return rec

    def get_message(self, conversation_id: str, seq: int) -> MessageRecord | None:
        with self._lock:
            return self._messages.get((conversation_id, seq))

    def messages_after(self, conversation_id: str, after: int, limit: int) -> list[MessageRecord]:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            last = conv.last_seq if conv else 0
            out: list[MessageRecord] = []
            seq = after + 1
            while seq <= last and len(out) < limit:
                msg = self._messages.get((conversation_id, seq))
                if msg is not None:
                    out.append(msg)
                seq += 1
            return out

    # ------------------------------------------------ participants & cursors
    def add_participant(self, participant: Participant) -> None:
        with self._lock:
            self._participants.setdefault(
                (participant.user_id, participant.conversation_id), participant
            )

    def get_participant(self, user_id: str, conversation_id: str) -> Participant | None:
        with self._lock:
            return self._participants.get((user_id, conversation_id))

    def participants_of_user(self, user_id: str) -> list[Participant]:
        with self._lock:
            return [p for (u, _), p in self._participants.items() if u == user_id]

    def advance_ack(self, user_id: str, conversation_id: str, seq: int) -> bool:
        with self._lock:
            p = self._participants.get((user_id, conversation_id))
            if p is None or p.ack_seq >= seq:
                return False
            self._participants[(user_id, conversation_id)] = p.model_copy(update={"ack_seq": seq})
            return True
