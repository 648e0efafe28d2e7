"""Clients of the oncechat protocol v1 (docs/protocol.md).

``OnceChatClient`` (client.sdk) is the SDK for apps: reconnects, outbox,
exactly-once inbox, acks, optional SQLite persistence (docs/client.md).
``connect``/``Client`` (client.protocol) is a thin single-connection client
for tests and scripts.
"""

from client.core import Accepted, Backoff, Inbox, Message, Outbox
from client.errors import (AuthError, Closed, ConnectionLost, OnceChatClientError, ProtocolError, Rejected,
                           SendRejected, StoreError)
from client.protocol import Client, ErrorFrame, connect
from client.sdk import ConnectionState, Conversation, Event, OnceChatClient
from client.store import MemoryStore, SqliteStore, Store

__all__ = [
                           "Accepted",
                           "AuthError",
                           "Backoff",
                           "Client",
                           "Closed",
                           "ConnectionLost",
                           "ConnectionState",
                           "Conversation",
                           "ErrorFrame",
                           "Event",
                           "Inbox",
                           "MemoryStore",
                           "Message",
                           "OnceChatClient",
                           "OnceChatClientError",
                           "Outbox",
                           "ProtocolError",
                           "Rejected",
                           "SendRejected",
                           "SqliteStore",
                           "Store",
                           "StoreError",
                           "connect",
]
