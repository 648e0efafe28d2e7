"""DynamoDB storage: chalicelib.storage.Storage on the tables of infra/template.yaml.

Items carry the camelCase wire names of the record models (one generic
mapper, ``_to_item`` / ``_from_item``); the key design is documented at the
top of infra/template.yaml.

Races are settled by conditional writes and transactions, each explained
next to its condition expression. Expected outcomes are reported with the
signals of chalicelib.errors or with return values; every other botocore
error is wrapped once into OnceChatError.

Retries: throttling and transient 5xx errors are retried by botocore's
"standard" retry mode (chalicelib.aws.RETRY_CONFIG) when this module builds
the client. A transaction cancelled because another transaction touched the
same item at the same time (reason ``TransactionConflict``) is retried here a
few times with a short jittered backoff, because retrying it is what reveals
the real outcome (counter moved, duplicate, ...).
"""

from __future__ import annotations

import base64
import json
import random
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from chalicelib import aws
from chalicelib.config import Config
from chalicelib.core import Transition, void_message
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateMessage,
    DuplicateRequest,
    NotFound,
    OnceChatError,
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

Item = dict[str, Any]
M = TypeVar("M", bound=BaseModel)

#: Cancellation reasons worth retrying the same transaction for.
_RETRYABLE_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
_TRANSACTION_ATTEMPTS = 4
_BACKOFF_BASE_SECONDS = 0.02


# ----------------------------------------------------------------- mapping


def _serialize(value: Any) -> dict[str, Any]:
    """One attribute value in DynamoDB's typed JSON (only str and int occur)."""
    if isinstance(value, bool):  # bool is an int: keep it out of N
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def _deserialize(value: Mapping[str, Any]) -> Any:
    """The Python value of one typed attribute (numbers are integers here)."""
    if "S" in value:
        return value["S"]
    if "N" in value:
        number = Decimal(value["N"])
        return int(number) if number == number.to_integral_value() else float(number)
    if "BOOL" in value:
        return value["BOOL"]
    if "NULL" in value:
        return None
    raise TypeError(f"unexpected attribute type {sorted(value)}")


def _to_item(record: BaseModel, **extra: Any) -> Item:
    """A record as an item: camelCase names, None fields omitted.

    Omitting None matters: ``agentId`` is a GSI key (byAgent) and a GSI key
    attribute cannot be NULL; an absent one keeps the item out of the index.
    """
    data = record.model_dump(by_alias=True, mode="json", exclude_none=True)
    data.update(extra)
    return {name: _serialize(value) for name, value in data.items()}


def _from_item(model: type[M], item: Mapping[str, Any]) -> M:
    """The record stored in an item (extra attributes such as idemKey are ignored)."""
    return model.model_validate({name: _deserialize(value) for name, value in item.items()})


#: The byActivity index of the conversations table is spread over this many
#: partition keys, so that a busy minute does not write one hot GSI partition.
ACTIVITY_SHARDS = 16

#: ``activeAt`` is the latest activity rounded down to this many seconds, so
#: a conversation's index entry moves once a period, not once a message.
ACTIVITY_PERIOD_S = 60

#: Keys of the sweeper's watermark item in the limits table.
SWEEP_MARK_KEY = "sweep#mark"


def _activity(conversation_id: str, now_epoch: int) -> dict[str, int]:
    """The attributes that put a conversation in the KEYS_ONLY ``byActivity`` index.

    Set with every seq a conversation takes (a reservation, a lifecycle
    event). Writing the value it already has writes no index item, so a
    conversation costs one index write when it enters and two (the move)
    per period in which it is active, whatever its message rate: the
    sweeper reads the conversations active since its watermark
    (chalicelib/services/outbox.py) instead of an index entry per message.
    """
    return {"activeShard": zlib.crc32(conversation_id.encode()) % ACTIVITY_SHARDS,
            "activeAt": now_epoch - now_epoch % ACTIVITY_PERIOD_S}


