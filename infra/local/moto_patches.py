"""Fixes to moto's DynamoDB that the local cloud needs at scale.

moto's ``TransactWriteItems`` backs up every table it touches with
``copy.deepcopy`` before writing, to roll back on a cancelled transaction.
That costs time and memory proportional to the table: every lifecycle step
(one transaction that also appends its system message to the messages
table) gets slower as the table grows, so a long local run slows to a crawl.

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

moto answers every ``Query`` by walking (and sorting) every item of the
table: a query on the table's own key keeps the items of the one partition,
a query on an index keeps the items whose index hash key matches. The app
queries tables and GSIs on its hot paths, so each request cost time
proportional to the table. ``index_queries`` hands moto's ``Table.query``
only the candidates it would have kept -- the partition's items, or the
items an index hash key value maps to -- in the order ``all_items`` would
have listed them; moto's own code then filters, sorts, paginates and
projects them as before, so the answers are the same. The map from index
hash key value to item keys is built on a table's first query of that
index and kept up to date by every path that writes items (``Table.put_item``
and ``delete_item``, which batch writes, transactions and PartiQL go
through, and ``DynamoDBBackend.update_item``, which changes items in place).
moto does not expire items by TTL, so no other path removes one.

moto's server routes every request by listing its own package directory
(``list_of_moto_modules``); ``cache_module_list`` lists it once. Each
request also lists the methods of its handler class
(``method_names_from_class``, an ``inspect.getmembers``); classes do not
change either, so ``cache_method_names`` lists each once.

moto's SQS long poll (``ReceiveMessage`` with ``WaitTimeSeconds``) loops
until it has a message to return, waiting between passes only while the
queue has no visible message at all. On a FIFO queue whose visible
messages all belong to groups with a message in flight, nothing can be
returned and yet there are visible messages, so each waiting poller spins
for its whole wait time, hogging the interpreter: with a few event source
pollers that was most of the server's time. ``pace_fifo_long_polls``
makes such a pass wait ``RECEIVE_RECHECK_S`` (or until a message is added)
before looking again; the poll still returns as soon as a message can be
received, within that interval.

moto answers DynamoDB's item operations through its generic response
serializer, which walks botocore's output shapes attribute by attribute
(every map of every item); with the server running one request at a time,
that was about a quarter of its time. The DynamoDB protocol is plain JSON
in exactly the shape moto's item results already have, so
``plain_json_item_results`` writes them with ``json.dumps`` (bytes as
base64, absent members left out), as the serializer would.

moto parses an ``UpdateItem``'s or a conditional write's expressions twice
per request with a pure-Python parser; ``cache_expression_parses`` keeps
each parse it made (a condition by its text, names and values, an update
expression by its text) and never one that failed.
"""

from __future__ import annotations

import base64
import copy
import functools
import inspect
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from moto import backends as moto_backends
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MultipleTransactionsException,
    ResourceNotFoundException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
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
                # None for absent names or values, as moto's own TransactWriteItems passes them
                # (its update_item is annotated with dicts only).
                self.update_item(name, key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=op.get("ExpressionAttributeNames"),  # type: ignore[arg-type]
                                 expression_attribute_values=op.get("ExpressionAttributeValues"))  # type: ignore[arg-type]
    except Exception:
        for name, key, previous in reversed(undo):
            if previous is None:
                self.delete_item(name, key)
            else:
                self.put_item(name, previous.to_json()["Attributes"])
        raise


COUNT_TTL_S = 0.5
#: The cache's time source (seconds); the tests replace it to move time themselves.
count_clock: Callable[[], float] = time.monotonic
_COUNTS = ("approximate_number_of_messages", "approximate_number_of_messages_not_visible",
           "approximate_number_of_messages_delayed")


def _cached_count(name: str, original: property) -> property:
    def count(queue: Queue) -> Any:
        now = count_clock()
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


_PATCHED = "_local_cloud_patched"
ItemKey = tuple[Any, Any]  # (hash DynamoType, range DynamoType or None)
_INDEXES = "_local_cloud_indexes"  # Table.__dict__ entry: {index name: HashIndex}
_UNHASHABLE = object()


def _bucket_of(value: DynamoType) -> Any:
    """What DynamoType equality compares (type and cast value), or _UNHASHABLE."""
    try:
        bucket = (value.type, value.cast_value)
        hash(bucket)
        return bucket
    except TypeError:
        return _UNHASHABLE


