"""DynamoDB storage: chalicelib.storage.Storage on the tables of infra/template.yaml.

Items carry the camelCase wire names of the record models (one generic
mapper, ``_to_item`` / ``_from_item``); the key design is documented at the
top of infra/template.yaml.

One module per table group (connections, agents, conversations, messages,
participants, sweep, limits), each a base of DynamoStorage over the client
and table names of common.DynamoBase.

Races are settled by conditional writes and transactions. The conditions
are named parts (conditions.py), each beside the race it settles; every
conditional write goes through one helper (``DynamoBase._conditional``)
whose refusal carries the item that failed the condition (ALL_OLD), so
nothing is read back. Expected outcomes are reported with the
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

from chalicelib.storage.dynamodb.agents import AgentsTable
from chalicelib.storage.dynamodb.common import (
    ACTIVITY_PERIOD_S,
    ACTIVITY_SHARDS,
)
from chalicelib.storage.dynamodb.connections import ConnectionsTable
from chalicelib.storage.dynamodb.conversations import ConversationsTable
from chalicelib.storage.dynamodb.limits import LimitsTable
from chalicelib.storage.dynamodb.messages import MessagesTable
from chalicelib.storage.dynamodb.participants import ParticipantsTable
from chalicelib.storage.dynamodb.sweep import SWEEP_MARK_KEY, SweepTable

__all__ = ["ACTIVITY_PERIOD_S", "ACTIVITY_SHARDS", "SWEEP_MARK_KEY", "DynamoStorage"]


class DynamoStorage(ConnectionsTable, AgentsTable, ConversationsTable, MessagesTable, ParticipantsTable,
                    SweepTable, LimitsTable):
    """chalicelib.storage.Storage on DynamoDB (tables named by Config), one table group per base."""
