"""Logs and metrics (aws-lambda-powertools), wired as one Chalice middleware.

Every invocation gets correlation ids appended to the ``oncechat`` logger
(so every line chalicelib logs carries them): ``connection_id``,
``conversation_id``, ``message_id``, ``action``, ``request_id``, and for the
SQS consumer the conversations of the batch. Ids are taken only when they
match the id pattern; a token, a message body or a header is never logged.
Each invocation ends with one ``handled`` line (route, outcome, duration).

Metrics (CloudWatch embedded metric format, namespace ``oncechat``,
dimensions ``service`` and ``stage``), counted where the frames leave, so
the hot path is untouched: ``Accepted`` and ``Duplicates`` (the ``accepted``
replies), ``Pushes`` and ``DeliveryLatency`` (ms from ``sentAt`` to the
push of a message frame), ``Gone410`` (pushes answered 410: the connection
is pruned), ``Enqueued``, ``SweeperEnqueued``, ``PendingPastBound`` (conversations
active before the sweep bound that no sweep has covered yet: sweeps are
failing; its alarm also fires when the figure is missing), ``RateLimited``.

Cold start: powertools is imported on the first invocation, not when
app.py is imported. Local stages log readable text (the local cloud's
terminal) and emit no metrics; LOG_FORMAT and METRICS override that.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from chalicelib.config import Config

LOGGER_NAME = "oncechat"
NAMESPACE = "oncechat"
_ID = r"[A-Za-z0-9_-]{1,128}"
_FIELDS = {
    "action": re.compile(r'"action"\s*:\s*"(send|ack|resume|typing|read)"'),
    "conversation_id": re.compile(r'"conversationId"\s*:\s*"(' + _ID + r')"'),
    "message_id": re.compile(r'"messageId"\s*:\s*"(' + _ID + r')"'),
}
_SENT_AT = re.compile(r'"sentAt":"([0-9T:.Z-]{24})"')
#: Pending messages older than grace + this many seconds count as "past the sweep bound"
#: (two periods of the one-minute schedule).
SWEEP_BOUND_EXTRA_SECONDS = 120


def readable(record: dict[str, Any]) -> str:
    """A powertools log record as one line a person reads: time level message key=value..."""
    keys = ("connection_id", "conversation_id", "message_id", "action", "route", "outcome",
            "duration_ms", "request_id")
    extra = " ".join(f"{k}={record[k]}" for k in keys if record.get(k) not in (None, ""))
    line = f"{record.get('timestamp', '')} {record.get('level', '')} {record.get('message', '')}"
    if extra:
        line += f"  [{extra}]"
    if record.get("exception"):
        line += "\n" + str(record["exception"])
    return line


class Observability:
    """The powertools Logger and Metrics of one Lambda container."""

    def __init__(self, config: Config, stream: IO[str] | None = None) -> None:
        from aws_lambda_powertools import Logger, Metrics

        self.config = config
        text = config.log_format == "text"
        # A new setup replaces the handler an earlier one attached (powertools
        # would otherwise keep the first one, with its format and stream).
        std = logging.getLogger(LOGGER_NAME)
        previous = std.__dict__.pop("powertools_handler", None)
        if previous is not None:
            std.removeHandler(previous)
        std.__dict__.pop("init", None)
        self.logger = Logger(service=LOGGER_NAME, level=config.log_level, stream=stream,
                             json_serializer=readable if text else None)
        self.metrics_enabled = config.metrics_enabled
        self.metrics = Metrics(namespace=NAMESPACE, service=LOGGER_NAME)
        self.metrics.set_default_dimensions(stage=config.stage)
        self._count = 0
        self._lock = threading.Lock()

    # ----------------------------------------------------------- metrics

    def count(self, name: str, value: float = 1, unit: str = "Count") -> None:
        if not self.metrics_enabled:
            return
        from aws_lambda_powertools.metrics import MetricUnit

        with self._lock:
            self.metrics.add_metric(name=name, unit=getattr(MetricUnit, unit), value=value)
            self._count += 1

    def flush(self) -> None:
        with self._lock:
            if self._count:
                self.metrics.flush_metrics()
                self._count = 0

    # ----------------------------------------------------------- invocations

    def handle(self, event: Any, get_response: Callable[[Any], Any]) -> Any:
        """The middleware body: correlation ids, one ``handled`` line, metrics flushed."""
        keys = correlation(event)
        # Thread-local keys: the local cloud runs invocations on threads of one process.
        self.logger.thread_safe_clear_keys()
        self.logger.thread_safe_append_keys(**keys)
        started = time.monotonic()
        outcome = "ok"
        try:
            response = get_response(event)
            status = getattr(response, "status_code", None)
            if status is not None:
                outcome = str(status)
            return response
        except Exception:
            outcome = "raised"
            raise
        finally:
            self.logger.info("handled", extra={
                "outcome": outcome, "duration_ms": round((time.monotonic() - started) * 1000, 1)})
            self.flush()

    def sweep_report(self, enqueued: int, pending_past_bound: int) -> None:
        self.count("SweeperEnqueued", enqueued)
        self.count("PendingPastBound", pending_past_bound)
        if pending_past_bound:
            self.logger.error("conversations unswept past the sweep bound", extra={
                "pending_past_bound": pending_past_bound})


def correlation(event: Any) -> dict[str, Any]:
    """Correlation ids of a Chalice event; never a token, a body or a header."""
    from chalice.app import CloudWatchEvent, Request, SQSEvent, WebsocketEvent

    keys: dict[str, Any] = {}
    if isinstance(event, WebsocketEvent):
        context = event.to_dict().get("requestContext") or {}
        keys["route"] = context.get("routeKey")
        keys["connection_id"] = event.connection_id
        keys["request_id"] = context.get("requestId")
        body = event.to_dict().get("body")
        if isinstance(body, str) and len(body) <= 256 * 1024:
            for name, pattern in _FIELDS.items():
                found = pattern.search(body)
                if found:
                    keys[name] = found.group(1)
    elif isinstance(event, Request):
        keys["route"] = f"{event.method} {event.context.get('resourcePath', event.path)}"
        keys["request_id"] = event.context.get("requestId")
        conversation = (event.uri_params or {}).get("conversation_id")
        if conversation and re.fullmatch(_ID, conversation):
            keys["conversation_id"] = conversation
    elif isinstance(event, SQSEvent):
        keys["route"] = "deliver"
        raw = event.to_dict().get("Records") or []
        groups = sorted({(r.get("attributes") or {}).get("MessageGroupId", "") for r in raw} - {""})
        keys["conversation_id"] = groups[0] if len(groups) == 1 else groups
        keys["request_id"] = [r.get("messageId") for r in raw][:10]
    elif isinstance(event, CloudWatchEvent):
        keys["route"] = "sweep"
        keys["request_id"] = event.event_id
    return {k: v for k, v in keys.items() if v not in (None, "", [])}


# ----------------------------------------------------------- the ports, observed


class ObservedPusher:
    """Counts what goes out through the management API: accepted replies, message pushes, 410s."""

    def __init__(self, inner: Any, obs: Callable[[], Observability | None],
                 clock: Callable[[], int]) -> None:
        self._inner = inner
        self._obs = obs
        self._clock = clock

    def push(self, connection_id: str, domain_name: str, stage: str, data: str) -> None:
        from chalicelib.errors import ConnectionGone

        obs = self._obs()
        try:
            self._inner.push(connection_id, domain_name, stage, data)
        except ConnectionGone:
            if obs:
                obs.count("Gone410")
            raise
        if obs is None:
            return
        if data.startswith('{"type":"accepted"'):
            obs.count("Duplicates" if '"duplicate":true' in data else "Accepted")
        elif data.startswith('{"type":"message"'):
            obs.count("Pushes")
            sent = _SENT_AT.search(data)
            if sent:
                from chalicelib.core import epoch_ms

                obs.count("DeliveryLatency", max(0, self._clock() - epoch_ms(sent.group(1))),
                          "Milliseconds")
        elif data.startswith('{"type":"error","code":"rate_limited"'):
            obs.count("RateLimited")

    def alive(self, connection_id: str, domain_name: str, stage: str) -> bool:
        result: bool = self._inner.alive(connection_id, domain_name, stage)
        return result


class ObservedQueue:
    """Counts enqueued deliveries."""

    def __init__(self, inner: Any, obs: Callable[[], Observability | None]) -> None:
        self._inner = inner
        self._obs = obs

    def enqueue(self, delivery: Any) -> None:
        self._inner.enqueue(delivery)
        obs = self._obs()
        if obs:
            obs.count("Enqueued")

    def enqueue_many(self, deliveries: list[Any]) -> None:
        """The sweeper's window (counted by its report as ``SweeperEnqueued``)."""
        self._inner.enqueue_many(deliveries)


_current: Observability | None = None
_current_lock = threading.Lock()


def current() -> Observability | None:
    """This container's Observability, once the first invocation set it up."""
    return _current


def setup(config: Config) -> Observability:
    """Build (once per container) the logger and metrics for ``config``."""
    global _current
    with _current_lock:
        if _current is None or _current.config != config:
            _current = Observability(config)
        return _current


def log() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
