"""What every table group of the DynamoDB adapter shares: the item mapping, the
client, conditional writes and transactions, and the wrapping of backend errors."""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from chalicelib import aws
from chalicelib.config import Config
from chalicelib.errors import OnceChatError

if TYPE_CHECKING:  # stubs only: Lambda has no stub packages at run time
    from mypy_boto3_dynamodb import DynamoDBClient

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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one conditional write did.

    ``written``: the condition held and the write happened; ``attributes``
    are then what ``ReturnValues`` asked for (None when it asked for none).
    Otherwise ``old`` is the item that failed the condition, as DynamoDB
    returned it (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), or None
    when there was no item: the answer a read-back would have given.
    """

    written: bool
    attributes: Item | None = None
    old: Item | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """The cancellation reason of one item of a transaction.

    ``code`` is "None" for an item that did not fail; ``old`` is the item
    that failed its condition when the transaction item asked for ALL_OLD.
    """

    code: str
    old: Item | None = None

    @property
    def failed_condition(self) -> bool:
        return self.code == "ConditionalCheckFailed"


def _reasons(exc: ClientError) -> list[Reason]:
    """The CancellationReasons of a cancelled transaction, one per item (empty when none were given)."""
    return [Reason(str(r.get("Code", "None")), cast("Item | None", r.get("Item")))
            for r in exc.response.get("CancellationReasons") or []]


class DynamoBase:
    """The client and the table names every table group works with."""

    def __init__(self, config: Config, client: DynamoDBClient | None = None) -> None:
        self._config = config
        self._client = client

    @property
    def _db(self) -> DynamoDBClient:
        """The low-level dynamodb client, built on first use."""
        if self._client is None:
            self._client = cast("DynamoDBClient", aws.client("dynamodb"))
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

    def _conditional(self, write: Literal["put", "update", "delete"], **request: Any) -> Outcome:
        """One conditional PutItem, UpdateItem or DeleteItem whose failed condition is an answer.

        Every conditional write goes through here: the refusal carries the
        item in the way (ALL_OLD), so no caller reads it back. Other errors
        propagate (callers wrap them once, with ``_backend``).
        """
        request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            if write == "put":
                attributes: Item | None = self._db.put_item(**request).get("Attributes")
            elif write == "update":
                attributes = self._db.update_item(**request).get("Attributes")
            else:
                attributes = self._db.delete_item(**request).get("Attributes")
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            return Outcome(written=False, old=cast("Item | None", exc.response.get("Item")))
        return Outcome(written=True, attributes=attributes)

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
                request = dict(answer.get("UnprocessedKeys") or {})

    def _transact(self, items: list[Item], operation: str) -> list[Reason] | None:
        """Run one transaction; None when it committed, else its cancellation reasons.

        A cancellation caused only by concurrent transactions or throttling
        (retryable reasons, nothing failed a condition) is retried with a
        short jittered backoff; after the last attempt its reasons are
        returned. The list has one reason per item, or is empty when the
        backend gave no CancellationReasons.
        """
        reasons: list[Reason] = []
        for attempt in range(_TRANSACTION_ATTEMPTS):
            try:
                self._db.transact_write_items(TransactItems=cast("Any", items))
                return None
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise OnceChatError(f"storage operation {operation} failed: {exc}") from exc
                reasons = _reasons(exc)
            except BotoCoreError as exc:
                raise OnceChatError(f"storage operation {operation} failed: {exc}") from exc
            codes = {r.code for r in reasons}
            if "ConditionalCheckFailed" in codes or not (codes & _RETRYABLE_REASONS):
                return reasons
            if attempt + 1 < _TRANSACTION_ATTEMPTS:
                _backoff(attempt)
        return reasons
