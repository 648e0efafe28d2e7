"""The participants table: memberships and their cursors."""

from __future__ import annotations

from collections.abc import Sequence

from chalicelib.models import Participant
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    Item,
    _backend,
    _from_item,
    _n,
    _s,
)
from chalicelib.storage.dynamodb.conditions import (
    CURSOR_BEHIND,
    MEMBERSHIP_EXISTS,
    all_of,
)


class ParticipantsTable(DynamoBase):
    """chalicelib.storage.base.ParticipantStore on DynamoDB."""

    def add_participant(self, participant: Participant) -> None:
        args = _participant_update_args(
            self._config.participants_table,
            participant.user_id,
            participant.conversation_id,
            participant.role,
            participant.ack_seq,
            participant.joined_at,
        )
        with _backend("add_participant"):
            self._db.update_item(**args)

    def get_participant(self, user_id: str, conversation_id: str) -> Participant | None:
        with _backend("get_participant"):
            item = self._get(
                self._config.participants_table,
                {"userId": _s(user_id), "conversationId": _s(conversation_id)},
            )
        return _from_item(Participant, item) if item else None

    def participants_at(self, keys: Sequence[tuple[str, str]]) -> list[Participant]:
        with _backend("participants_at"):
            items = self._batch_get(self._config.participants_table, [
                {"userId": _s(u), "conversationId": _s(c)} for u, c in dict.fromkeys(keys)],
                consistent=True)
            return [_from_item(Participant, item) for item in items]

    def participants_of_user(self, user_id: str) -> list[Participant]:
        with _backend("participants_of_user"):
            items = list(
                self._query_all(
                    TableName=self._config.participants_table,
                    KeyConditionExpression="userId = :u",
                    ExpressionAttributeValues={":u": _s(user_id)},
                    ConsistentRead=True,
                )
            )
        return [_from_item(Participant, item) for item in items]

    def participants_of_conversation(self, conversation_id: str) -> list[Participant]:
        with _backend("participants_of_conversation"):
            items = list(
                self._query_all(
                    TableName=self._config.participants_table,
                    IndexName="byConversation",  # KEYS_ONLY: cursor moves never rewrite it
                    KeyConditionExpression="conversationId = :c",
                    ExpressionAttributeValues={":c": _s(conversation_id)},
                )
            )
            keys = [{"userId": i["userId"], "conversationId": i["conversationId"]} for i in items]
            found = [_from_item(Participant, i) for i in self._batch_get(
                self._config.participants_table, keys, consistent=True)]
        return sorted(found, key=lambda p: p.user_id)

    def advance_ack(self, user_id: str, conversation_id: str, seq: int) -> bool:
        return self._advance(user_id, conversation_id, "ackSeq", seq, "advance_ack")

    def advance_read(self, user_id: str, conversation_id: str, seq: int) -> bool:
        return self._advance(user_id, conversation_id, "readSeq", seq, "advance_read")

    def _advance(self, user_id: str, conversation_id: str, attr: str, seq: int, op: str) -> bool:
        # Cursors arrive out of order (two connections, a retried frame): the
        # condition (absent or below :seq) makes a cursor move forward only,
        # and attribute_exists keeps it from creating a membership.
        with _backend(op):
            return self._conditional(
                "update",
                TableName=self._config.participants_table,
                Key={"userId": _s(user_id), "conversationId": _s(conversation_id)},
                UpdateExpression="SET #cursor = :seq",
                ConditionExpression=all_of(MEMBERSHIP_EXISTS, CURSOR_BEHIND),
                ExpressionAttributeNames={"#cursor": attr},
                ExpressionAttributeValues={":seq": _n(seq)},
            ).written


def _participant_upsert(table: str, user_id: str, conversation_id: str, role: str, joined_at: str) -> Item:
    """A transaction item that creates a membership (ack 0) or keeps an existing one as is."""
    return {"Update": _participant_update_args(table, user_id, conversation_id, role, 0, joined_at)}


def _participant_update_args(
    table: str, user_id: str, conversation_id: str, role: str, ack_seq: int, joined_at: str
) -> Item:
    # if_not_exists on every field: a new membership gets them, an existing
    # one (and its ack cursor) is left exactly as it was.
    return {
        "TableName": table,
        "Key": {"userId": _s(user_id), "conversationId": _s(conversation_id)},
        "UpdateExpression": (
            "SET #role = if_not_exists(#role, :role),"
            " #ackSeq = if_not_exists(#ackSeq, :ack),"
            " #joinedAt = if_not_exists(#joinedAt, :joined)"
        ),
        "ExpressionAttributeNames": {"#role": "role", "#ackSeq": "ackSeq", "#joinedAt": "joinedAt"},
        "ExpressionAttributeValues": {
            ":role": _s(role),
            ":ack": _n(ack_seq),
            ":joined": _s(joined_at),
        },
    }
