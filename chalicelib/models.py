"""Frame and record models (pydantic v2).

Client frames are validated here; stored records are the shapes every
storage implementation reads and writes; server frames are built here so
their field names (camelCase, the wire contract of docs/protocol.md) live
in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from pydantic.alias_generators import to_camel

Role = Literal["customer", "agent"]
SenderRole = Literal["customer", "agent", "system"]
Status = Literal["waiting", "active", "closed"]
Presence = Literal["online", "away", "offline"]
#: The lifecycle events a system message records (``event`` of a message frame).
Event = Literal["assigned", "transferred", "requeued", "closed", "reopened"]

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
MessageId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
ConversationId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
#: Largest seq a client may name: 2**53 - 1, exact in every JSON number
#: implementation (and far inside DynamoDB's 38 digits).
MAX_SEQ = 2**53 - 1
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SEQ)]


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown client fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict of this model with wire (camelCase) names."""
        return self.model_dump(by_alias=True, mode="json")


# --------------------------------------------------------------- client frames


class SendFrame(_Wire):
    """``{"action":"send","conversationId":C,"messageId":M,"body":B}``."""

    action: Literal["send"]
    conversation_id: ConversationId
    message_id: MessageId
    body: Annotated[StrictStr, Field(min_length=1)]


class AckFrame(_Wire):
    """``{"action":"ack","conversationId":C,"seq":N}``: cumulative."""

    action: Literal["ack"]
    conversation_id: ConversationId
    seq: Seq


class ResumeFrame(_Wire):
    """``{"action":"resume","cursors":{C:N,...}}``."""

    action: Literal["resume"]
    cursors: dict[ConversationId, Seq] = Field(default_factory=dict, max_length=100)


class TypingFrame(_Wire):
    """``{"action":"typing","conversationId":C}``: ephemeral, relayed, never stored."""

    action: Literal["typing"]
    conversation_id: ConversationId


class ReadFrame(_Wire):
    """``{"action":"read","conversationId":C,"seq":N}``: the cumulative read cursor."""

    action: Literal["read"]
    conversation_id: ConversationId
    seq: Seq


ClientFrame = Annotated[SendFrame | AckFrame | ResumeFrame | TypingFrame | ReadFrame,
                        Field(discriminator="action")]


# --------------------------------------------------------------------- records


class Principal(_Wire):
    """The authenticated caller, from a verified token."""

    user_id: str
    role: Role
    name: str | None = None


class ConnectionRecord(_Wire):
    """One open WebSocket connection (``$connect`` to ``$disconnect`` or a 410)."""

    connection_id: str
    user_id: str
    role: Role
    connected_at: str
    domain_name: str
    stage: str
    expires_at: int


class Conversation(_Wire):
    """A customer's conversation and its gapless message counter ``last_seq``."""

    conversation_id: str
    customer_id: str
    agent_id: str | None = None
    status: Status = "waiting"
    created_at: str
    updated_at: str
    #: When it last started waiting (creation or reopening): the queue's order.
    queued_at: str | None = None
    closed_at: str | None = None
    last_seq: int = 0
    #: Epoch ms of the latest seq reservation (a send moves ``last_seq`` before it
    #: stores its message); a seq left empty longer than the sweep grace is void.
    reserved_at: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _queued_at_creation(cls, data: Any) -> Any:
        """A new conversation is queued when it is created."""
        if isinstance(data, dict) and not (data.get("queued_at") or data.get("queuedAt")):
            created = data.get("created_at") or data.get("createdAt")
            data = {**data, "queued_at": created}
        return data

    @property
    def queue_position_key(self) -> tuple[str, str]:
        """Oldest waiting first; ties by id."""
        return (self.queued_at or self.created_at, self.conversation_id)

    def participant_ids(self) -> list[str]:
        """The users that may read and write this conversation."""
        return [u for u in (self.customer_id, self.agent_id) if u]

    def rest_view(self) -> dict[str, Any]:
        """The REST representation."""
        return {
            "conversationId": self.conversation_id,
            "customerId": self.customer_id,
            "agentId": self.agent_id,
            "status": self.status,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "queuedAt": self.queued_at or self.created_at,
            "closedAt": self.closed_at,
            "lastSeq": self.last_seq,
        }


