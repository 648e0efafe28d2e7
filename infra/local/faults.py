"""Switchable fault injection: the failures a real AWS deployment has, on demand.

Off by default. Every kind has its own rate, the probability per
opportunity (0..1), and every injected fault is counted and logged once at
INFO. The kinds and where they strike:

====================  ==================================================  ===================
kind                  injection point                                     opportunity
====================  ==================================================  ===================
drop_connection       gateway: abort the TCP transport (no close frame)   a client frame (it
                      then ``$disconnect`` with 1006                      is dispatched first
                                                                          or lost, at random);
                                                                          a @connections POST
duplicate_frame       gateway: dispatch a client frame twice              a client frame
crash_before_commit   app, WebSocket MESSAGE invocation: dies at          each call
                      ``before-call.dynamodb.TransactWriteItems`` or
                      ``before-call.dynamodb.PutItem``
crash_after_commit    app, WebSocket MESSAGE invocation: dies at          each successful call
                      ``after-call.dynamodb.TransactWriteItems`` or
                      ``after-call.dynamodb.PutItem``
crash_after_enqueue   app, WebSocket MESSAGE invocation: dies at          each successful call
                      ``after-call.sqs.SendMessage`` or
                      ``after-call.apigatewaymanagementapi
                      .PostToConnection`` (the message left the handler)
consumer_crash        app, SQS invocation: dies at the k-th successful    each invocation
                      ``after-call.apigatewaymanagementapi                (k uniform in
                      .PostToConnection``                                 1..batch size)
push_fail             gateway @connections POST: 500, nothing delivered   each HTTP request
push_lost_ack         gateway @connections POST: delivered, then 500      each HTTP request
throttle              app, any invocation: ``before-send.dynamodb`` /     each HTTP attempt
                      ``before-send.sqs`` answers the throttling error
lose_push             gateway @connections POST: 200, nothing delivered   each HTTP request
                      (a real loss, see below)
====================  ==================================================  ===================

``lose_push`` is no failure AWS has: API Gateway does not answer 200 for a
frame it then drops on an open connection. It is a real loss, there only to
prove that ``make chaos``'s checker fails a run that loses messages. ``all``
does not include it; it must be named (``--faults lose_push=0.2``).

"Dies" means :class:`InjectedCrash`, a ``BaseException`` so the app's
``except Exception`` cannot swallow it (nor could it swallow a real Lambda
crash); :mod:`infra.local.handlers` turns it into a failed invocation.

The app's own AWS calls are intercepted without changing the app: while
installed, :func:`install` wraps ``botocore.client.ClientCreator.create_client``
so every new DynamoDB, SQS and management client gets event handlers. They
act only inside an app invocation (:func:`invocation` marks one in a
context variable), so the local cloud's own calls (SQS polling and
deletion, stack deployment) are never touched.

Where this matches or knowingly differs from AWS:

* ``push_fail`` and ``push_lost_ack`` are answered by the gateway's
  ``@connections`` endpoint, at the HTTP layer, so botocore retries the 500
  exactly as it would retry AWS's: each attempt is an opportunity (and is
  counted), and a lost ack can deliver the frame once per attempt. The
  other side of that choice: they strike any caller of the endpoint, not
  only app invocations.
* ``throttle`` answers before the request leaves botocore (``before-send``),
  so botocore's retry handler, backoff and retry quota see the throttling
  error as they would see AWS's; only the app's calls inside invocations
  are throttled.
* ``drop_connection`` on a push either drops before it (the caller gets
  410) or just after handing the frame to the socket (200; the client may
  or may not have it).
* A crash stops the handler, not the process: module-level state survives,
  where a dead Lambda process would cold-start. ``crash_*`` only watch
  ``TransactWriteItems`` and ``SendMessage`` (not ``SendMessageBatch``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("infra.local.faults")

DROP_CONNECTION = "drop_connection"
DUPLICATE_FRAME = "duplicate_frame"
CRASH_BEFORE_COMMIT = "crash_before_commit"
CRASH_AFTER_COMMIT = "crash_after_commit"
CRASH_AFTER_ENQUEUE = "crash_after_enqueue"
CONSUMER_CRASH = "consumer_crash"
PUSH_FAIL = "push_fail"
PUSH_LOST_ACK = "push_lost_ack"
THROTTLE = "throttle"
LOSE_PUSH = "lose_push"

KINDS: tuple[str, ...] = (
    DROP_CONNECTION,
    DUPLICATE_FRAME,
    CRASH_BEFORE_COMMIT,
    CRASH_AFTER_COMMIT,
    CRASH_AFTER_ENQUEUE,
    CONSUMER_CRASH,
    PUSH_FAIL,
    PUSH_LOST_ACK,
    THROTTLE,
)
#: Kinds that lose messages for real (only to check the checker); not part of ``all``.
LOSS_KINDS: tuple[str, ...] = (LOSE_PUSH,)
ALL_KINDS: tuple[str, ...] = KINDS + LOSS_KINDS

# Invocation kinds, read from the event the way the Lambda runtime cannot
# (it does not care), but an event source mapping or API Gateway would know.
WEBSOCKET_MESSAGE = "websocket-message"
SQS = "sqs"

# The throttling error each protocol answers with. Both codes are retried
# by botocore's standard mode (ThrottledRetryableChecker) and by its legacy
# mode (_retry.json: "throughput_exceeded" and "throttling_exception", 400).
# SQS's other throttling code, RequestThrottled, is retried by legacy mode
# only with status 403, so ThrottlingException is the one both modes retry.
_THROTTLING: dict[str, tuple[str, str]] = {
    "dynamodb": (
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        (
            "The level of configured provisioned throughput for the table was exceeded. "
            "Consider increasing your provisioning level with the UpdateTable API."
        ),
    ),
    "sqs": ("com.amazonaws.sqs#ThrottlingException", "Rate exceeded"),
}


class FaultSpecError(ValueError):
    """A fault spec or a rate update names an unknown kind or a rate outside 0..1."""


class InjectedCrash(BaseException):
    """The function's process died here (an injected fault).

    A ``BaseException`` on purpose: application code that catches
    ``Exception`` must not survive a crash it could not survive on Lambda.
    """


def parse_spec(spec: str) -> dict[str, float]:
    """Parse ``kind=rate,...``; ``all=RATE`` sets every kind, later pairs override.

    >>> parse_spec("all=0.1,push_fail=0")["push_fail"], parse_spec("all=0.1,push_fail=0")["throttle"]
    (0.0, 0.1)
    """
    rates: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep:
            raise FaultSpecError(f"{part!r} is not kind=rate")
        rate = _rate(kind, value.strip())
        if kind == "all":
            rates.update(dict.fromkeys(KINDS, rate))
        elif kind in ALL_KINDS:
            rates[kind] = rate
        else:
            raise FaultSpecError(f"unknown fault kind {kind!r}; kinds: all, {', '.join(ALL_KINDS)}")
    return rates


def _rate(kind: str, value: Any) -> float:
    if isinstance(value, bool):
        raise FaultSpecError(f"rate of {kind} must be a number in 0..1, not {value!r}")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise FaultSpecError(f"rate of {kind} must be a number in 0..1, not {value!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"rate of {kind} must be in 0..1, not {rate}")
    return rate


class FaultInjector:
    """Rates, a seeded random source and exact counts; safe to share between threads."""

    def __init__(self, rates: Mapping[str, float] | None = None, seed: int | None = None, enabled: bool = True) -> None:
        #: False for a cloud started without ``--faults``: no hooks, rates stay 0.
        self.enabled = enabled
        self._rates = dict.fromkeys(ALL_KINDS, 0.0)
        self._counts = dict.fromkeys(ALL_KINDS, 0)
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        if rates:
            self.update(rates)

    # --- control --------------------------------------------------------------

    def update(self, rates: Mapping[str, Any]) -> None:
        """Set some rates; all or nothing: raise FaultSpecError on any bad pair."""
        checked = {}
        for kind, value in rates.items():
            if kind not in ALL_KINDS:
                raise FaultSpecError(f"unknown fault kind {kind!r}; kinds: {', '.join(ALL_KINDS)}")
            checked[kind] = _rate(kind, value)
        with self._lock:
            self._rates.update(checked)

    def rates(self) -> dict[str, float]:
        """The current rate of every kind."""
        with self._lock:
            return dict(self._rates)

    def counts(self) -> dict[str, int]:
        """How many faults of every kind were injected so far."""
        with self._lock:
            return dict(self._counts)

    def snapshot(self) -> dict[str, Any]:
        """The shape of ``GET /_local/faults``: rates and injected counts."""
        with self._lock:
            return {"rates": dict(self._rates), "injected": dict(self._counts)}

    def summary(self) -> str:
        """One line of the injected counts."""
        return "faults injected: " + " ".join(f"{k}={v}" for k, v in self.counts().items())

    # --- decisions ----------------------------------------------------------------

    def decide(self, kind: str) -> bool:
        """Draw whether ``kind`` strikes at this opportunity (not counted yet).

        Rates 0 and 1 draw nothing, so a seeded run stays reproducible
        whatever the other kinds do at those rates, and rate 0 costs one
        dictionary read.
        """
        rate = self._rates[kind]  # one dict read is atomic: no lock on the hot path
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._random.random() < rate

    def choice(self, count: int) -> int:
        """A uniform draw in ``0..count-1`` from the seeded source."""
        with self._lock:
            return self._random.randrange(count)

    def record(self, kind: str, detail: str) -> None:
        """Count one injected fault and log it in one line."""
        with self._lock:
            self._counts[kind] += 1
        log.info("injected %s: %s", kind, detail)

    def inject(self, kind: str, detail: str) -> bool:
        """``decide`` and, when it strikes, ``record``; return whether it struck."""
        if not self.decide(kind):
            return False
        self.record(kind, detail)
        return True


# --- invocations ---------------------------------------------------------------


@dataclass
class Invocation:
    """What the hooks need to know about the running app invocation."""

    function: str
    kind: str
    crash_at_push: int = 0  # consumer_crash: die after this successful push (0: never)
    pushes: int = 0


_current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("local_invocation", default=None)
_active: FaultInjector | None = None


def invocation_kind(event: Mapping[str, Any]) -> str:
    """Tell the event source of ``event``: ``websocket-message``, ``sqs`` or ``other``."""
    context = event.get("requestContext")
    if isinstance(context, Mapping) and context.get("eventType") == "MESSAGE":
        return WEBSOCKET_MESSAGE
    records = event.get("Records")
    first = records[0] if isinstance(records, list) and records else None
    if isinstance(first, Mapping) and first.get("eventSource") == "aws:sqs":
        return SQS
    return "other"


@contextlib.contextmanager
def invocation(function: str, event: Mapping[str, Any]) -> Iterator[Invocation | None]:
    """Mark the calling thread as running ``function`` on ``event`` while inside.

    With no injector installed this does nothing at all.
    """
    injector = _active
    if injector is None:
        yield None
        return
    current = Invocation(function=function, kind=invocation_kind(event))
    if current.kind == SQS and injector.decide(CONSUMER_CRASH):
        # For determinism at rate 1 with one record: k = 1.
        current.crash_at_push = 1 + injector.choice(max(1, len(event["Records"])))
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)


def current() -> Invocation | None:
    """The app invocation running on this thread, if any."""
    return _current.get()


# --- botocore hooks --------------------------------------------------------------


class _Body:
    """The ``raw`` of a canned ``AWSResponse``: what botocore reads the body from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._data


