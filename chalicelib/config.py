"""The one configuration object, built from the environment.

Nothing else in oncechat reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.errors import ConfigurationError

#: The documented development secret of the ``local`` stage. Never used elsewhere.
LOCAL_JWT_SECRET = "oncechat-local-development-secret"


@dataclass(frozen=True)
class Config:
    """Settings of one deployment stage."""

    stage: str
    jwt_secret: str
    conversations_table: str
    messages_table: str
    idempotency_table: str
    connections_table: str
    participants_table: str
    agents_table: str
    limits_table: str
    delivery_queue_name: str
    connection_ttl_seconds: int = 3 * 3600
    idempotency_ttl_seconds: int = 24 * 3600
    max_body_bytes: int = 16 * 1024
    page_size: int = 100
    resume_max_messages: int = 2000
    append_max_attempts: int = 64
    sweep_grace_seconds: int = 30
    #: Most messages one sweep re-enqueues (a busier window is finished by the next sweep).
    sweep_batch: int = 10_000
    #: A closed conversation reopens when its customer writes within this window.
    reopen_window_seconds: int = 24 * 3600
    #: Rate limits: fixed windows of ``rate_window_seconds``.
    rate_window_seconds: int = 10
    rate_user_sends: int = 100
    rate_connection_sends: int = 60
    rate_connection_typing: int = 20
    rate_user_requests: int = 30
    #: 0 keeps messages forever; N > 0 lets a message expire N days after it was sent.
    message_retention_days: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build the config for the stage named by ``STAGE`` (default ``local``).

        Raises ConfigurationError when a stage other than ``local`` has no
        ``JWT_SECRET``: such a stage refuses to run its handlers.
        """
        env = os.environ if env is None else env
        stage = env.get("STAGE", "local")
        secret = env.get("JWT_SECRET", "")
        if not secret:
            if stage != "local":
                raise ConfigurationError(f"JWT_SECRET is not configured for stage {stage!r}")
            secret = LOCAL_JWT_SECRET
        prefix = env.get("RESOURCE_PREFIX", f"oncechat-{stage}")

        def name(var: str, suffix: str) -> str:
            return env.get(var) or f"{prefix}-{suffix}"

        def number(var: str, default: int, allow_zero: bool = False) -> int:
            raw = env.get(var)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{var} must be an integer, got {raw!r}") from exc
            if value < 0 or (value == 0 and not allow_zero):
                raise ConfigurationError(f"{var} must be positive, got {value}")
            return value

        return cls(
            stage=stage,
            jwt_secret=secret,
            conversations_table=name("CONVERSATIONS_TABLE", "conversations"),
            messages_table=name("MESSAGES_TABLE", "messages"),
            idempotency_table=name("IDEMPOTENCY_TABLE", "idempotency"),
            connections_table=name("CONNECTIONS_TABLE", "connections"),
            participants_table=name("PARTICIPANTS_TABLE", "participants"),
            agents_table=name("AGENTS_TABLE", "agents"),
            limits_table=name("LIMITS_TABLE", "limits"),
            delivery_queue_name=delivery_queue_name(env),
            connection_ttl_seconds=number("CONNECTION_TTL_SECONDS", 3 * 3600),
            idempotency_ttl_seconds=number("IDEMPOTENCY_TTL_SECONDS", 24 * 3600),
            max_body_bytes=number("MAX_BODY_BYTES", 16 * 1024),
            page_size=number("PAGE_SIZE", 100),
            resume_max_messages=number("RESUME_MAX_MESSAGES", 2000),
            sweep_grace_seconds=number("SWEEP_GRACE_SECONDS", 30),
            reopen_window_seconds=number("REOPEN_WINDOW_SECONDS", 24 * 3600),
            rate_window_seconds=number("RATE_WINDOW_SECONDS", 10),
            rate_user_sends=number("RATE_USER_SENDS", 100),
            rate_connection_sends=number("RATE_CONNECTION_SENDS", 60),
            rate_connection_typing=number("RATE_CONNECTION_TYPING", 20),
            rate_user_requests=number("RATE_USER_REQUESTS", 30),
            message_retention_days=number("MESSAGE_RETENTION_DAYS", 0, allow_zero=True),
        )


def delivery_queue_name(env: Mapping[str, str] | None = None) -> str:
    """The delivery queue's name, needed when app.py is imported (``chalice package``).

    Unlike Config.from_env it does not require the stage's secret.
    """
    env = os.environ if env is None else env
    stage = env.get("STAGE", "local")
    prefix = env.get("RESOURCE_PREFIX", f"oncechat-{stage}")
    return env.get("DELIVERY_QUEUE_NAME") or f"{prefix}-delivery.fifo"
