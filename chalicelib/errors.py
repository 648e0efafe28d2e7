"""The one exception hierarchy of oncechat.

Every error a client can see maps, here and only here, to one protocol
error code (the ``code`` of an ``error`` frame or of a REST error body)
and one HTTP status::

    OnceChatError                 internal            500
    +-- BadRequest                bad_request         400
    +-- Unauthorized              unauthorized        401
    +-- Forbidden                 forbidden           403
    +-- NotFound                  not_found           404
    +-- Conflict                  conflict            409
    +-- PayloadTooLarge           payload_too_large   413
    +-- RateLimited               rate_limited        429
    +-- ConversationClosed        conversation_closed 409
    +-- ConfigurationError        internal            500

Storage adapters raise the internal signals at the bottom of this module
(never a botocore error), so the services catch one family of types.
"""

from __future__ import annotations

from typing import Any


class OnceChatError(Exception):
    """Root of every oncechat error; on its own it means ``internal``."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str = "internal error", *, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.message_id = message_id

    @property
    def client_message(self) -> str:
        """What a client is told. Server-side failures never show their detail
        (a botocore message, a table name): that stays in ``message`` for the logs."""
        if self.http_status < 500:
            return self.message
        if self.message_id is not None:
            return "internal error; retry with the same messageId"
        return "internal error; retry later"

    def to_body(self) -> dict[str, str]:
        """The REST error body: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.client_message}


class BadRequest(OnceChatError):
    """The frame or request is malformed or breaks a field rule."""

    code = "bad_request"
    http_status = 400


class Unauthorized(OnceChatError):
    """The token is missing, expired, badly signed or has wrong claims."""

    code = "unauthorized"
    http_status = 401


class Forbidden(OnceChatError):
    """The caller is authenticated but not allowed (not a participant, wrong role)."""

    code = "forbidden"
    http_status = 403


class NotFound(OnceChatError):
    """The conversation (or other resource) does not exist."""

    code = "not_found"
    http_status = 404


class Conflict(OnceChatError):
    """The request contradicts stored state (same messageId, different body)."""

    code = "conflict"
    http_status = 409


class PayloadTooLarge(OnceChatError):
    """The message body exceeds the size limit."""

    code = "payload_too_large"
    http_status = 413


class RateLimited(OnceChatError):
    """The caller is over its rate limit; nothing was stored."""

    code = "rate_limited"
    http_status = 429


class ConversationClosed(OnceChatError):
    """The conversation is closed and read-only."""

    code = "conversation_closed"
    http_status = 409


class ConfigurationError(OnceChatError):
    """The function is misconfigured (for example no JWT secret outside the local stage)."""

    @property
    def client_message(self) -> str:
        return "service not configured"


# --- internal signals between storage and services (never shown to clients) ---


class StorageSignal(Exception):
    """Base of the signals a storage adapter raises for expected races."""


class SequenceConflict(StorageSignal):
    """The conversation's counter moved since it was read, or a message slot is taken: re-read and retry.

    ``existing`` is what holds the slot, when the backend returned it with
    the failure (``put_message``).
    """

    def __init__(self, key: str, existing: Any = None) -> None:
        super().__init__(key)
        self.existing = existing


class DuplicateMessage(StorageSignal):
    """The idempotency record of this (sender, conversation, messageId) already exists.

    ``existing`` is that record when the backend returned it with the failure.
    """

    def __init__(self, key: str, existing: Any = None) -> None:
        super().__init__(key)
        self.existing = existing


class ReservationRefused(StorageSignal):
    """No seq was reserved: the conversation is missing (None), closed, or not the sender's.

    ``conversation`` is the conversation as it stood (None when absent), so
    the service tells the three apart without reading it again.
    """

    def __init__(self, conversation: Any) -> None:
        super().__init__(getattr(conversation, "conversation_id", None))
        self.conversation = conversation


class StaleConversation(StorageSignal):
    """A transition's condition failed: the conversation is no longer as it was read."""


class AgentUnavailable(StorageSignal):
    """An assignment's agent is not online or has no room left (capacity reached)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(agent_id)
        self.agent_id = agent_id


class DuplicateRequest(StorageSignal):
    """A request with this idempotency key was already carried out; ``existing_id`` is its result."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(existing_id)
        self.existing_id = existing_id


class ConnectionGone(Exception):
    """A push found the connection gone (HTTP 410): the frame was maybe delivered."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(connection_id)
        self.connection_id = connection_id
