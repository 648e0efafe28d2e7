"""The exceptions of the oncechat client SDK, rooted in one class.

::

    OnceChatClientError
    ├── AuthError            the token was refused (WebSocket handshake 401, REST 401)
    ├── Rejected             the server refused a request for good (``code``)
    │   └── SendRejected     ... a ``send``: the message is dropped from the outbox
    ├── ConnectionLost       reconnecting gave up (``max_attempts`` reached)
    ├── Closed               the client was closed (by ``close()``) before the result
    ├── ProtocolError        the server sent something that breaks docs/protocol.md
    └── StoreError           the persistent store is unusable (e.g. another user's file)

Catching ``OnceChatClientError`` catches everything the SDK raises on purpose.
"""

from __future__ import annotations


class OnceChatClientError(Exception):
    """Root of every exception the SDK raises."""


class AuthError(OnceChatClientError):
    """The server refused the token (HTTP 401). Never retried: a new token is needed."""


class Rejected(OnceChatClientError):
    """The server answered a request with a final error ``code`` (see docs/protocol.md)."""

    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class SendRejected(Rejected):
    """A ``send`` was refused for good (``conflict``, ``forbidden``, ``not_found``,
    ``bad_request``, ``payload_too_large``, ``conversation_closed``).

    The message is no longer in the outbox and will not be retried.
    """

    def __init__(self, code: str, message: str = "", message_id: str | None = None) -> None:
        super().__init__(code, message)
        self.message_id = message_id


class ConnectionLost(OnceChatClientError):
    """The connection could not be (re)established within ``max_attempts``."""


class Closed(OnceChatClientError):
    """The client was closed. Unaccepted messages stay in a persistent store, if any."""


class ProtocolError(OnceChatClientError):
    """The server sent something the protocol does not allow."""


class StoreError(OnceChatClientError):
    """The persistent store cannot be used (wrong user, unreadable file)."""
