"""The pure core: decisions and frames, no I/O.

Everything here is a function of its arguments, so the rules of the
protocol (validation, authorization, idempotency, recipients, frames) are
tested without any AWS. The protocols that keep the promise are state
machines beside it, driven by the services:

- ``chalicelib.core.send``: a send, from reservation to ``accepted``;
- ``chalicelib.core.lifecycle``: one lifecycle step (assign, transfer,
  close, reopen);
- ``chalicelib.core.replay``: the replay of a resume.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from chalicelib.errors import (
    BadRequest,
    Conflict,
    ConversationClosed,
    Forbidden,
    OnceChatError,
    PayloadTooLarge,
)
from chalicelib.models import (
    AckFrame,
    ClientFrame,
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Principal,
    ReadFrame,
    ResumeFrame,
    SendFrame,
    TypingFrame,
    idempotency_key,
)

AnyClientFrame = SendFrame | AckFrame | ResumeFrame | TypingFrame | ReadFrame
_CLIENT_FRAME: TypeAdapter[AnyClientFrame] = TypeAdapter(ClientFrame)
ACTIONS = ("send", "ack", "resume", "typing", "read")
SYSTEM_SENDER = "system"


class ProtocolError(AssertionError):
    """A state machine got an outcome its state cannot receive: a driver bug, never a client's."""


# ------------------------------------------------------------------ time & ids


def iso_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-01-31T12:00:00.123Z``."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def epoch_ms(iso: str) -> int:
    """The inverse of ``iso_ms``."""
    dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


#: After this long a connection's ``$connect`` has surely returned (API
#: Gateway's integration timeout is 29 s), so a 410 means it is gone.
CONNECT_SETTLE_MS = 30_000


def payload_hash(conversation_id: str, body: str) -> str:
    """What a retry must repeat exactly: the conversation and the body."""
    digest = hashlib.sha256()
    digest.update(conversation_id.encode())
    digest.update(b"\x00")
    digest.update(body.encode())
    return digest.hexdigest()


def deduplication_id(conversation_id: str, seq: int) -> str:
    """The SQS MessageDeduplicationId of a stored message (at most 128 characters).

    A message's identity is (conversation, seq), one-to-one with
    (sender, conversation, messageId), so every re-enqueue of the same
    message carries the same id. SQS dedup only saves work: correctness
    comes from the DynamoDB conditions and the client's seq rule.
    """
    return hashlib.sha256(f"{conversation_id}#{seq}".encode()).hexdigest()


# --------------------------------------------------------------------- parsing


#: Deepest JSON nesting a frame or a REST body may have (frames need 2).
MAX_JSON_DEPTH = 16
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_id(value: object, max_length: int = 128) -> bool:
    """A conversation or message id: 1 to ``max_length`` characters of ``A-Za-z0-9_-``."""
    return isinstance(value, str) and len(value) <= max_length and bool(_ID.match(value))


def load_json(raw: str | bytes | None, what: str = "frame") -> Any:
    """Decode client JSON, or raise BadRequest.

    Refuses what would fail later, deep in a handler: nesting deeper than
    ``MAX_JSON_DEPTH`` (and anything deep enough to exhaust the decoder's
    recursion) and strings with lone UTF-16 surrogates (``"\\ud800"``),
    which no UTF-8 store or socket can carry.
    """
    if raw is None or raw == "" or raw == b"":
        raise BadRequest(f"empty {what}")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise BadRequest(f"{what} holds a string that is not valid Unicode (lone surrogate)")
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None:
                    stack.append((key, depth))
                stack.append((item, depth + 1))
    return data


def parse_client_frame(raw: str | None, max_body_bytes: int) -> AnyClientFrame:
    """Validate one client frame, or raise BadRequest / PayloadTooLarge.

    The raised error carries the frame's messageId when it is a valid id,
    so a client can tell which of its messages was refused.
    """
    data = load_json(raw, "frame")
    if not isinstance(data, dict):
        raise BadRequest("frame must be a JSON object")
    message_id = data.get("messageId") if valid_id(data.get("messageId"), 64) else None
    action = data.get("action")
    if action not in ACTIONS:
        shown = action if isinstance(action, str) and len(action) <= 32 else type(action).__name__
        raise BadRequest(f"unknown action {shown!r}; expected one of {', '.join(ACTIONS)}",
                         message_id=message_id)
    body = data.get("body")
    if action == "send" and isinstance(body, str) and len(body.encode()) > max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {max_body_bytes} bytes", message_id=message_id)
    try:
        return _CLIENT_FRAME.validate_python(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc), message_id=message_id) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p)[:64] for p in err["loc"][1:]) or "frame"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_REQUEST_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def valid_request_key(key: str) -> bool:
    """An Idempotency-Key header value: 1 to 128 characters of ``A-Za-z0-9_-.:``."""
    return bool(_REQUEST_KEY.match(key))


