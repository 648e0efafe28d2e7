"""What every table group of the DynamoDB adapter shares: the item mapping, the
client, conditional writes and transactions, and the wrapping of backend errors."""

from __future__ import annotations

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
from chalicelib.errors import OnceChatError

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


class DynamoBase:
    """The client and the table names every table group works with."""

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
