"""The one configuration object, built from the environment.

Nothing else in oncechat reads ``os.environ``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chalicelib.errors import ConfigurationError

#: The documented development secret of the ``local`` stage. Never used elsewhere.
LOCAL_JWT_SECRET = "oncechat-local-development-secret"
#: Stages that run only on a laptop or in CI (the local cloud); they may use the public secret.
LOCAL_STAGES = ("local", "chaos")
#: Shortest secret a function running on AWS accepts (HS256 wants at least 256 bits).
MIN_SECRET_LENGTH = 32
#: How long a secret read from SSM or Secrets Manager is reused before it is read again.
SECRET_CACHE_SECONDS = 300

SecretFetcher = Callable[[str, str], str]
_secret_cache: dict[tuple[str, str], tuple[float, str]] = {}
_secret_lock = threading.Lock()


def fetch_secret(kind: str, name: str) -> str:
    """The JWT secret from SSM Parameter Store (``ssm``) or Secrets Manager (``secretsmanager``).

    Cached in the process for SECRET_CACHE_SECONDS, so a warm Lambda
    container reads it once (and a rotation is picked up within minutes).
    """
    key = (kind, name)
    with _secret_lock:
        hit = _secret_cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < SECRET_CACHE_SECONDS:
            return hit[1]
    from chalicelib.aws import client

    try:
        if kind == "ssm":
            value = client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        else:
            value = client("secretsmanager").get_secret_value(SecretId=name)["SecretString"]
    except Exception as exc:  # never the botocore text to a client: ConfigurationError is 'internal'
        raise ConfigurationError(f"JWT secret {kind}:{name} could not be read: {exc}") from exc
    with _secret_lock:
        _secret_cache[key] = (time.monotonic(), value)
    return str(value)


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
    #: A resume that meets a seq still being stored waits up to this long (ms, in
    #: steps of 25 ms) for it before it stops short (0: stop at once).
    resume_hole_wait_ms: int = 100
    #: A closed conversation reopens when its customer writes within this window.
    reopen_window_seconds: int = 24 * 3600
    #: How long an agent may be offline (no connection left) before their active
    #: conversations go back to the queue; one set away or offline goes at once.
    agent_gone_grace_seconds: int = 60
    #: Rate limits: fixed windows of ``rate_window_seconds``.
    rate_window_seconds: int = 10
    rate_user_sends: int = 100
    rate_connection_sends: int = 60
    rate_connection_typing: int = 20
    rate_user_requests: int = 30
    #: In-process, per connection and per Lambda container (chalicelib/limits.py): frames
    #: of any kind, and acks, reads, resumes, typing per ``rate_window_seconds``.
    rate_connection_frames: int = 300
    rate_connection_acks: int = 120
    rate_connection_reads: int = 60
    rate_connection_resumes: int = 10
    #: Open connections one user may hold (checked at ``$connect``).
    max_connections_per_user: int = 10
    #: Longest lifetime (``exp - iat``) of a client token.
    token_max_lifetime_seconds: int = 24 * 3600
    #: Logging (chalicelib/observability.py): level, ``json`` or ``text``; EMF metrics on or off.
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_enabled: bool = True
    #: ``route``: the reply to a client's frame (``accepted``, ``error``) is the $default
    #: route's response (the stack declares a RouteResponse); ``push``: it is pushed
    #: through the management API, one more request per frame.
    reply_by_route: bool = False
    #: 0 keeps messages forever; N > 0 lets a message expire N days after it was sent.
    message_retention_days: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 secrets: SecretFetcher | None = None) -> Config:
        """Build the config for the stage named by ``STAGE`` (default ``local`` off AWS).

        Fails closed (ConfigurationError, so the handlers refuse to serve):
        a Lambda function (``AWS_LAMBDA_FUNCTION_NAME`` set) without ``STAGE``;
        a stage other than ``local``/``chaos`` without a secret, or with the
        public development secret; on Lambda, a secret shorter than 32
        characters. The secret comes from ``JWT_SECRET_PARAMETER`` (an SSM
        SecureString), ``JWT_SECRET_ID`` (a Secrets Manager secret) or
        ``JWT_SECRET``, in that order.
        """
        env = os.environ if env is None else env
        on_lambda = bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))
        stage = env.get("STAGE", "")
        if not stage:
            if on_lambda:
                raise ConfigurationError("STAGE is not configured")
            stage = "local"
        fetch = secrets or fetch_secret
        if env.get("JWT_SECRET_PARAMETER"):
            secret = fetch("ssm", env["JWT_SECRET_PARAMETER"])
        elif env.get("JWT_SECRET_ID"):
            secret = fetch("secretsmanager", env["JWT_SECRET_ID"])
        else:
            secret = env.get("JWT_SECRET", "")
        if stage not in LOCAL_STAGES:
            if not secret:
                raise ConfigurationError(f"no JWT secret is configured for stage {stage!r}")
            if secret == LOCAL_JWT_SECRET:
                raise ConfigurationError(f"stage {stage!r} may not use the public development secret")
        elif not secret:
            secret = LOCAL_JWT_SECRET
        if on_lambda and stage not in LOCAL_STAGES and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(f"the JWT secret must have at least {MIN_SECRET_LENGTH} characters")
        prefix = env.get("RESOURCE_PREFIX", f"oncechat-{stage}")

        def name(var: str, suffix: str) -> str:
            return env.get(var) or f"{prefix}-{suffix}"

        local = stage in LOCAL_STAGES

        def choice(var: str, default: str, allowed: tuple[str, ...]) -> str:
            value = (env.get(var) or default).strip()
            value = value.upper() if var == "LOG_LEVEL" else value.lower()
            if value not in allowed:
                raise ConfigurationError(f"{var} must be one of {', '.join(allowed)}, got {value!r}")
            return value

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
            agent_gone_grace_seconds=number("AGENT_GONE_GRACE_SECONDS", 60, allow_zero=True),
            resume_hole_wait_ms=number("RESUME_HOLE_WAIT_MS", 100, allow_zero=True),
            rate_window_seconds=number("RATE_WINDOW_SECONDS", 10),
            rate_user_sends=number("RATE_USER_SENDS", 100),
            rate_connection_sends=number("RATE_CONNECTION_SENDS", 60),
            rate_connection_typing=number("RATE_CONNECTION_TYPING", 20),
            rate_user_requests=number("RATE_USER_REQUESTS", 30),
            message_retention_days=number("MESSAGE_RETENTION_DAYS", 0, allow_zero=True),
            rate_connection_frames=number("RATE_CONNECTION_FRAMES", 300),
            rate_connection_acks=number("RATE_CONNECTION_ACKS", 120),
            rate_connection_reads=number("RATE_CONNECTION_READS", 60),
            rate_connection_resumes=number("RATE_CONNECTION_RESUMES", 10),
            max_connections_per_user=number("MAX_CONNECTIONS_PER_USER", 10),
            token_max_lifetime_seconds=number("TOKEN_MAX_LIFETIME_SECONDS", 24 * 3600),
            log_level=choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=choice("LOG_FORMAT", "text" if local else "json", ("json", "text")),
            metrics_enabled=choice("METRICS", "off" if local else "on", ("on", "off")) == "on",
            reply_by_route=choice("REPLIES", "push", ("push", "route")) == "route",
        )


def delivery_queue_name(env: Mapping[str, str] | None = None) -> str:
    """The delivery queue's name, needed when app.py is imported (``chalice package``).

    Unlike Config.from_env it does not require the stage's secret.
    """
    env = os.environ if env is None else env
    stage = env.get("STAGE", "local")
    prefix = env.get("RESOURCE_PREFIX", f"oncechat-{stage}")
    return env.get("DELIVERY_QUEUE_NAME") or f"{prefix}-delivery.fifo"
