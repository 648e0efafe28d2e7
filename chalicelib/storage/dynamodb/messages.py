"""The messages and idempotency tables: seqs, claims, message slots."""

from __future__ import annotations

from typing import Any

from chalicelib.core import void_message
from chalicelib.errors import (
    DuplicateMessage,
    OnceChatError,
    ReservationRefused,
    SequenceConflict,
)
from chalicelib.models import (
    Conversation,
    IdempotencyRecord,
    MessageRecord,
    Principal,
    idempotency_key,
)
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    _activity,
    _backend,
    _from_item,
    _n,
    _s,
    _to_item,
)
from chalicelib.storage.dynamodb.conditions import (
    CLAIM_ABSENT_OR_EXPIRED,
    CLAIM_AT_SEQ,
    CONVERSATION_EXISTS,
    NOT_CLOSED,
    SENDER_HOLDS,
    SLOT_EMPTY,
    all_of,
)


class MessagesTable(DynamoBase):
    """chalicelib.storage.base.MessageStore on DynamoDB."""

    def reserve_seq(self, conversation_id: str, sender: Principal, now_ms: int) -> Conversation:
        # One UpdateItem, never a retry: DynamoDB applies concurrent updates
        # of one item one after the other, so N racing sends get N distinct
        # seqs in N requests (an optimistic "lastSeq = :expected" loses all
        # but one racer per round and collapses under a burst).
        #
        # Condition: the conversation exists, is not closed, and the sender
        #   holds it (see NOT_CLOSED and SENDER_HOLDS).
        # reservedAt: the time of the latest reservation; a seq that stays
        #   empty after the sweep grace belongs to a send that died (fill_hole).
        # activeShard, activeAt: the byActivity index, for the sweeper; the
        #   same value as last time (within a minute) writes no index item.
        holder = "customerId" if sender.role == "customer" else "agentId"
        active = _activity(conversation_id, now_ms // 1000)
        with _backend("reserve_seq"):
            outcome = self._conditional(
                "update",
                TableName=self._config.conversations_table,
                Key={"conversationId": _s(conversation_id)},
                UpdateExpression=("SET lastSeq = lastSeq + :one, reservedAt = :now,"
                                  " activeShard = :shard, activeAt = :active"),
                ConditionExpression=all_of(CONVERSATION_EXISTS, NOT_CLOSED, SENDER_HOLDS),
                ExpressionAttributeNames={"#status": "status", "#holder": holder},
                ExpressionAttributeValues={
                    ":one": _n(1), ":now": _n(now_ms), ":closed": _s("closed"),
                    ":sender": _s(sender.user_id), ":shard": _n(active["activeShard"]),
                    ":active": _n(active["activeAt"])},
                ReturnValues="ALL_NEW",
            )
        if not outcome.written or outcome.attributes is None:
            # ALL_OLD: the conversation as it was, or None when there is none.
            raise ReservationRefused(_from_item(Conversation, outcome.old) if outcome.old else None)
        return _from_item(Conversation, outcome.attributes)

    def claim_message_id(self, idem: IdempotencyRecord, now_epoch: int) -> None:
        # CLAIM_ABSENT_OR_EXPIRED: a duplicate answers with the first claim's
        # seq, from the record ALL_OLD returns (timeline beside the condition).
        with _backend("claim_message_id"):
            outcome = self._conditional(
                "put",
                TableName=self._config.idempotency_table,
                Item=_to_item(idem, idemKey=idem.key),
                ConditionExpression=CLAIM_ABSENT_OR_EXPIRED,
                ExpressionAttributeValues={":now": _n(now_epoch)},
            )
        if not outcome.written:
            raise DuplicateMessage(idem.key, _from_item(IdempotencyRecord, outcome.old) if outcome.old else None)

    def put_message(self, message: MessageRecord) -> None:
        # SLOT_EMPTY: the slot is this sender's by reservation; what holds it
        # otherwise (a twin send's message, or a void) comes back with the
        # refusal (ALL_OLD), without a read. Never an overwrite.
        with _backend("put_message"):
            outcome = self._conditional(
                "put",
                TableName=self._config.messages_table,
                Item=_to_item(message),
                ConditionExpression=SLOT_EMPTY,
            )
        if not outcome.written:
            raise SequenceConflict(message.conversation_id,
                                   _from_item(MessageRecord, outcome.old) if outcome.old else None)

    def move_claim(self, idem: IdempotencyRecord, from_seq: int) -> bool:
        # CLAIM_AT_SEQ: of two sends moving the same claim off a void seq,
        # one wins; the other finds the claim moved and answers from it.
        with _backend("move_claim"):
            return self._conditional(
                "put",
                TableName=self._config.idempotency_table,
                Item=_to_item(idem, idemKey=idem.key),
                ConditionExpression=CLAIM_AT_SEQ,
                ExpressionAttributeValues={":from": _n(from_seq)},
            ).written

    def fill_hole(self, conversation_id: str, seq: int, now_epoch: int) -> MessageRecord:
        # SLOT_EMPTY: a void never overwrites a message. When
        # the slot was filled meanwhile (the send was only slow), that
        # message is what the slot holds (ALL_OLD: no read), and it is returned.
        void = void_message(conversation_id, seq, now_epoch)
        with _backend("fill_hole"):
            outcome = self._conditional(
                "put",
                TableName=self._config.messages_table,
                Item=_to_item(void),
                ConditionExpression=SLOT_EMPTY,
            )
        if outcome.written:
            return void
        if outcome.old is None:  # cannot happen: a refusal means the slot holds an item
            raise OnceChatError(f"slot {conversation_id}#{seq} neither empty nor filled")
        return _from_item(MessageRecord, outcome.old)

    def get_idempotency(
        self, sender_id: str, conversation_id: str, message_id: str, now_epoch: int
    ) -> IdempotencyRecord | None:
        key = idempotency_key(sender_id, conversation_id, message_id)
        with _backend("get_idempotency"):
            item = self._get(self._config.idempotency_table, {"idemKey": _s(key)})
        if not item:
            return None
        record = _from_item(IdempotencyRecord, item)
        # TTL deletes late: an expired record may still be stored.
        return None if record.expires_at < now_epoch else record

    def get_message(self, conversation_id: str, seq: int) -> MessageRecord | None:
        with _backend("get_message"):
            item = self._get(
                self._config.messages_table,
                {"conversationId": _s(conversation_id), "seq": _n(seq)},
            )
        return _from_item(MessageRecord, item) if item else None

    def messages_after(self, conversation_id: str, after: int, limit: int) -> list[MessageRecord]:
        return self._message_range(conversation_id, ">", after, limit, "messages_after")

    def messages_before(self, conversation_id: str, before: int, limit: int) -> list[MessageRecord]:
        # Read newest first from `before` down, then hand them back in seq order.
        return self._message_range(conversation_id, "<", before, limit, "messages_before")[::-1]

    def _message_range(self, conversation_id: str, op: str, bound: int, limit: int,
                       operation: str) -> list[MessageRecord]:
        """Up to ``limit`` messages with ``seq op bound``, nearest to the bound first."""
        if limit <= 0:
            return []
        out: list[MessageRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self._config.messages_table,
            "KeyConditionExpression": f"conversationId = :c AND seq {op} :bound",
            "ExpressionAttributeValues": {":c": _s(conversation_id), ":bound": _n(bound)},
            "ConsistentRead": True,
            "ScanIndexForward": op == ">",
        }
        with _backend(operation):
            # A page stops at `Limit` items or 1 MB, whichever comes first:
            # keep reading until `limit` messages or the end.
            while len(out) < limit:
                page = self._db.query(**kwargs, Limit=limit - len(out))
                out.extend(_from_item(MessageRecord, item) for item in page.get("Items", []))
                last = page.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        return out[:limit]
