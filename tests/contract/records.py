"""Small builders of valid records for the contract tests."""

from __future__ import annotations

from typing import Any

from chalicelib.models import (
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Participant,
    Principal,
    Role,
    Status,
)

T0 = "2026-01-01T00:00:00.000Z"
FAR_FUTURE = 4_000_000_000  # epoch seconds, year 2096
NOW_EPOCH = 1_800_000_000


def at(minute: int) -> str:
    """An ISO timestamp ``minute`` minutes after T0 (sortable as a string)."""
    return f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00.000Z"


def conversation(
    conversation_id: str = "c1",
    customer_id: str = "cust1",
    *,
    status: Status = "waiting",
    created_at: str = T0,
    last_seq: int = 0,
) -> Conversation:
    return Conversation(
        conversation_id=conversation_id,
        customer_id=customer_id,
        status=status,
        created_at=created_at,
        updated_at=created_at,
        last_seq=last_seq,
    )


def message(
    seq: int,
    conversation_id: str = "c1",
    *,
    message_id: str | None = None,
    sender_id: str = "cust1",
    body: str = "hello",
) -> MessageRecord:
    return MessageRecord(
        conversation_id=conversation_id,
        seq=seq,
        message_id=message_id or f"m{seq}",
        sender_id=sender_id,
        sender_role="customer",
        body=body,
        sent_at=T0,
    )


def idem_for(msg: MessageRecord, *, expires_at: int = FAR_FUTURE) -> IdempotencyRecord:
    return IdempotencyRecord(
        sender_id=msg.sender_id,
        conversation_id=msg.conversation_id,
        message_id=msg.message_id,
        payload_hash=f"hash-{msg.message_id}",
        seq=msg.seq,
        sent_at=msg.sent_at,
        expires_at=expires_at,
    )


def connection(connection_id: str, user_id: str = "cust1", role: Role = "customer") -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=connection_id,
        user_id=user_id,
        role=role,
        connected_at=T0,
        domain_name="abc123.execute-api.us-east-1.amazonaws.com",
        stage="dev",
        expires_at=FAR_FUTURE,
    )


def participant(user_id: str, conversation_id: str = "c1", *, role: Role = "customer", ack_seq: int = 0) -> Participant:
    return Participant(
        user_id=user_id, conversation_id=conversation_id, role=role, ack_seq=ack_seq, joined_at=T0
    )


def reserve(storage: Any, conversation_id: str, sender_id: str = "cust1", *,
            role: Role = "customer", now_ms: int = NOW_EPOCH * 1000) -> int:
    """Reserve the next seq as ``sender_id`` (who must hold the conversation); return it."""
    conv = storage.reserve_seq(conversation_id, Principal(user_id=sender_id, role=role), now_ms)
    return int(conv.last_seq)


def store(storage: Any, msg: MessageRecord, idem: IdempotencyRecord | None = None,
          now_epoch: int = NOW_EPOCH) -> None:
    """What a send does: reserve the next seq (which must be ``msg.seq``), then store there.

    A sender other than the conversation's customer reserves as its agent.
    """
    conv = storage.get_conversation(msg.conversation_id)
    role: Role = "customer" if conv is None or conv.customer_id == msg.sender_id else "agent"
    seq = reserve(storage, msg.conversation_id, msg.sender_id, role=role, now_ms=now_epoch * 1000)
    assert seq == msg.seq, f"reserved {seq}, the test meant {msg.seq}"
    store_message(storage, msg, idem or idem_for(msg), now_epoch)


def store_message(storage: Any, msg: MessageRecord, idem: IdempotencyRecord, now_epoch: int) -> None:
    """The two writes of a send at a reserved seq: claim the messageId, then store the message."""
    storage.claim_message_id(idem, now_epoch)
    storage.put_message(msg)