# --------------------------------------------------------------- authorization


def is_participant(principal: Principal, conv: Conversation) -> bool:
    """A customer owns the conversation; an agent is the one assigned to it."""
    if principal.role == "customer":
        return conv.customer_id == principal.user_id
    return conv.agent_id == principal.user_id


def require_participant(principal: Principal, conv: Conversation) -> None:
    """Raise Forbidden unless the caller takes part in the conversation."""
    if not is_participant(principal, conv):
        raise Forbidden(f"not a participant of conversation {conv.conversation_id}")


def can_view(principal: Principal, conv: Conversation) -> bool:
    """Who may see a conversation's summary: its participants, and any agent while it waits."""
    return is_participant(principal, conv) or (
        principal.role == "agent" and conv.status == "waiting")


def require_view(principal: Principal, conv: Conversation) -> None:
    """Raise Forbidden unless the caller may see the conversation's summary."""
    if not can_view(principal, conv):
        raise Forbidden(f"conversation {conv.conversation_id} is not yours")


def require_role(principal: Principal, role: str, what: str) -> None:
    """Raise Forbidden unless the caller has ``role``."""
    if principal.role != role:
        raise Forbidden(f"only {role}s may {what}")


# -------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Append:
    """A new message at its reserved seq and the claim of its messageId there."""

    message: MessageRecord
    idem: IdempotencyRecord


def idempotency_key_of(principal: Principal, frame: SendFrame) -> str:
    """The idempotency key of a send: one per (sender, conversation, messageId)."""
    return idempotency_key(principal.user_id, frame.conversation_id, frame.message_id)


def replay_of(frame: SendFrame, existing: IdempotencyRecord) -> None:
    """Check that a send of a claimed messageId repeats the claimed payload.

    Raises Conflict when the messageId was used with another body.
    """
    if existing.payload_hash != payload_hash(frame.conversation_id, frame.body):
        raise Conflict("messageId was already used with a different body",
                       message_id=frame.message_id)


def claimed_message(principal: Principal, frame: SendFrame, claim: IdempotencyRecord,
                    retention_seconds: int = 0) -> MessageRecord:
    """The message a claim stands for, at its seq and time (a retry stores it when the slot is empty)."""
    return MessageRecord(
        conversation_id=claim.conversation_id,
        seq=claim.seq,
        message_id=claim.message_id,
        sender_id=principal.user_id,
        sender_role=principal.role,
        body=frame.body,
        sent_at=claim.sent_at,
        expires_at=epoch_ms(claim.sent_at) // 1000 + retention_seconds if retention_seconds else None,
    )


def is_claimed_by(message: MessageRecord, claim: IdempotencyRecord) -> bool:
    """Whether a stored message is the one a claim stands for (not a void, not another message)."""
    return (not message.void and message.message_id == claim.message_id
            and message.sender_id == claim.sender_id)


def new_message(
    principal: Principal,
    conversation_id: str,
    frame: SendFrame,
    seq: int,
    now_ms: int,
    idempotency_ttl_seconds: int,
    retention_seconds: int = 0,
) -> Append:
    """The message (at ``seq``) and idempotency record a new send stores."""
    sent_at = iso_ms(now_ms)
    message = MessageRecord(
        conversation_id=conversation_id,
        seq=seq,
        message_id=frame.message_id,
        sender_id=principal.user_id,
        sender_role=principal.role,
        body=frame.body,
        sent_at=sent_at,
        expires_at=now_ms // 1000 + retention_seconds if retention_seconds else None,
    )
    idem = IdempotencyRecord(
        sender_id=principal.user_id,
        conversation_id=conversation_id,
        message_id=frame.message_id,
        payload_hash=payload_hash(conversation_id, frame.body),
        seq=seq,
        sent_at=sent_at,
        expires_at=now_ms // 1000 + idempotency_ttl_seconds,
    )
    return Append(message=message, idem=idem)


