"""Fixes to moto's DynamoDB that the local cloud needs at scale.

moto's ``TransactWriteItems`` backs up every table it touches with
``copy.deepcopy`` before writing, to roll back on a cancelled transaction.
That costs time and memory proportional to the table: every message send
(one transaction that includes the messages table) gets slower as the
table grows, so a long local run slows to a crawl.

``transact_write_items`` below keeps moto's observable behaviour (the same
validation, the same CancellationReasons) but checks every condition first
and writes only when all hold, undoing the items it already wrote if a
write itself fails. It relies on the server running one request at a time
(infra/local/motoserver.py), which makes check-then-write atomic, as a
transaction is on AWS.

moto's SQS recomputes the approximate message counts (a pass over every
message of the queue, several times) whenever any code reads a queue's
attributes, which ``SendMessage`` does three times; a backlog makes every
send slower. ``cache_approximate_counts`` keeps each count for up to
``COUNT_TTL_S``: AWS documents these counts as approximate and eventually
consistent, so a reader cannot tell the difference.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.sqs.models import Queue

_OPS = ("ConditionCheck", "Put", "Delete", "Update")


def _key_of(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        return dict(op["Key"])
    table = backend.get_table(op["TableName"])
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    return {name: op["Item"][name] for name in names}


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """All conditions are checked before anything is written; all writes or none."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    plan: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []
    reasons: list[tuple[Any, Any, Any]] = []
    touched: set[tuple[str, str]] = set()
    for entry in transact_items:
        if len(entry) != 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        if op_type not in _OPS:
            raise ValueError("Unsupported transaction operation")
        key = _key_of(self, op_type, op)
        identity = (op["TableName"], json.dumps(key, sort_keys=True))
        if identity in touched:  # AWS refuses two operations on one item
            raise MultipleTransactionsException()
        touched.add(identity)
        current = self.get_item(op["TableName"], key)
        condition = op.get("ConditionExpression")
        holds = condition is None or get_filter_expression(
            condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        ).expr(current)
        if holds:
            reasons.append((None, None, None))
        else:
            old = None
            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                old = current.to_json()["Attributes"]
            reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
        plan.append((op_type, op, key, current))
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)

    undo: list[tuple[str, dict[str, Any], Any]] = []
    try:
        for op_type, op, key, current in plan:
            name = op["TableName"]
            if op_type == "ConditionCheck":
                continue
            undo.append((name, key, copy.deepcopy(current)))
            if op_type == "Put":
                self.put_item(name, op["Item"])
            elif op_type == "Delete":
                self.delete_item(name, key)
            else:
                self.update_item(name, key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=op.get("ExpressionAttributeNames"),
                                 expression_attribute_values=op.get("ExpressionAttributeValues"))
    except Exception:
        for name, key, previous in reversed(undo):
            if previous is None:
                self.delete_item(name, key)
            else:
                self.put_item(name, previous.to_json()["Attributes"])
        raise


COUNT_TTL_S = 0.5
_COUNTS = ("approximate_number_of_messages", "approximate_number_of_messages_not_visible",
           "approximate_number_of_messages_delayed")


def _cached_count(name: str, original: property) -> property:
    def count(queue: Queue) -> Any:
        now = time.monotonic()
        cache = queue.__dict__.setdefault("_local_cloud_counts", {})
        hit = cache.get(name)
        if hit is not None and now - hit[0] < COUNT_TTL_S:
            return hit[1]
        value = original.fget(queue)  # type: ignore[misc]
        cache[name] = (now, value)
        return value
    return property(count)


def cache_approximate_counts() -> None:
    """Keep moto's SQS approximate counts for ``COUNT_TTL_S``."""
    for name in _COUNTS:
        original = getattr(Queue, name)
        if isinstance(original, property):
            setattr(Queue, name, _cached_count(name, original))


def apply() -> None:
    """Install the patches in this process (the moto server's)."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    cache_approximate_counts()
