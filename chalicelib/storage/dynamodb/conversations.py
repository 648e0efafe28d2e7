"""The conversations table and the lifecycle transactions across tables."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from chalicelib.core import Transition
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateRequest,
    NotFound,
    OnceChatError,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.models import (
    Conversation,
    Principal,
)
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    Item,
    _RETRYABLE_REASONS,
    _activity,
    _backend,
    _from_item,
    _n,
    _s,
    _to_item,
)
from chalicelib.storage.dynamodb.conditions import (
    AGENT_EXISTS,
    AGENT_HAS_ROOM,
    ASSIGNED_AS_READ,
    CONVERSATION_ABSENT,
    REQUEST_ABSENT_OR_EXPIRED,
    SLOT_EMPTY,
    STATUS_AND_SEQ_AS_READ,
    UNASSIGNED,
    all_of,
)
from chalicelib.storage.dynamodb.participants import _participant_upsert


class ConversationsTable(DynamoBase):
    """chalicelib.storage.base.ConversationStore on DynamoDB."""

    def create_conversation(
        self, conv: Conversation, request_key: str | None = None, expires_at: int = 0,
        now_epoch: int = 0,
    ) -> None:
        items: list[Item] = []
        if request_key is not None:
            # The customer's Idempotency-Key, in the idempotency table under
            # its own prefix: a retried POST fails this condition and is
            # answered with the conversation the first one created. An expired
            # record (TTL deletes late) counts as absent.
            items.append({
                "Put": {
                    "TableName": self._config.idempotency_table,
                    "Item": {
                        "idemKey": _s(_request_key(conv.customer_id, request_key)),
                        "conversationId": _s(conv.conversation_id),
                        "expiresAt": _n(expires_at),
                    },
                    "ConditionExpression": REQUEST_ABSENT_OR_EXPIRED,
                    "ExpressionAttributeValues": {":now": _n(now_epoch)},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            })
        items += [
            {
                "Put": {
                    "TableName": self._config.conversations_table,
                    "Item": _to_item(conv, **{k: v for k, v in _open_holders(conv).items() if v}),
                    "ConditionExpression": CONVERSATION_ABSENT,  # of two creates of one id, one succeeds
                }
            },
            _participant_upsert(
                self._config.participants_table, conv.customer_id, conv.conversation_id, "customer", conv.created_at
            ),
        ]
        reasons = self._transact(items, "create_conversation")
        if reasons is None:
            return
        if request_key is not None and reasons and reasons[0].failed_condition:
            # ALL_OLD: the unexpired request record that refused this one.
            old = reasons[0].old
            if old is not None:
                raise DuplicateRequest(old["conversationId"]["S"])
            raise OnceChatError("create_conversation refused by a request record it was not given")
        offset = 1 if request_key is not None else 0
        if len(reasons) > offset and reasons[offset].failed_condition:
            raise Conflict(f"conversation {conv.conversation_id} exists")
        # A backend that gives no CancellationReasons: only a read can tell.
        if not reasons and self.get_conversation(conv.conversation_id) is not None:
            raise Conflict(f"conversation {conv.conversation_id} exists")
        raise OnceChatError(f"create_conversation cancelled: {[r.code for r in reasons]}")

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with _backend("get_conversation"):
            item = self._get(self._config.conversations_table, {"conversationId": _s(conversation_id)})
        return _from_item(Conversation, item) if item else None

    def _conversations_at(self, keys: list[Item]) -> list[Conversation]:
        """The conversations named by index items, read from the table (consistent), in order.

        The conversation GSIs do not project ``lastSeq`` (byStatus is
        KEYS_ONLY, byCustomer/byAgent add only ``status``), so the message
        counter a send moves never rewrites an index item; a listing reads
        the page's items from the table instead, one BatchGetItem per 100.
        """
        table = self._config.conversations_table
        found: dict[str, Conversation] = {}
        ids = list(dict.fromkeys(k["conversationId"]["S"] for k in keys))
        for item in self._batch_get(table, [{"conversationId": _s(cid)} for cid in ids], consistent=True):
            conv = _from_item(Conversation, item)
            found[conv.conversation_id] = conv
        return [found[cid] for cid in ids if cid in found]

    def waiting_conversations(self, limit: int) -> list[Conversation]:
        # GSI byStatus is eventually consistent: a conversation assigned a
        # moment ago may still be listed as waiting. The page is re-read
        # from the table and what no longer waits is left out; the
        # assignment transaction re-checks status = waiting anyway.
        if limit <= 0:
            return []
        out: list[Conversation] = []
        kwargs: dict[str, Any] = {
            "TableName": self._config.conversations_table,
            "IndexName": "byStatus",  # status, queuedAt
            "KeyConditionExpression": "#status = :waiting",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":waiting": _s("waiting")},
            "ScanIndexForward": True,
            "Limit": limit,
        }
        with _backend("waiting_conversations"):
            while True:
                page = self._db.query(**kwargs)
                fresh = self._conversations_at(page.get("Items", []))
                out.extend(c for c in fresh if c.status == "waiting")
                last = page.get("LastEvaluatedKey")
                # Stop once `limit` are read and the boundary queuedAt is
                # passed, so ties at the boundary are ordered by id like the
                # other implementations (the index orders by queuedAt only).
                if not last or (len(out) >= limit and out[-1].queue_position_key[0]
                                > out[limit - 1].queue_position_key[0]):
                    break
                kwargs["ExclusiveStartKey"] = last
        out.sort(key=lambda c: c.queue_position_key)
        return out[:limit]

    def open_conversations_of(self, user: Principal) -> list[Conversation]:
        index, key = (("openByCustomer", "openCustomerId") if user.role == "customer"
                      else ("openByAgent", "openAgentId"))
        with _backend("open_conversations_of"):
            keys = list(self._query_all(
                TableName=self._config.conversations_table,
                IndexName=index,  # sparse, KEYS_ONLY: what the user holds now
                KeyConditionExpression="#k = :u",
                ExpressionAttributeNames={"#k": key},
                ExpressionAttributeValues={":u": _s(user.user_id)},
            ))
            return self._conversations_at(keys)

    def conversations_of(
        self, user_id: str, role: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Conversation], str | None]:
        index, key = ("byCustomer", "customerId") if role == "customer" else ("byAgent", "agentId")
        kwargs: dict[str, Any] = {
            "TableName": self._config.conversations_table,
            "IndexName": index,  # (customerId | agentId, createdAt)
            "KeyConditionExpression": "#k = :u",
            "ExpressionAttributeNames": {"#k": key},
            "ExpressionAttributeValues": {":u": _s(user_id)},
            "ScanIndexForward": False,
        }
        if status is not None:
            # A filter is applied after Limit, so pages may come back short:
            # keep reading until `limit` match or the index ends.
            kwargs["FilterExpression"] = "#status = :status"
            kwargs["ExpressionAttributeNames"]["#status"] = "status"
            kwargs["ExpressionAttributeValues"][":status"] = _s(status)
        if cursor is not None:
            kwargs["ExclusiveStartKey"] = _decode_cursor(cursor, {key, "conversationId", "createdAt"})
        out: list[Conversation] = []
        with _backend("conversations_of"):
            while len(out) <= limit:
                page = self._db.query(**kwargs, Limit=limit + 1 - len(out))
                out.extend(self._conversations_at(page.get("Items", [])))
                last = page.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        page_items, more = out[:limit], len(out) > limit
        if not more or not page_items:
            return page_items, None
        tail = page_items[-1]
        return page_items, _encode_cursor({
            key: _s(user_id), "conversationId": _s(tail.conversation_id),
            "createdAt": _s(tail.created_at)})

    def apply_transition(self, transition: Transition, now_epoch: int) -> None:
        # One transaction, so a lifecycle step is all or nothing:
        #   [0] the conversation: condition status, agentId and lastSeq as
        #       read. Two racing transitions (two closes, a close and a
        #       transfer, two dispatchers assigning one conversation): the
        #       first moves lastSeq, the second fails here and re-reads. A
        #       retried transition finds the state moved and is refused.
        #   [1] the system message at lastSeq + 1 (absent). The conversation
        #       enters byActivity ([0]), so the sweeper finds the event if
        #       we die before enqueuing it.
        #   [2..] each agent's activeCount: +1 only while the agent is online
        #       and activeCount < capacity, so racing assignments never take
        #       an agent over capacity; -1 frees a place.
        #   [last] the joining agent's membership (kept if it exists).
        before, after, message = transition.before, transition.after, transition.message
        names = {"#status": "status", "#lastSeq": "lastSeq", "#agentId": "agentId",
                 "#updatedAt": "updatedAt", "#closedAt": "closedAt", "#queuedAt": "queuedAt"}
        values: Item = {":bstatus": _s(before.status), ":blast": _n(before.last_seq),
                        ":status": _s(after.status), ":last": _n(after.last_seq),
                        ":now": _s(after.updated_at)}
        sets = ["#status = :status", "#lastSeq = :last", "#updatedAt = :now",
                "activeShard = :ashard", "activeAt = :aat"]
        active = _activity(before.conversation_id, now_epoch)
        values |= {":ashard": _n(active["activeShard"]), ":aat": _n(active["activeAt"])}
        removes = []
        if before.agent_id is None:
            condition = all_of(STATUS_AND_SEQ_AS_READ, UNASSIGNED)
        else:
            condition = all_of(STATUS_AND_SEQ_AS_READ, ASSIGNED_AS_READ)
            values[":bagent"] = _s(before.agent_id)
        for attr, value in (("#agentId", after.agent_id), ("#closedAt", after.closed_at),
                            ("#queuedAt", after.queued_at)):
            if value is None:
                removes.append(attr)
            else:
                placeholder = ":" + attr[1:]
                sets.append(f"{attr} = {placeholder}")
                values[placeholder] = _s(value)
        if after.queued_at is None:  # the queue key is kept for the byStatus index
            removes.remove("#queuedAt")
        # The sparse openByCustomer / openByAgent indexes list what a user
        # holds now (resume reads them instead of every membership ever).
        for attr, value in _open_holders(after).items():
            names[f"#{attr}"] = attr
            if value is None:
                removes.append(f"#{attr}")
            else:
                sets.append(f"#{attr} = :{attr}")
                values[f":{attr}"] = _s(value)
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        items: list[Item] = [
            {
                "Update": {
                    "TableName": self._config.conversations_table,
                    "Key": {"conversationId": _s(before.conversation_id)},
                    "UpdateExpression": update,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    # The conversation as it was tells NotFound from stale.
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "Put": {
                    "TableName": self._config.messages_table,
                    "Item": _to_item(message),
                    "ConditionExpression": SLOT_EMPTY,
                }
            },
        ]
        for change in transition.agents:
            agent_update: Item = {
                "TableName": self._config.agents_table,
                "Key": {"agentId": _s(change.agent_id)},
                "UpdateExpression": "SET #updatedAt = :now ADD #activeCount :delta",
                "ExpressionAttributeNames": {"#updatedAt": "updatedAt", "#activeCount": "activeCount"},
                "ExpressionAttributeValues": {":now": _s(after.updated_at), ":delta": _n(change.delta)},
                "ConditionExpression": AGENT_EXISTS,
            }
            if change.delta > 0:
                agent_update["ConditionExpression"] = AGENT_HAS_ROOM
                agent_update["ExpressionAttributeNames"] |= {"#presence": "presence",
                                                             "#capacity": "capacity"}
                agent_update["ExpressionAttributeValues"][":online"] = _s("online")
            items.append({"Update": agent_update})
        if transition.join is not None:
            items.append(_participant_upsert(self._config.participants_table, transition.join,
                                             after.conversation_id, "agent", after.updated_at))
        reasons = self._transact(items, "apply_transition")
        if reasons is None:
            return
        if not reasons:
            raise OnceChatError("apply_transition cancelled without CancellationReasons")
        codes = [r.code for r in reasons]
        failed = [r.failed_condition for r in reasons]
        if failed[0]:
            if reasons[0].old is None:
                raise NotFound(f"conversation {before.conversation_id} not found")
            raise StaleConversation(before.conversation_id)
        if failed[1]:
            raise SequenceConflict(before.conversation_id)
        for change, agent_failed in zip(transition.agents, failed[2:], strict=False):
            if agent_failed:
                raise AgentUnavailable(change.agent_id)
        if set(codes) & _RETRYABLE_REASONS:
            raise StaleConversation(before.conversation_id)  # still racing: re-read and retry
        raise OnceChatError(f"apply_transition cancelled: {codes}")

    def conversations_at(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        with _backend("conversations_at"):
            return self._conversations_at(
                [{"conversationId": _s(cid)} for cid in conversation_ids])


def _open_holders(conv: Conversation) -> dict[str, str | None]:
    """The keys of the sparse open-conversation indexes (None: out of that index).

    A customer holds their conversation until it is closed; an agent holds
    it while it is active and assigned to them.
    """
    return {"openCustomerId": conv.customer_id if conv.status != "closed" else None,
            "openAgentId": conv.agent_id if conv.status == "active" else None}


def _request_key(customer_id: str, key: str) -> str:
    """The idempotency-table key of a customer's POST /conversations Idempotency-Key."""
    return f"create#{customer_id}#{key}"


def _encode_cursor(key: Item) -> str:
    """An opaque page cursor: the index position of the page's last item."""
    raw = json.dumps({k: v["S"] for k, v in key.items()}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, names: set[str]) -> Item:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("cursor is not one this API returned") from None
    if not isinstance(data, dict) or set(data) != names or not all(
            isinstance(v, str) for v in data.values()):
        raise BadRequest("cursor is not one this API returned")
    return {k: _s(v) for k, v in data.items()}