def void_message(conversation_id: str, seq: int, now_epoch: int) -> MessageRecord:
    """What fills a seq whose send never stored its message: a void, which clients pass over."""
    return MessageRecord(
        conversation_id=conversation_id, seq=seq, message_id=f"void-{seq}",
        sender_id="system", sender_role="system", body="",
        sent_at=iso_ms(now_epoch * 1000), void=True)


# ----------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class AgentDelta:
    """A change of one agent's ``active_count``: +1 needs room (online, below capacity)."""

    agent_id: str
    delta: int


@dataclass(frozen=True)
class Transition:
    """One lifecycle step, written as one conditional transaction.

    The conversation goes from ``before`` (the condition: status, agent and
    counter unchanged) to ``after``; the system message takes seq
    ``before.last_seq + 1``; each agent's load moves by its delta; ``join``
    (an agent) becomes a participant.
    """

    before: Conversation
    after: Conversation
    message: MessageRecord
    agents: tuple[AgentDelta, ...] = ()
    join: str | None = None


_EVENT_TEXT = {
    "assigned": "{agent} joined the conversation",
    "transferred": "The conversation was transferred from {previous} to {agent}",
    "requeued": "{previous} is no longer available: the conversation waits for another agent",
    "closed": "The conversation was closed by {actor}",
    "reopened": "The conversation was reopened by {actor}",
}


def _transition(conv: Conversation, event: str, actor: str, now_ms: int,
                agents: tuple[AgentDelta, ...] = (), join: str | None = None,
                **changes: Any) -> Transition:
    now = iso_ms(now_ms)
    seq = conv.last_seq + 1
    after = conv.model_copy(update={**changes, "updated_at": now, "last_seq": seq})
    previous = conv.agent_id if event in ("transferred", "requeued", "reopened") else None
    message = MessageRecord(
        conversation_id=conv.conversation_id,
        seq=seq,
        message_id=f"system-{seq}",
        sender_id=SYSTEM_SENDER,
        sender_role="system",
        body=_EVENT_TEXT[event].format(agent=after.agent_id, previous=previous, actor=actor),
        sent_at=now,
        event=event,
        status=after.status,
        agent_id=after.agent_id,
        previous_agent_id=previous,
    )
    return Transition(conv, after, message, agents, join)


def plan_assign(conv: Conversation, agent_id: str, now_ms: int) -> Transition:
    """waiting -> active with ``agent_id``; the agent needs room. Conflict unless waiting."""
    if conv.status != "waiting":
        raise Conflict(f"conversation {conv.conversation_id} is {conv.status}, not waiting")
    return _transition(conv, "assigned", agent_id, now_ms, (AgentDelta(agent_id, 1),), agent_id,
                       status="active", agent_id=agent_id)


def plan_transfer(principal: Principal, conv: Conversation, to_agent: str, now_ms: int) -> Transition:
    """active with the caller -> active with ``to_agent`` (who needs room)."""
    require_role(principal, "agent", "transfer conversations")
    require_participant(principal, conv)
    if conv.status != "active":
        raise Conflict(f"conversation {conv.conversation_id} is {conv.status}, not active")
    if to_agent == conv.agent_id:
        raise Conflict(f"conversation {conv.conversation_id} is already with {to_agent}")
    assert conv.agent_id is not None
    return _transition(conv, "transferred", principal.user_id, now_ms,
                       (AgentDelta(conv.agent_id, -1), AgentDelta(to_agent, 1)), to_agent,
                       agent_id=to_agent)


def plan_requeue(conv: Conversation, agent_id: str, now_ms: int) -> Transition:
    """active with ``agent_id``, who is away or gone -> waiting; frees the agent.

    The conversation goes back to the place in the queue it first had
    (``queued_at`` unchanged), so it comes before those that started
    waiting while it was being answered. Conflict unless it is still
    active with that agent (closed or transferred meanwhile).
    """
    if conv.status != "active" or conv.agent_id != agent_id:
        raise Conflict(f"conversation {conv.conversation_id} is not active with {agent_id}")
    return _transition(conv, "requeued", agent_id, now_ms, (AgentDelta(agent_id, -1),),
                       status="waiting", agent_id=None)


