"""The limits table: rate-limit counters."""

from __future__ import annotations

from collections.abc import Sequence

from chalicelib.errors import OnceChatError
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    _n,
    _s,
)
from chalicelib.storage.dynamodb.conditions import BUCKET_HAS_ROOM


class LimitsTable(DynamoBase):
    """chalicelib.storage.base.LimitStore on DynamoDB."""

    def take_tokens(self, buckets: Sequence[tuple[str, int]], expires_at: int) -> bool:
        # One transaction of counters: every bucket counts the hit, or, when
        # one is full, none does (a refused request costs no budget). Each
        # counter expires through the table's TTL on expiresAt; its key names
        # its window, so an expired one that TTL has not removed yet is never
        # read again.
        reasons = self._transact(
            [
                {
                    "Update": {
                        "TableName": self._config.limits_table,
                        "Key": {"limitKey": _s(key)},
                        "UpdateExpression": "SET expiresAt = :exp ADD hits :one",
                        "ConditionExpression": BUCKET_HAS_ROOM,
                        "ExpressionAttributeValues": {
                            ":exp": _n(expires_at), ":one": _n(1), ":limit": _n(limit)},
                    }
                }
                for key, limit in buckets
            ],
            "take_tokens",
        )
        if reasons is None:
            return True
        if any(r.failed_condition for r in reasons):
            return False
        raise OnceChatError(f"rate limit check failed: {[r.code for r in reasons]}")