def _user_key(user_id: str) -> str:
    """The key of a user's item in the connections table (connection ids never contain '#')."""
    return f"user#{user_id}"


def _conn_attr(connection_id: str) -> str:
    """The attribute of the user item that holds one of the user's connections."""
    return f"c#{connection_id}"


def _open_holders(conv: Conversation) -> dict[str, str | None]:
    """The keys of the sparse open-conversation indexes (None: out of that index).

    A customer holds their conversation until it is closed; an agent holds
    it while it is active and assigned to them.
    """
    return {"openCustomerId": conv.customer_id if conv.status != "closed" else None,
            "openAgentId": conv.agent_id if conv.status == "active" else None}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _backend(operation: str) -> Iterator[None]:
    """Wrap unexpected botocore errors once; oncechat's own errors pass through."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise OnceChatError(f"storage operation {operation} failed: {exc}") from exc


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, _BACKOFF_BASE_SECONDS * (2**attempt)))


class DynamoStorage:
    """chalicelib.storage.Storage on DynamoDB (tables named by Config)."""

    def __init__(self, config: Config, client: Any = None) -> None:
        self._config = config
        self._client = client

    @property
    def _db(self) -> Any:
        """The low-level dynamodb client, built on first use."""
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    # ------------------------------------------------------------- helpers
    def _get(self, table: str, key: Item) -> Item | None:
        response = self._db.get_item(TableName=table, Key=key, ConsistentRead=True)
        item: Item | None = response.get("Item")
        return item

    def _query_all(self, **kwargs: Any) -> Iterator[Item]:
        """Every item of a query, following LastEvaluatedKey."""
        while True:
            page = self._db.query(**kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def _update_unless_refused(self, **kwargs: Any) -> bool:
        """An ``UpdateItem`` whose failed condition is an answer, not an error: False then."""
        try:
            self._db.update_item(**kwargs)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def _put_unless(self, **kwargs: Any) -> tuple[bool, Item | None]:
        """A conditional ``PutItem`` whose failed condition is an answer: (refused, the item in the way)."""
        try:
            self._db.put_item(ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            return True, cast("Item | None", exc.response.get("Item"))
        return False, None

    def _batch_get(self, table: str, keys: Sequence[Item], consistent: bool) -> Iterator[Item]:
        """Every item at ``keys`` that exists (any order): 100 keys a BatchGetItem, unprocessed keys again."""
        for start in range(0, len(keys), 100):
            batch: dict[str, Any] = {"Keys": list(keys[start:start + 100])}
            if consistent:
                batch["ConsistentRead"] = True
            request: dict[str, Any] = {table: batch}
            while request:
                answer = self._db.batch_get_item(RequestItems=request)
                yield from answer.get("Responses", {}).get(table, [])
                request = answer.get("UnprocessedKeys") or {}

    def _transact(self, items: list[Item], operation: str) -> list[str] | None:
        """Run one transaction; None when it committed, else the cancellation codes.

        A cancellation caused only by concurrent transactions or throttling
        (retryable reasons, nothing failed a condition) is retried with a
        short jittered backoff; after the last attempt its codes are returned.
        The codes list has one entry per item ("None" for items that did not
        fail), or is empty when the backend gave no CancellationReasons.
        """
        reasons = self._transact_reasons(items, operation)
        return None if reasons is None else [str(r.get("Code", "None")) for r in reasons]

    def _transact_reasons(self, items: list[Item], operation: str) -> list[dict[str, Any]] | None:
        """``_transact``, returning the cancellation reasons themselves (with ALL_OLD items)."""
        reasons: list[dict[str, Any]] = []
        for attempt in range(_TRANSACTION_ATTEMPTS):
            try:
                self._db.transact_write_items(TransactItems=items)
                return None
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise OnceChatError(f"storage operation {operation} failed: {exc}") from exc
                reasons = [dict(r) for r in exc.response.get("CancellationReasons") or []]
            except BotoCoreError as exc:
                raise OnceChatError(f"storage operation {operation} failed: {exc}") from exc
            codes = {str(r.get("Code", "None")) for r in reasons}
            if "ConditionalCheckFailed" in codes or not (codes & _RETRYABLE_REASONS):
                return reasons
            if attempt + 1 < _TRANSACTION_ATTEMPTS:
                _backoff(attempt)
        return reasons

    # ---------------------------------------------------------- connections
    # A user's open connections are also kept on one item per user in the
    # connections table (key "user#<userId>", one attribute "c#<connectionId>"
    # per connection, holding the whole record), so the consumer reads every
    # recipient's connections with one strongly consistent BatchGetItem
    # instead of a Query per recipient on an eventually consistent index.
    # The connection's own item stays: frames look their connection up by
    # id, and its TTL bounds a record whose $disconnect never ran.

    def put_connection(self, conn: ConnectionRecord) -> None:
        with _backend("put_connection"):
            self._db.put_item(TableName=self._config.connections_table, Item=_to_item(conn))
            # Record first, then the user's list: a delivery that reads the list
            # before this write misses the new connection, which then resumes.
            self._db.update_item(
                TableName=self._config.connections_table,
                Key={"connectionId": _s(_user_key(conn.user_id))},
                UpdateExpression="SET #c = :conn, expiresAt = :exp",
                ExpressionAttributeNames={"#c": _conn_attr(conn.connection_id)},
                ExpressionAttributeValues={":conn": {"M": _to_item(conn)}, ":exp": _n(conn.expires_at)},
            )

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        with _backend("get_connection"):
            item = self._get(self._config.connections_table, {"connectionId": _s(connection_id)})
        return _from_item(ConnectionRecord, item) if item else None

    def delete_connection(self, connection_id: str, user_id: str | None = None) -> ConnectionRecord | None:
        # ALL_OLD returns the attributes this very delete removed: of two
        # racing deletes ($disconnect and a 410 in the consumer) only the one
        # that actually removed the item gets them; the other gets nothing.
        with _backend("delete_connection"):
            response = self._db.delete_item(
                TableName=self._config.connections_table,
                Key={"connectionId": _s(connection_id)},
                ReturnValues="ALL_OLD",
            )
            old = response.get("Attributes")
            removed = _from_item(ConnectionRecord, old) if old else None
            owner = removed.user_id if removed else user_id
            if owner is not None:
                self._update_unless_refused(
                    TableName=self._config.connections_table,
                    Key={"connectionId": _s(_user_key(owner))},
                    UpdateExpression="REMOVE #c",
                    # Never create an empty user item.
                    ConditionExpression="attribute_exists(connectionId)",
                    ExpressionAttributeNames={"#c": _conn_attr(connection_id)},
                )
        return removed

    def connections_of(self, user_id: str) -> list[ConnectionRecord]:
        return self.connections_of_users([user_id], consistent=True)[user_id]

    def connections_of_users(self, user_ids: Sequence[str],
                             consistent: bool = False) -> dict[str, list[ConnectionRecord]]:
        table = self._config.connections_table
        users = list(dict.fromkeys(user_ids))
        found: dict[str, list[ConnectionRecord]] = {user: [] for user in users}
        with _backend("connections_of_users"):
            keys = [{"connectionId": _s(_user_key(u))} for u in users]
            # Eventually consistent by default (half the read units): a
            # connection opened within the last second may be missing,
            # which every pusher allows for. A connection that opens after
            # a message was stored resumes on its own; one that opened just
            # before and missed the push has not acked, so the sweeper
            # pushes to it.
            for item in self._batch_get(table, keys, consistent=consistent):
                for name, value in item.items():
                    if name.startswith("c#"):
                        conn = _from_item(ConnectionRecord, value["M"])
                        found.setdefault(conn.user_id, []).append(conn)
        return {user: sorted(found[user], key=lambda c: c.connection_id) for user in users}

    # --------------------------------------------------------------- agents
    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        # One atomic update: the counter and the presence move together, and
        # activeCount is created at 0 (an item without the index's range key
        # is left out of GSI byPresence) and capacity at the default. An away
        # agent stays away: the condition tells the two cases apart, so a
        # concurrent status change is never overwritten by a stale read.
        names = {
            "#presence": "presence",
            "#updatedAt": "updatedAt",
            "#activeCount": "activeCount",
            "#capacity": "capacity",
            "#connections": "connections",
        }
        values = {":now": _s(now), ":zero": _n(0), ":one": _n(1), ":cap": _n(DEFAULT_CAPACITY),
                  ":away": _s("away")}
        common = (" #updatedAt = :now, #activeCount = if_not_exists(#activeCount, :zero),"
                  " #capacity = if_not_exists(#capacity, :cap) ADD #connections :one")
        with _backend("agent_connected"):
            for _ in range(16):
                new = self._conditional_agent_update(
                    agent_id, "SET #presence = :online," + common,
                    "attribute_not_exists(#presence) OR #presence <> :away",
                    names, values | {":online": _s("online")})
                if new is None:  # away: only count the connection
                    new = self._conditional_agent_update(
                        agent_id, "SET" + common, "#presence = :away", names, values)
                if new is not None:
                    return new
        raise OnceChatError(f"agent_connected({agent_id}) kept racing; giving up")

    def agent_disconnected(self, agent_id: str, now: str) -> AgentRecord | None:
        # A read-then-write ("connections - 1, offline if that is 0") would
        # race with a concurrent connect:
        #   t0 disconnect reads connections=1
        #   t1 connect: connections 1 -> 2, online
        #   t2 disconnect writes connections=0, offline   <- wrong: 1 is open
        # So each step is a conditional update on the value it assumes:
        #   a) connections = 1  -> ADD -1 and SET offline, in one update
        #      (never a moment with 0 connections but still online);
        #   b) connections > 1  -> ADD -1 only;
        #   c) neither matched: re-read; unknown agent -> None; already 0 ->
        #      SET offline with condition connections <= 0 (never below 0);
        #      otherwise the count moved under us: go round again.
        names = {"#connections": "connections", "#presence": "presence", "#updatedAt": "updatedAt"}
        last_one = (
            "SET #presence = :offline, #updatedAt = :now ADD #connections :minus",
            "#connections = :one",
            names,
            {":one": _n(1), ":minus": _n(-1), ":offline": _s("offline"), ":now": _s(now)},
        )
        one_of_many = (
            "SET #updatedAt = :now ADD #connections :minus",
            "#connections > :one",
            {"#connections": "connections", "#updatedAt": "updatedAt"},
            {":one": _n(1), ":minus": _n(-1), ":now": _s(now)},
        )
        already_zero = (
            "SET #presence = :offline, #updatedAt = :now, #connections = :zero",
            "attribute_exists(agentId) AND (attribute_not_exists(#connections) OR #connections <= :zero)",
            names,
            {":zero": _n(0), ":offline": _s("offline"), ":now": _s(now)},
        )
        with _backend("agent_disconnected"):
            for _ in range(16):
                for attempt in (last_one, one_of_many):
                    new = self._conditional_agent_update(agent_id, *attempt)
                    if new is not None:
                        return new
                current = self.get_agent(agent_id)
                if current is None:
                    return None
                if current.connections > 0:
                    continue  # the count moved between our attempts: go round again
                new = self._conditional_agent_update(agent_id, *already_zero)
                if new is not None:
                    return new
        raise OnceChatError(f"agent_disconnected({agent_id}) kept racing; giving up")

    def _conditional_agent_update(
        self, agent_id: str, update: str, condition: str, names: dict[str, str], values: Item
    ) -> AgentRecord | None:
        """The agent after a conditional update, or None when the condition failed."""
        try:
            response = self._db.update_item(
                TableName=self._config.agents_table,
                Key={"agentId": _s(agent_id)},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _from_item(AgentRecord, response["Attributes"])

    def set_agent_connections(self, agent_id: str, seen_updated_at: str, count: int, now: str) -> bool:
        # Conditional on updatedAt: every connect, disconnect and status
        # change rewrites it, so a correction computed from an older read
        # never overwrites what happened since.
        update = "SET #connections = :n, #updatedAt = :now"
        values: Item = {":n": _n(count), ":now": _s(now), ":seen": _s(seen_updated_at)}
        if count == 0:
            update += ", #presence = :offline"
            values[":offline"] = _s("offline")
        with _backend("set_agent_connections"):
            new = self._conditional_agent_update(
                agent_id, update, "#updatedAt = :seen",
                {"#connections": "connections", "#updatedAt": "updatedAt", "#presence": "presence"}
                if count == 0 else {"#connections": "connections", "#updatedAt": "updatedAt"},
                values)
        return new is not None

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with _backend("get_agent"):
            item = self._get(self._config.agents_table, {"agentId": _s(agent_id)})
        return _from_item(AgentRecord, item) if item else None

    def online_agents(self) -> list[AgentRecord]:
        # GSI byPresence is eventually consistent: an agent that just went
        # offline may still be listed. Harmless: assign_conversation re-checks
        # presence = online inside its transaction.
        with _backend("online_agents"):
            items = list(
                self._query_all(
                    TableName=self._config.agents_table,
                    IndexName="byPresence",
                    KeyConditionExpression="#presence = :online",
                    ExpressionAttributeNames={"#presence": "presence"},
                    ExpressionAttributeValues={":online": _s("online")},
                    ScanIndexForward=True,
                )
            )
        agents = [_from_item(AgentRecord, item) for item in items]
        # The index orders by activeCount only; ties are ordered by id here.
        return sorted(agents, key=lambda a: (a.active_count, a.agent_id))

    def list_agents(self) -> list[AgentRecord]:
        # A scan: the agents table holds one small item per agent.
        items: list[Item] = []
        kwargs: dict[str, Any] = {"TableName": self._config.agents_table, "ConsistentRead": True}
        with _backend("list_agents"):
            while True:
                page = self._db.scan(**kwargs)
                items.extend(page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted((_from_item(AgentRecord, i) for i in items), key=lambda a: a.agent_id)

    def set_agent_status(
        self, agent_id: str, presence: str | None, capacity: int | None, now: str
    ) -> AgentRecord:
        # One update; the fields not given keep their value (or get their
        # defaults on a new agent), so a concurrent connect is not undone.
        names = {"#updatedAt": "updatedAt", "#activeCount": "activeCount", "#capacity": "capacity",
                 "#connections": "connections", "#presence": "presence"}
        values: Item = {":now": _s(now), ":zero": _n(0)}
        sets = ["#updatedAt = :now", "#activeCount = if_not_exists(#activeCount, :zero)",
                "#connections = if_not_exists(#connections, :zero)"]
        if presence is None:
            sets.append("#presence = if_not_exists(#presence, :offline)")
            values[":offline"] = _s("offline")
        else:
            sets.append("#presence = :presence")
            values[":presence"] = _s(presence)
        if capacity is None:
            sets.append("#capacity = if_not_exists(#capacity, :cap)")
            values[":cap"] = _n(DEFAULT_CAPACITY)
        else:
            sets.append("#capacity = :cap")
            values[":cap"] = _n(capacity)
        with _backend("set_agent_status"):
            response = self._db.update_item(
                TableName=self._config.agents_table,
                Key={"agentId": _s(agent_id)},
                UpdateExpression="SET " + ", ".join(sets),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return _from_item(AgentRecord, response["Attributes"])

    # -------------------------------------------------------- conversations
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
                    "ConditionExpression": "attribute_not_exists(idemKey) OR expiresAt < :now",
                    "ExpressionAttributeValues": {":now": _n(now_epoch)},
                }
            })
        items += [
            {
                "Put": {
                    "TableName": self._config.conversations_table,
                    "Item": _to_item(conv, **{k: v for k, v in _open_holders(conv).items() if v}),
                    # Two creates of one id: exactly one succeeds.
                    "ConditionExpression": "attribute_not_exists(conversationId)",
                }
            },
            self._participant_upsert(
                conv.customer_id, conv.conversation_id, "customer", conv.created_at
            ),
        ]
        codes = self._transact(items, "create_conversation")
        if codes is None:
            return
        if request_key is not None and codes and codes[0] == "ConditionalCheckFailed":
            with _backend("create_conversation"):
                item = self._get(self._config.idempotency_table,
                                 {"idemKey": _s(_request_key(conv.customer_id, request_key))})
            if item is not None:
                raise DuplicateRequest(item["conversationId"]["S"])
            raise OnceChatError("create_conversation raced with an expiring request record")
        offset = 1 if request_key is not None else 0
        if codes and len(codes) > offset and codes[offset] == "ConditionalCheckFailed":
            raise Conflict(f"conversation {conv.conversation_id} exists")
        if not codes and self.get_conversation(conv.conversation_id) is not None:
            raise Conflict(f"conversation {conv.conversation_id} exists")
        raise OnceChatError(f"create_conversation cancelled: {codes}")

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
        condition = "#status = :bstatus AND #lastSeq = :blast"
        if before.agent_id is None:
            condition += " AND attribute_not_exists(#agentId)"
        else:
            condition += " AND #agentId = :bagent"
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
                }
            },
            {
                "Put": {
                    "TableName": self._config.messages_table,
                    "Item": _to_item(message),
                    "ConditionExpression": "attribute_not_exists(seq)",
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
                "ConditionExpression": "attribute_exists(agentId)",
            }
            if change.delta > 0:
                agent_update["ConditionExpression"] = (
                    "#presence = :online AND #activeCount < #capacity")
                agent_update["ExpressionAttributeNames"] |= {"#presence": "presence",
                                                             "#capacity": "capacity"}
                agent_update["ExpressionAttributeValues"][":online"] = _s("online")
            items.append({"Update": agent_update})
        if transition.join is not None:
            items.append(self._participant_upsert(transition.join, after.conversation_id, "agent",
                                                  after.updated_at))
        codes = self._transact(items, "apply_transition")
        if codes is None:
            return
        if not codes:
            raise OnceChatError("apply_transition cancelled without CancellationReasons")
        failed = [code == "ConditionalCheckFailed" for code in codes]
        if failed[0]:
            if self.get_conversation(before.conversation_id) is None:
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

    # ------------------------------------------------------------- messages
    def reserve_seq(self, conversation_id: str, sender: Principal, now_ms: int) -> Conversation:
        # One UpdateItem, never a retry: DynamoDB applies concurrent updates
        # of one item one after the other, so N racing sends get N distinct
        # seqs in N requests (an optimistic "lastSeq = :expected" loses all
        # but one racer per round and collapses under a burst).
        #
        # Condition: attribute_exists AND status <> closed AND <sender holds it>
        #   The sender is checked here, atomically with the reservation: an
        #   agent transferred away a moment ago cannot reserve a seq. A closed
        #   conversation reserves nothing (its customer's send reopens it
        #   first, through a lifecycle step).
        # reservedAt: the time of the latest reservation; a seq that stays
        #   empty after the sweep grace belongs to a send that died (fill_hole).
        # activeShard, activeAt: the byActivity index, for the sweeper; the
        #   same value as last time (within a minute) writes no index item.
        holder = "customerId" if sender.role == "customer" else "agentId"
        active = _activity(conversation_id, now_ms // 1000)
        with _backend("reserve_seq"):
            try:
                answer = self._db.update_item(
                    TableName=self._config.conversations_table,
                    Key={"conversationId": _s(conversation_id)},
                    UpdateExpression=("SET lastSeq = lastSeq + :one, reservedAt = :now,"
                                      " activeShard = :shard, activeAt = :active"),
                    ConditionExpression=(
                        "attribute_exists(conversationId) AND #status <> :closed"
                        " AND #holder = :sender"
                    ),
                    ExpressionAttributeNames={"#status": "status", "#holder": holder},
                    ExpressionAttributeValues={
                        ":one": _n(1), ":now": _n(now_ms), ":closed": _s("closed"),
                        ":sender": _s(sender.user_id), ":shard": _n(active["activeShard"]),
                        ":active": _n(active["activeAt"])},
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
                old = cast("Item | None", exc.response.get("Item"))
                raise ReservationRefused(
                    _from_item(Conversation, old) if old
                    else self.get_conversation(conversation_id)) from None
        return _from_item(Conversation, answer["Attributes"])

    def claim_message_id(self, idem: IdempotencyRecord, now_epoch: int) -> None:
        # attribute_not_exists(idemKey) OR expiresAt < :now
        #   A retry, or a racing duplicate (the client resent after a timeout
        #   while the first send was still running):
        #     t0 A reserves 5           t1 B reserves 6
        #     t2 A claims 5             t3 B fails here -> DuplicateMessage
        #   B answers with A's seq (ALL_OLD returns A's record: no read) and
        #   leaves 6 void (fill_hole). An expired record (TTL deletes late, up
        #   to ~48 h) counts as absent, as the interface says.
        with _backend("claim_message_id"):
            refused, old = self._put_unless(
                TableName=self._config.idempotency_table,
                Item=_to_item(idem, idemKey=idem.key),
                ConditionExpression="attribute_not_exists(idemKey) OR expiresAt < :now",
                ExpressionAttributeValues={":now": _n(now_epoch)},
            )
        if refused:
            raise DuplicateMessage(idem.key, _from_item(IdempotencyRecord, old) if old else None)

    def put_message(self, message: MessageRecord) -> None:
        # attribute_not_exists(seq): the slot is this sender's by reservation
        # (and its messageId's by claim). It is taken only by a twin send of
        # the same claim (a retry that found the slot empty and stored the
        # same message) or by a void, when a reader found it empty past the
        # sweep grace (this send took longer than any send may). ALL_OLD
        # tells the two apart without a read. Never an overwrite.
        with _backend("put_message"):
            refused, old = self._put_unless(
                TableName=self._config.messages_table,
                Item=_to_item(message),
                ConditionExpression="attribute_not_exists(seq)",
            )
        if refused:
            raise SequenceConflict(message.conversation_id,
                                   _from_item(MessageRecord, old) if old else None)

    def move_claim(self, idem: IdempotencyRecord, from_seq: int) -> bool:
        # seq = :from: of two sends moving the same claim off a void seq,
        # one wins; the other finds the claim moved and answers from it.
        with _backend("move_claim"):
            refused, _ = self._put_unless(
                TableName=self._config.idempotency_table,
                Item=_to_item(idem, idemKey=idem.key),
                ConditionExpression="seq = :from",
                ExpressionAttributeValues={":from": _n(from_seq)},
            )
        return not refused

    def fill_hole(self, conversation_id: str, seq: int, now_epoch: int) -> MessageRecord:
        # attribute_not_exists(seq): a void never overwrites a message. When
        # the slot was filled meanwhile (the send was only slow), that
        # message is what the slot holds, and it is returned.
        void = void_message(conversation_id, seq, now_epoch)
        with _backend("fill_hole"):
            try:
                self._db.put_item(
                    TableName=self._config.messages_table,
                    Item=_to_item(void),
                    ConditionExpression="attribute_not_exists(seq)",
                )
                return void
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
        stored = self.get_message(conversation_id, seq)
        if stored is None:  # cannot happen: a message is never deleted but by TTL
            raise OnceChatError(f"slot {conversation_id}#{seq} neither empty nor filled")
        return stored

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

    def active_conversations(self, since: int) -> list[str]:
        # byActivity is a KEYS_ONLY GSI (eventually consistent, lagging by
        # about a second): the sweeper asks for a window that ended a grace
        # ago. activeAt is rounded down to the period, so the query starts
        # at the period that holds ``since``.
        start = since - since % ACTIVITY_PERIOD_S
        found: set[str] = set()
        with _backend("active_conversations"):
            for shard in range(ACTIVITY_SHARDS):
                for item in self._query_all(
                    TableName=self._config.conversations_table,
                    IndexName="byActivity",
                    KeyConditionExpression="activeShard = :s AND activeAt >= :a",
                    ExpressionAttributeValues={":s": _n(shard), ":a": _n(start)},
                ):
                    found.add(item["conversationId"]["S"])
        return sorted(found)

    def get_sweep_mark(self) -> int | None:
        with _backend("get_sweep_mark"):
            item = self._get(self._config.limits_table, {"limitKey": _s(SWEEP_MARK_KEY)})
        return int(item["mark"]["N"]) if item else None

    def set_sweep_mark(self, mark: int) -> None:
        with _backend("set_sweep_mark"):
            self._update_unless_refused(
                TableName=self._config.limits_table,
                Key={"limitKey": _s(SWEEP_MARK_KEY)},
                UpdateExpression="SET mark = :m",
                # Never back: two sweeps racing leave the later mark.
                ConditionExpression="attribute_not_exists(mark) OR mark < :m",
                ExpressionAttributeValues={":m": _n(mark)},
            )

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

    # ------------------------------------------------ participants & cursors
    def _participant_upsert(self, user_id: str, conversation_id: str, role: str, joined_at: str) -> Item:
        """A transaction item that creates a membership (ack 0) or keeps an existing one as is."""
        return {"Update": self._participant_update_args(user_id, conversation_id, role, 0, joined_at)}

    def _participant_update_args(
        self, user_id: str, conversation_id: str, role: str, ack_seq: int, joined_at: str
    ) -> Item:
        # if_not_exists on every field: a new membership gets them, an existing
        # one (and its ack cursor) is left exactly as it was.
        return {
            "TableName": self._config.participants_table,
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

    def add_participant(self, participant: Participant) -> None:
        args = self._participant_update_args(
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

    def conversations_at(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        with _backend("conversations_at"):
            return self._conversations_at(
                [{"conversationId": _s(cid)} for cid in conversation_ids])

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
            try:
                self._db.update_item(
                    TableName=self._config.participants_table,
                    Key={"userId": _s(user_id), "conversationId": _s(conversation_id)},
                    UpdateExpression="SET #cursor = :seq",
                    ConditionExpression=(
                        "attribute_exists(userId) AND"
                        " (attribute_not_exists(#cursor) OR #cursor < :seq)"),
                    ExpressionAttributeNames={"#cursor": attr},
                    ExpressionAttributeValues={":seq": _n(seq)},
                )
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
        return True

    # ---------------------------------------------------------- rate limits
    def take_tokens(self, buckets: Sequence[tuple[str, int]], expires_at: int) -> bool:
        # One transaction of counters: every bucket counts the hit, or, when
        # one is full, none does (a refused request costs no budget). Each
        # counter expires through the table's TTL on expiresAt; its key names
        # its window, so an expired one that TTL has not removed yet is never
        # read again.
        codes = self._transact(
            [
                {
                    "Update": {
                        "TableName": self._config.limits_table,
                        "Key": {"limitKey": _s(key)},
                        "UpdateExpression": "SET expiresAt = :exp ADD hits :one",
                        "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
                        "ExpressionAttributeValues": {
                            ":exp": _n(expires_at), ":one": _n(1), ":limit": _n(limit)},
                    }
                }
                for key, limit in buckets
            ],
            "take_tokens",
        )
        if codes is None:
            return True
        if "ConditionalCheckFailed" in codes:
            return False
        raise OnceChatError(f"rate limit check failed: {codes}")


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