def throttling_response(service: str, url: str) -> Any:
    """Return the throttling error of ``service`` as botocore would receive it.

    Both services speak JSON 1.0 (``__type``); SQS is "awsQueryCompatible",
    so it also names the query-protocol code in ``x-amzn-query-error``, the
    header botocore's parser prefers.
    """
    from botocore.awsrequest import AWSResponse

    error_type, message = _THROTTLING[service]
    body = json.dumps({"__type": error_type, "message": message}).encode("utf-8")
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "Content-Length": str(len(body)),
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    if service == "sqs":
        headers["x-amzn-query-error"] = error_type.rsplit("#", 1)[1] + ";Sender"
    # AWSResponse copies the headers into a HeadersDict: any mapping does, not only HTTPHeaders.
    return AWSResponse(url, 400, headers, _Body(body))  # type: ignore[arg-type]


class _ClientHooks:
    """The event handlers registered on every new app client of one injector."""

    def __init__(self, injector: FaultInjector) -> None:
        self.injector = injector

    def register(self, client: Any) -> None:
        service = client.meta.service_model.service_id.hyphenize()
        events = client.meta.events
        if service == "dynamodb":
            for write in ("TransactWriteItems", "PutItem"):
                events.register(f"before-call.dynamodb.{write}", self._before_write)
                events.register(f"after-call.dynamodb.{write}", self._after_write)
            events.register("before-send.dynamodb", self._before_send)
        elif service == "sqs":
            events.register("after-call.sqs.SendMessage", self._after_handoff)
            events.register("before-send.sqs", self._before_send)
        elif service == "apigatewaymanagementapi":
            events.register("after-call.apigatewaymanagementapi.PostToConnection", self._after_post)

    def _crash(self, kind: str, where: str) -> None:
        running = _current.get()
        if running is None or running.kind != WEBSOCKET_MESSAGE:
            return
        if self.injector.inject(kind, f"{running.function} died {where}"):
            raise InjectedCrash(f"{kind} {where}")

    def _before_write(self, model: Any, **kwargs: Any) -> None:
        self._crash(CRASH_BEFORE_COMMIT, f"before dynamodb.{model.name}")

    def _after_write(self, model: Any, http_response: Any, **kwargs: Any) -> None:
        if http_response.status_code < 300:
            self._crash(CRASH_AFTER_COMMIT, f"after dynamodb.{model.name} succeeded")

    def _after_handoff(self, http_response: Any, model: Any = None, **kwargs: Any) -> None:
        if http_response.status_code < 300:
            where = (f"{model.service_model.service_id.hyphenize()}.{model.name}"
                     if model is not None else "a hand-off")
            self._crash(CRASH_AFTER_ENQUEUE, f"after {where} succeeded")

    def _after_post(self, http_response: Any, model: Any = None, **kwargs: Any) -> None:
        self._after_handoff(http_response, model)
        running = _current.get()
        if running is None or running.kind != SQS or http_response.status_code >= 300:
            return
        running.pushes += 1
        if running.pushes == running.crash_at_push:
            self.injector.record(
                CONSUMER_CRASH, f"{running.function} died after successful push {running.pushes} of its batch"
            )
            raise InjectedCrash(f"{CONSUMER_CRASH} after push {running.pushes}")

    def _before_send(self, request: Any, event_name: str, **kwargs: Any) -> Any:
        running = _current.get()
        if running is None:
            return None
        _, service, operation = [*event_name.split("."), "?"][:3]
        if not self.injector.inject(THROTTLE, f"{running.function}: {service}.{operation} throttled"):
            return None
        return throttling_response(service, request.url)


_install_lock = threading.Lock()
_original_create_client: Callable[..., Any] | None = None


def install(injector: FaultInjector) -> None:
    """Hook every botocore client created from now on; one injector per process."""
    global _active, _original_create_client
    from botocore.client import ClientCreator

    with _install_lock:
        if _original_create_client is not None:
            raise RuntimeError("fault injection is already installed in this process")
        original = ClientCreator.create_client
        hooks = _ClientHooks(injector)

        def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(self, *args, **kwargs)
            hooks.register(client)
            return client

        ClientCreator.create_client = create_client  # type: ignore[method-assign]
        _original_create_client = original
        _active = injector


def uninstall() -> None:
    """Stop hooking new clients and stop marking invocations (clients keep their handlers, now inert)."""
    global _active, _original_create_client
    from botocore.client import ClientCreator

    with _install_lock:
        if _original_create_client is not None:
            ClientCreator.create_client = _original_create_client  # type: ignore[method-assign]
        _original_create_client = None
        _active = None