def plan_close(principal: Principal, conv: Conversation, now_ms: int) -> Transition:
    """waiting or active -> closed, by the customer or the assigned agent; frees the agent."""
    require_participant(principal, conv)
    if conv.status == "closed":
        raise Conflict(f"conversation {conv.conversation_id} is already closed")
    frees = (AgentDelta(conv.agent_id, -1),) if conv.status == "active" and conv.agent_id else ()
    return _transition(conv, "closed", principal.user_id, now_ms, frees,
                       status="closed", closed_at=iso_ms(now_ms))


def plan_reopen(principal: Principal, conv: Conversation, now_ms: int,
                window_seconds: int, message_id: str | None = None) -> Transition:
    """closed -> waiting, when its customer writes within ``window_seconds`` of the close.

    Raises ConversationClosed (read-only: the customer opens a new
    conversation) after the window or for anyone but the customer.
    """
    require_participant(principal, conv)
    if conv.status != "closed":
        raise Conflict(f"conversation {conv.conversation_id} is {conv.status}, not closed")
    closed_at = epoch_ms(conv.closed_at) if conv.closed_at else 0
    if principal.role != "customer" or now_ms - closed_at > window_seconds * 1000:
        raise ConversationClosed("conversation is closed; the customer may open a new one",
                                 message_id=message_id)
    return _transition(conv, "reopened", principal.user_id, now_ms,
                       status="waiting", agent_id=None, closed_at=None, queued_at=iso_ms(now_ms))


def conversation_frame(message: MessageRecord, conv: Conversation) -> dict[str, Any]:
    """``conversation``: a lifecycle event, so every screen follows (ephemeral, like typing)."""
    return {
        "type": "conversation",
        "event": message.event,
        "conversationId": message.conversation_id,
        "seq": message.seq,
        "status": message.status,
        "customerId": conv.customer_id,
        "agentId": message.agent_id,
        "previousAgentId": message.previous_agent_id,
        "at": message.sent_at,
    }


def typing_frame(conversation_id: str, principal: Principal) -> dict[str, Any]:
    """``typing``: relayed to the other participants' connections, never stored."""
    return {"type": "typing", "conversationId": conversation_id,
            "userId": principal.user_id, "role": principal.role}


def read_frame(conversation_id: str, principal: Principal, seq: int) -> dict[str, Any]:
    """``read``: a participant's cumulative read cursor moved to ``seq``."""
    return {"type": "read", "conversationId": conversation_id,
            "userId": principal.user_id, "role": principal.role, "seq": seq}


# ------------------------------------------------------------------- delivery


def delivery_targets(
    recipients: Iterable[str],
    connections: Mapping[str, Iterable[ConnectionRecord]],
    origin_connection_id: str | None,
) -> list[ConnectionRecord]:
    """The connections a message frame goes to.

    Every open connection of every recipient, the sender's other devices
    included, except the connection the message came from. Acknowledged
    cursors are not consulted: a copy a client already has is dropped by
    its seq rule, which costs one push instead of a read per recipient.
    """
    return [conn for user_id in recipients for conn in connections.get(user_id, ())
            if conn.connection_id != origin_connection_id]


# --------------------------------------------------------------------- frames


def accepted_frame(conversation_id: str, message_id: str, seq: int, sent_at: str,
                   duplicate: bool) -> dict[str, Any]:
    """``accepted``: the message is durably stored and will reach every participant."""
    return {
        "type": "accepted",
        "conversationId": conversation_id,
        "messageId": message_id,
        "seq": seq,
        "sentAt": sent_at,
        "duplicate": duplicate,
    }


def error_frame(err: OnceChatError) -> dict[str, Any]:
    """``error`` with the protocol code; messageId when the error concerns one."""
    frame: dict[str, Any] = {"type": "error", "code": err.code, "message": err.client_message}
    if err.message_id is not None:
        frame["messageId"] = err.message_id
    return frame


def resumed_frame(latest: Mapping[str, int]) -> dict[str, Any]:
    """``resumed``: the replay is over; the latest seq of each conversation."""
    return {"type": "resumed", "conversations": dict(latest)}


def encode(frame: Mapping[str, Any]) -> str:
    """Compact JSON text of a frame."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
