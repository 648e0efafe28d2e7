"""The connections table: connection records and each user's list of connections."""

from __future__ import annotations

from collections.abc import Sequence

from chalicelib.models import ConnectionRecord
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    _backend,
    _from_item,
    _n,
    _s,
    _to_item,
)
from chalicelib.storage.dynamodb.conditions import USER_ITEM_EXISTS


class ConnectionsTable(DynamoBase):
    """chalicelib.storage.base.ConnectionStore on DynamoDB."""

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
                self._conditional(
                    "update",
                    TableName=self._config.connections_table,
                    Key={"connectionId": _s(_user_key(owner))},
                    UpdateExpression="REMOVE #c",
                    ConditionExpression=USER_ITEM_EXISTS,  # never create an empty user item
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


def _user_key(user_id: str) -> str:
    """The key of a user's item in the connections table (connection ids never contain '#')."""
    return f"user#{user_id}"


def _conn_attr(connection_id: str) -> str:
    """The attribute of the user item that holds one of the user's connections."""
    return f"c#{connection_id}"