class MessageRecord(_Wire):
    """A stored message. ``seq`` is its place in the conversation (1, 2, 3, ...)."""

    conversation_id: str
    seq: int
    message_id: str
    sender_id: str
    sender_role: SenderRole
    body: str
    sent_at: str
    #: System messages only: the lifecycle event, and the conversation after it.
    event: Event | None = None
    status: Status | None = None
    agent_id: str | None = None
    previous_agent_id: str | None = None
    #: Epoch seconds after which the message is gone (MESSAGE_RETENTION_DAYS); None: kept.
    expires_at: int | None = None
    #: A seq that was reserved by a send that never stored its message (the
    #: sender's handler died, or the send turned out to be a retry): it carries
    #: nothing, and clients pass over it (docs/protocol.md, "Void seqs").
    void: bool | None = None

    def frame(self) -> dict[str, Any]:
        """The ``message`` frame that carries this record."""
        frame = {
            "type": "message",
            "conversationId": self.conversation_id,
            "seq": self.seq,
            "messageId": self.message_id,
            "senderId": self.sender_id,
            "senderRole": self.sender_role,
            "body": self.body,
            "sentAt": self.sent_at,
        }
        if self.void:
            frame["void"] = True
        if self.event is not None:
            frame["event"] = self.event
            frame["status"] = self.status
            frame["agentId"] = self.agent_id
            if self.previous_agent_id is not None:
                frame["previousAgentId"] = self.previous_agent_id
        return frame


class IdempotencyRecord(_Wire):
    """What a (sender, conversation, messageId) was answered with, and a hash of its payload."""

    sender_id: str
    conversation_id: str
    message_id: str
    payload_hash: str
    seq: int
    sent_at: str
    expires_at: int

    @property
    def key(self) -> str:
        """The idempotency key: sender, conversation and messageId."""
        return idempotency_key(self.sender_id, self.conversation_id, self.message_id)


def idempotency_key(sender_id: str, conversation_id: str, message_id: str) -> str:
    """``sender#conversation#messageId`` (``#`` cannot occur in any of the three ids)."""
    return f"{sender_id}#{conversation_id}#{message_id}"


class Participant(_Wire):
    """A user's membership of a conversation and their cumulative ack cursor."""

    user_id: str
    conversation_id: str
    role: Role
    ack_seq: int = 0
    read_seq: int = 0
    joined_at: str


#: Concurrent active conversations an agent takes unless they set another capacity.
DEFAULT_CAPACITY = 5
MAX_CAPACITY = 100


class AgentRecord(_Wire):
    """An agent's presence, open connections, load and capacity."""

    agent_id: str
    presence: Presence = "offline"
    connections: int = 0
    active_count: int = 0
    capacity: int = DEFAULT_CAPACITY
    updated_at: str

    @property
    def has_room(self) -> bool:
        """Online and below capacity: may take one more conversation."""
        return self.presence == "online" and self.active_count < self.capacity

    def rest_view(self) -> dict[str, Any]:
        """The REST representation."""
        return {
            "agentId": self.agent_id,
            "status": self.presence,
            "connections": self.connections,
            "activeCount": self.active_count,
            "capacity": self.capacity,
            "updatedAt": self.updated_at,
        }


class AgentStatusRequest(_Wire):
    """``PUT /agents/me/status`` body: ``{"status": ..., "capacity": N}`` (either may be omitted)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True,
                              extra="forbid")

    status: Presence | None = None
    capacity: Annotated[StrictInt, Field(ge=0, le=MAX_CAPACITY)] | None = None


class TransferRequest(_Wire):
    """``POST /conversations/{id}/transfer`` body: ``{"agentId": A}``."""

    agent_id: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^#]+$")]
