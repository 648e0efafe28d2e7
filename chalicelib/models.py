"""Frame and record models (pydantic v2).

Client frames are validated here; stored records are the shapes every
storage implementation reads and writes; server frames are built here so
their field names (camelCase, the wire contract of docs/protocol.md) live
in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic.alias_generators import to_camel

Role = Literal["customer", "agent"]
SenderRole = Literal["customer", "agent", "system"]
Status = Literal["waiting", "active", "closed"]
Presence = Literal["online", "away", "offline"]

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
MessageId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
ConversationId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
Seq = Annotated[StrictInt, Field(ge=0)]


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


ClientFrame = Annotated[SendFrame | AckFrame | ResumeFrame, Field(discriminator="action")]


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
    last_seq: int = 0

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

    def frame(self) -> dict[str, Any]:
        """The ``message`` frame that carries this record."""
        return {
            "type": "message",
            "conversationId": self.conversation_id,
            "seq": self.seq,
            "messageId": self.message_id,
            "senderId": self.sender_id,
            "senderRole": self.sender_role,
            "body": self.body,
            "sentAt": self.sent_at,
        }


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
    joined_at: str


class AgentRecord(_Wire):
    """An agent's presence and load."""

    agent_id: str
    presence: Presence = "offline"
    connections: int = 0
    active_count: int = 0
    updated_at: str
