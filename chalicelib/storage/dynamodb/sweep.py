"""What the sweeper reads and writes: the byActivity index and its watermark."""

from __future__ import annotations

from chalicelib.storage.dynamodb.common import (
    ACTIVITY_PERIOD_S,
    ACTIVITY_SHARDS,
    DynamoBase,
    _backend,
    _n,
    _s,
)
from chalicelib.storage.dynamodb.conditions import MARK_BEHIND


#: Keys of the sweeper's watermark item in the limits table.
SWEEP_MARK_KEY = "sweep#mark"


class SweepTable(DynamoBase):
    """chalicelib.storage.base.SweepStore on DynamoDB."""

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
            self._conditional(
                "update",
                TableName=self._config.limits_table,
                Key={"limitKey": _s(SWEEP_MARK_KEY)},
                UpdateExpression="SET mark = :m",
                ConditionExpression=MARK_BEHIND,  # never back: the later of two racing sweeps stays
                ExpressionAttributeValues={":m": _n(mark)},
            )
