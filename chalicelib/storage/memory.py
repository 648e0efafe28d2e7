"""In-memory storage: the same contract as DynamoDB, for the core tests and tools.

One lock serialises every operation, which gives the same atomicity the
DynamoDB transactions give.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from chalicelib.core import Transition, void_message
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateMessage,
    DuplicateRequest,
    NotFound,
    ReservationRefused,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.models import (
    DEFAULT_CAPACITY,
    AgentRecord,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    Principal,
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
        self._active: dict[str, int] = {}  # conversation -> epoch s of its latest seq
        self._sweep_mark: int | None = None
        self._requests: dict[str, tuple[str, int]] = {}
        self._buckets: dict[str, tuple[int, int]] = {}

    # ---------------------------------------------------------- connections
    def put_connection(self, conn: ConnectionRecord) -> None:
        with self._lock:
            self._connections[conn.connection_id] = conn

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        with self._lock:
            return self._connections.get(connection_id)

    def delete_connection(self, connection_id: str, user_id: str | None = None) -> ConnectionRecord | None:
        with self._lock:
            return self._connections.pop(connection_id, None)

    def connections_of(self, user_id: str) -> list[ConnectionRecord]:
        return self.connections_of_users([user_id])[user_id]

    def connections_of_users(self, user_ids: Sequence[str],
                             consistent: bool = False) -> dict[str, list[ConnectionRecord]]:
        with self._lock:
            return {user: sorted((c for c in self._connections.values() if c.user_id == user),
                                 key=lambda c: c.connection_id) for user in user_ids}

    # --------------------------------------------------------------- agents
    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        with self._lock:
            old = self._agents.get(agent_id) or AgentRecord(agent_id=agent_id, updated_at=now)
            presence = "away" if old.presence == "away" else "online"
            new = old.model_copy(
                update={"connections": old.connections + 1, "presence": presence, "updated_at": now}
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

    def set_agent_connections(self, agent_id: str, seen_updated_at: str, count: int, now: str) -> bool:
        with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None or agent.updated_at != seen_updated_at:
                return False
            self._agents[agent_id] = agent.model_copy(update={
                "connections": count, "updated_at": now,
                "presence": agent.presence if count else "offline"})
            return True

    def online_agents(self) -> list[AgentRecord]:
        with self._lock:
            online = [a for a in self._agents.values() if a.presence == "online"]
        return sorted(online, key=lambda a: (a.active_count, a.agent_id))

    def list_agents(self) -> list[AgentRecord]:
        with self._lock:
            return sorted(self._agents.values(), key=lambda a: a.agent_id)

    def set_agent_status(
        self, agent_id: str, presence: str | None, capacity: int | None, now: str
    ) -> AgentRecord:
        with self._lock:
            old = self._agents.get(agent_id) or AgentRecord(
                agent_id=agent_id, capacity=DEFAULT_CAPACITY, updated_at=now)
            update: dict[str, object] = {"updated_at": now}
            if presence is not None:
                update["presence"] = presence
            if capacity is not None:
                update["capacity"] = capacity
            new = old.model_copy(update=update)
            self._agents[agent_id] = new
            return new

    # -------------------------------------------------------- conversations
    def create_conversation(
        self, conv: Conversation, request_key: str | None = None, expires_at: int = 0,
        now_epoch: int = 0,
    ) -> None:
        with self._lock:
            if request_key is not None:
                request = self._requests.get(f"{conv.customer_id}#{request_key}")
                if request is not None and request[1] >= now_epoch:
                    raise DuplicateRequest(request[0])
            if conv.conversation_id in self._conversations:
                raise Conflict(f"conversation {conv.conversation_id} exists")
            if request_key is not None:
                self._requests[f"{conv.customer_id}#{request_key}"] = (conv.conversation_id, expires_at)
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
        return sorted(waiting, key=lambda c: c.queue_position_key)[:max(limit, 0)]

    def open_conversations_of(self, user: Principal) -> list[Conversation]:
        with self._lock:
            convs = list(self._conversations.values())
        if user.role == "customer":
            return [c for c in convs if c.customer_id == user.user_id and c.status != "closed"]
        return [c for c in convs if c.agent_id == user.user_id and c.status == "active"]

    def conversations_of(
        self, user_id: str, role: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Conversation], str | None]:
        with self._lock:
            mine = [c for c in self._conversations.values()
                    if (c.customer_id if role == "customer" else c.agent_id) == user_id]
        mine.sort(key=lambda c: (c.created_at, c.conversation_id), reverse=True)
        if cursor is not None:
            created, _, cid = cursor.partition("|")
            if not cid:
                raise BadRequest("cursor is not one this API returned")
            mine = [c for c in mine if (c.created_at, c.conversation_id) < (created, cid)]
        matching = [c for c in mine if status is None or c.status == status]
        page = matching[:limit]
        more = len(matching) > limit
        return page, (f"{page[-1].created_at}|{page[-1].conversation_id}" if more and page else None)

    def apply_transition(self, transition: Transition, now_epoch: int) -> None:
        before, after, message = transition.before, transition.after, transition.message
        with self._lock:
            conv = self._conversations.get(before.conversation_id)
            if conv is None:
                raise NotFound(f"conversation {before.conversation_id} not found")
            if (conv.status, conv.agent_id, conv.last_seq) != (
                    before.status, before.agent_id, before.last_seq):
                raise StaleConversation(before.conversation_id)
            if (message.conversation_id, message.seq) in self._messages:
                raise SequenceConflict(message.conversation_id)
            for change in transition.agents:
                agent = self._agents.get(change.agent_id)
                if change.delta > 0 and (agent is None or not agent.has_room):
                    raise AgentUnavailable(change.agent_id)
            for change in transition.agents:
                agent = self._agents.get(change.agent_id)
                if agent is not None:
                    self._agents[change.agent_id] = agent.model_copy(update={
                        "active_count": agent.active_count + change.delta,
                        "updated_at": after.updated_at})
            if transition.join is not None:
                self._participants.setdefault(
                    (transition.join, after.conversation_id),
                    Participant(user_id=transition.join, conversation_id=after.conversation_id,
                                role="agent", joined_at=after.updated_at))
            self._conversations[after.conversation_id] = after
            self._messages[(message.conversation_id, message.seq)] = message
            self._active[message.conversation_id] = now_epoch

    # ------------------------------------------------------------- messages
    def reserve_seq(self, conversation_id: str, sender: Principal, now_ms: int) -> Conversation:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            holder = conv and (conv.customer_id if sender.role == "customer" else conv.agent_id)
            if conv is None or conv.status == "closed" or holder != sender.user_id:
                raise ReservationRefused(conv)
            conv = conv.model_copy(update={"last_seq": conv.last_seq + 1, "reserved_at": now_ms})
            self._conversations[conversation_id] = conv
            self._active[conversation_id] = now_ms // 1000
            return conv

    def claim_message_id(self, idem: IdempotencyRecord, now_epoch: int) -> None:
        with self._lock:
            existing = self._idempotency.get(idem.key)
            if existing is not None and existing.expires_at >= now_epoch:
                raise DuplicateMessage(idem.key, existing)
            self._idempotency[idem.key] = idem

    def put_message(self, message: MessageRecord) -> None:
        with self._lock:
            key = (message.conversation_id, message.seq)
            if key in self._messages:
                raise SequenceConflict(message.conversation_id, self._messages[key])
            self._messages[key] = message

    def move_claim(self, idem: IdempotencyRecord, from_seq: int) -> bool:
        with self._lock:
            current = self._idempotency.get(idem.key)
            if current is None or current.seq != from_seq:
                return False
            self._idempotency[idem.key] = idem
            return True

    def fill_hole(self, conversation_id: str, seq: int, now_epoch: int) -> MessageRecord:
        with self._lock:
            key = (conversation_id, seq)
            if key not in self._messages:
                self._messages[key] = void_message(conversation_id, seq, now_epoch)
            return self._messages[key]

    def active_conversations(self, since: int) -> list[str]:
        with self._lock:
            return sorted(cid for cid, at in self._active.items() if at >= since)

    def get_sweep_mark(self) -> int | None:
        with self._lock:
            return self._sweep_mark

    def set_sweep_mark(self, mark: int) -> None:
        with self._lock:
            if self._sweep_mark is None or self._sweep_mark < mark:
                self._sweep_mark = mark

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

    def messages_before(self, conversation_id: str, before: int, limit: int) -> list[MessageRecord]:
        with self._lock:
            out: list[MessageRecord] = []
            seq = before - 1
            while seq >= 1 and len(out) < limit:
                msg = self._messages.get((conversation_id, seq))
                if msg is not None:
                    out.append(msg)
                seq -= 1
            return out[::-1]

    # ------------------------------------------------ participants & cursors
    def add_participant(self, participant: Participant) -> None:
        with self._lock:
            self._participants.setdefault(
                (participant.user_id, participant.conversation_id), participant
            )

    def get_participant(self, user_id: str, conversation_id: str) -> Participant | None:
        with self._lock:
            return self._participants.get((user_id, conversation_id))

    def participants_at(self, keys: Sequence[tuple[str, str]]) -> list[Participant]:
        with self._lock:
            return [self._participants[k] for k in dict.fromkeys(keys) if k in self._participants]

    def conversations_at(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        with self._lock:
            return [self._conversations[c] for c in dict.fromkeys(conversation_ids)
                    if c in self._conversations]

    def participants_of_user(self, user_id: str) -> list[Participant]:
        with self._lock:
            return [p for (u, _), p in self._participants.items() if u == user_id]

    def participants_of_conversation(self, conversation_id: str) -> list[Participant]:
        with self._lock:
            return sorted((p for (_, c), p in self._participants.items() if c == conversation_id),
                          key=lambda p: p.user_id)

    def advance_ack(self, user_id: str, conversation_id: str, seq: int) -> bool:
        return self._advance(user_id, conversation_id, "ack_seq", seq)

    def advance_read(self, user_id: str, conversation_id: str, seq: int) -> bool:
        return self._advance(user_id, conversation_id, "read_seq", seq)

    def _advance(self, user_id: str, conversation_id: str, field: str, seq: int) -> bool:
        with self._lock:
            p = self._participants.get((user_id, conversation_id))
            if p is None or getattr(p, field) >= seq:
                return False
            self._participants[(user_id, conversation_id)] = p.model_copy(update={field: seq})
            return True

    # ---------------------------------------------------------- rate limits
    def take_tokens(self, buckets: Sequence[tuple[str, int]], expires_at: int) -> bool:
        with self._lock:
            counts = [self._buckets.get(key, (0, 0))[0] for key, _ in buckets]
            if any(count >= limit for count, (_, limit) in zip(counts, buckets, strict=False)):
                return False
            for count, (key, _) in zip(counts, buckets, strict=False):
                self._buckets[key] = (count + 1, expires_at)
            return True