def _item_at(table: Table, key: ItemKey) -> Item | None:
    """The item stored under ``key``, without touching moto's defaultdict."""
    entry = table.items.get(key[0])
    if table.range_key_attr is not None:
        entry = entry.get(key[1]) if isinstance(entry, dict) else None
    return entry if isinstance(entry, Item) else None


def _all_items_order(item: Item) -> Any:
    """The sort key of moto's ``Table.all_items``."""
    return (item.hash_key, item.range_key) if item.range_key else item.hash_key


class HashIndex:
    """Item keys by the value of an index's (first) hash key attribute."""

    def __init__(self, table: Table, attr: str) -> None:
        self.attr = attr
        self.buckets: dict[Any, dict[ItemKey, None]] = {}  # dicts: insertion-ordered sets
        self.where: dict[ItemKey, Any] = {}
        for entry in list(table.items.values()):
            for item in (entry.values() if isinstance(entry, dict) else [entry]):
                if isinstance(item, Item):
                    self.add((item.hash_key, item.range_key), item)

    def add(self, key: ItemKey, item: Item | None) -> None:
        value = item.attrs.get(self.attr) if item is not None else None
        if value is None:
            return
        bucket = _bucket_of(value)
        self.buckets.setdefault(bucket, {})[key] = None
        self.where[key] = bucket

    def remove(self, key: ItemKey) -> None:
        bucket = self.where.pop(key, None)
        if bucket is None:
            return
        keys = self.buckets[bucket]
        del keys[key]
        if not keys:
            del self.buckets[bucket]

    def keys_for(self, value: DynamoType) -> list[ItemKey]:
        """Every item key whose attribute may equal ``value`` (unhashable values included)."""
        found = list(self.buckets.get(_bucket_of(value), ()))
        if _UNHASHABLE in self.buckets:
            found += self.buckets[_UNHASHABLE]
        return found


def _reindex(table: Table, key: ItemKey) -> None:
    """Bring every built index of ``table`` up to date with the item at ``key``."""
    indexes: dict[str, HashIndex] | None = table.__dict__.get(_INDEXES)
    if not indexes:
        return
    item = _item_at(table, key)
    for index in indexes.values():
        index.remove(key)
        index.add(key, item)


def _key_from(table: Table, attrs: dict[str, Any]) -> ItemKey | None:
    """The item key of a request's key or item attributes (DynamoDB JSON), if it has one."""
    try:
        hash_value = DynamoType(attrs[table.hash_key_attr])
        range_value = None
        if table.range_key_attr is not None:
            range_value = DynamoType(attrs[table.range_key_attr])
        hash((hash_value, range_value))
        return hash_value, range_value
    except (KeyError, TypeError, AttributeError):
        return None


def _hash_index(table: Table, index_name: str) -> HashIndex | None:
    """The (lazily built) map of ``index_name``, or None when moto must answer unaided."""
    index = next((i for i in table.all_indexes() if i.name == index_name), None)
    if index is None:
        return None
    hash_attrs = [k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"]
    if not hash_attrs:
        return None
    indexes: dict[str, HashIndex] = table.__dict__.setdefault(_INDEXES, {})
    built = indexes.get(index_name)
    if built is None or built.attr != hash_attrs[0]:  # new, or the index was redefined
        built = indexes[index_name] = HashIndex(table, hash_attrs[0])
    return built


def _query_candidates(table: Table, bound: inspect.BoundArguments) -> list[Item] | None:
    """A superset of the items moto's query keeps, in ``all_items`` order; None: let moto scan."""
    args = bound.arguments
    index_name = args.get("index_name")
    if index_name:
        index = _hash_index(table, index_name)
        if index is None:
            return None
        conditions = dict(args.get("hash_key_conditions") or [])
        if index.attr not in conditions:
            return None
        items = (_item_at(table, key) for key in index.keys_for(conditions[index.attr]))
        candidates = [item for item in items if item is not None]
    else:
        hash_key = args.get("hash_key")
        if hash_key is None:
            return None
        try:
            entry = table.items.get(hash_key)
        except TypeError:
            return None
        found = entry.values() if isinstance(entry, dict) else [entry]
        candidates = [item for item in found if isinstance(item, Item)]
    candidates.sort(key=_all_items_order)
    return candidates


_override = threading.local()  # (table, candidates) for the query running on this thread


def _all_items(original: Callable[[Table], list[Item]]) -> Callable[[Table], list[Item]]:
    @functools.wraps(original)
    def all_items(self: Table) -> list[Item]:
        pending = getattr(_override, "value", None)
        if pending is not None and pending[0] is self:
            _override.value = None
            candidates: list[Item] = pending[1]
            return candidates
        return original(self)
    return all_items


def _query(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def query(self: Table, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)
        candidates = _query_candidates(self, bound)
        if candidates is None:
            return original(self, *args, **kwargs)
        _override.value = (self, candidates)  # moto's query calls all_items() exactly once
        try:
            return original(self, *args, **kwargs)
        finally:
            _override.value = None
    return query


def _table_put_item(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def put_item(self: Table, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, item_attrs, *args, **kwargs)
        finally:
            if self.__dict__.get(_INDEXES):
                key = _key_from(self, item_attrs)
                if key is not None:
                    _reindex(self, key)
    return put_item


def _table_delete_item(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def delete_item(self: Table, hash_key: Any, range_key: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, hash_key, range_key, *args, **kwargs)
        finally:
            if self.__dict__.get(_INDEXES):
                _reindex(self, (hash_key, range_key if self.range_key_attr is not None else None))
    return delete_item


def _backend_update_item(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def update_item(self: DynamoDBBackend, table_name: str, key: dict[str, Any],
                    *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, table_name, key, *args, **kwargs)
        finally:  # the item may have changed in place, even when a later step failed
            try:
                table = self.get_table(table_name)
            except ResourceNotFoundException:  # moto has already answered this request's error
                table = None
            if table is not None and table.__dict__.get(_INDEXES):
                item_key = _key_from(table, key)
                if item_key is not None:
                    _reindex(table, item_key)
    return update_item



RECEIVE_RECHECK_S = 0.05


def _wait_for_messages(self: Queue, timeout: int) -> None:
    with self._messages_lock:
        if self.messages:  # visible, yet the pass took none: their FIFO groups are in flight
            self._messages_lock.wait(timeout=min(timeout, RECEIVE_RECHECK_S))
        else:
            self._messages_lock.wait_for(lambda: self.messages, timeout=timeout)


def pace_fifo_long_polls() -> None:
    """Long polls wait between passes even when the visible messages cannot be received yet."""
    if not getattr(Queue.wait_for_messages, _PATCHED, False):
        setattr(_wait_for_messages, _PATCHED, True)
        Queue.wait_for_messages = _wait_for_messages  # type: ignore[method-assign]


#: AWS remembers a FIFO deduplication id for five minutes, even after the
#: message was received and deleted (moto forgets it with the message).
DEDUP_WINDOW_MS = 5 * 60 * 1000


def _remember_dedup_ids(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def add_message(self: Queue, message: Any) -> None:
        dedup_id = message.deduplication_id if self.fifo_queue else None
        if dedup_id:
            now = int(message.sent_timestamp or time.time() * 1000)
            with self._messages_lock:
                seen: dict[str, int] = self.__dict__.setdefault("_oncechat_dedup", {})
                if len(seen) > 10_000:  # forget what left the window
                    for key in [k for k, t in seen.items() if now - t >= DEDUP_WINDOW_MS]:
                        del seen[key]
                first = seen.get(dedup_id)
                if first is not None and now - first < DEDUP_WINDOW_MS:
                    return  # for parity: accepted and dropped, as AWS does
                seen[dedup_id] = now
        original(self, message)
    return add_message


def remember_dedup_ids() -> None:
    """FIFO deduplication remembers ids for 5 minutes after a delete, as on AWS."""
    if not getattr(Queue.add_message, _PATCHED, False):
        patched = _remember_dedup_ids(Queue.add_message)
        setattr(patched, _PATCHED, True)
        Queue.add_message = patched  # type: ignore[method-assign]


def cache_module_list() -> None:
    """List moto's service modules once, not on every request.

    The server's dispatcher asks ``list_of_moto_modules`` (a directory
    listing and an ``isdir`` per entry) to route each request; the
    installed package does not change while the server runs.
    """
    if not getattr(moto_backends.list_of_moto_modules, _PATCHED, False):
        modules = tuple(moto_backends.list_of_moto_modules())

        def list_of_moto_modules() -> tuple[str, ...]:
            return modules
        setattr(list_of_moto_modules, _PATCHED, True)
        moto_backends.list_of_moto_modules = list_of_moto_modules


def index_queries() -> None:
    """Answer moto's queries from the partition or the index hash key (idempotent)."""
    for owner, name, wrap in ((Table, "query", _query), (Table, "all_items", _all_items),
                              (Table, "put_item", _table_put_item),
                              (Table, "delete_item", _table_delete_item),
                              (DynamoDBBackend, "update_item", _backend_update_item)):
        current = getattr(owner, name)
        if not getattr(current, _PATCHED, False):
            patched = wrap(current)
            setattr(patched, _PATCHED, True)
            setattr(owner, name, patched)


def cache_method_names() -> None:
    """List each handler class's methods once, not on every request (idempotent)."""
    from moto.core import responses as core_responses

    current = core_responses.method_names_from_class
    if not getattr(current, _PATCHED, False):
        cached = functools.lru_cache(maxsize=None)(current)

        def method_names_from_class(clazz: object) -> list[str]:
            return list(cached(clazz))
        setattr(method_names_from_class, _PATCHED, True)
        core_responses.method_names_from_class = method_names_from_class


#: DynamoDB operations whose results are items, counts, keys and capacity:
#: nothing the plain JSON writer cannot write as the shapes say.
PLAIN_JSON_OPERATIONS = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem",
    "BatchWriteItem", "TransactGetItems", "TransactWriteItems"})


def _wire(value: Any) -> Any:
    """A result in DynamoDB's JSON wire form: bytes as base64, None members left out."""
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _plain_json_result(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name not in PLAIN_JSON_OPERATIONS:
            return original(self, context)
        body = json.dumps(_wire(self.result), separators=(",", ":"))
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return execute_result


def plain_json_item_results() -> None:
    """Write DynamoDB item results as plain JSON, not through the generic serializer (idempotent)."""
    from moto.dynamodb.responses import DynamoResult

    current = DynamoResult.execute_result
    if not getattr(current, _PATCHED, False):
        patched = _plain_json_result(current)
        setattr(patched, _PATCHED, True)
        DynamoResult.execute_result = patched  # type: ignore[method-assign]


#: Parsed expressions kept at most (the app writes a few dozen distinct ones).
PARSE_CACHE_SIZE = 4096


def _bounded(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= PARSE_CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _cached_condition_parse(original: Callable[..., Any]) -> Callable[..., Any]:
    parsed: dict[tuple[str, str, str], tuple[Any, tuple[str, ...], tuple[str, ...]]] = {}

    @functools.wraps(original)
    def parse(self: Any) -> Any:
        if not self.condition_expression:
            return original(self)
        key = (self.condition_expression,
               json.dumps(self.expression_attribute_names, sort_keys=True),
               json.dumps(self.expression_attribute_values, sort_keys=True))
        hit = parsed.get(key)
        if hit is None:
            op = original(self)  # a parse error raises here, and is not kept
            _bounded(parsed, key, (op, tuple(self.expr_attr_names_found), tuple(self.expr_attr_values_found)))
            return op
        op, names, values = hit
        self.expr_attr_names_found.extend(names)
        self.expr_attr_values_found.extend(values)
        return op
    return parse


def _cached_update_parse(original: Callable[..., Any]) -> Callable[..., Any]:
    parsed: dict[str, Any] = {}

    def make(cls: Any, expression: str) -> Any:
        hit = parsed.get(expression)
        if hit is None:
            hit = original(expression)
            _bounded(parsed, expression, hit)
        return hit
    return make


def cache_expression_parses() -> None:
    """Parse each condition and update expression once, not twice a request (idempotent).

    moto parses an UpdateItem's or a conditional PutItem's expressions
    twice per request (once to check the names and values used, once to
    apply them), with a pure-Python lexer and parser: under load, a fifth
    of the server's time. A condition's parse is kept by its text, names
    and values (the tree holds the values, and evaluating it changes
    nothing); an update expression's by its text (the validator works on a
    deep copy of the tree). A parse that raises is not kept, so a bad
    expression gets the same error every time.
    """
    from moto.dynamodb.comparisons import ConditionExpressionParser
    # The module is '# type: ignore' as a whole in moto, so mypy sees none of its names.
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

    if not getattr(ConditionExpressionParser.parse, _PATCHED, False):
        patched = _cached_condition_parse(ConditionExpressionParser.parse)
        setattr(patched, _PATCHED, True)
        ConditionExpressionParser.parse = patched  # type: ignore[method-assign]
    current = UpdateExpressionParser.__dict__["make"]
    if not getattr(current.__func__, _PATCHED, False):
        make = _cached_update_parse(current.__func__.__get__(UpdateExpressionParser))
        setattr(make, _PATCHED, True)
        UpdateExpressionParser.make = classmethod(make)


def apply() -> None:
    """Install the patches in this process (the moto server's)."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    cache_approximate_counts()
    index_queries()
    cache_module_list()
    pace_fifo_long_polls()
    remember_dedup_ids()
    plain_json_item_results()
    cache_method_names()
    cache_expression_parses()
