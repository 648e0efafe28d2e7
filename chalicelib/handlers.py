"""Glue between Chalice's events and the services.

``Handlers`` builds the services once, lazily, from the one Config (so a
stage without a JWT secret refuses to run its handlers, and a cold start
costs nothing until the first event). Each method turns one Chalice event
into one service call and turns errors into the protocol's shapes: an
HTTP status for ``$connect``, an ``error`` frame for a frame, a JSON body
for REST.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from chalice.app import Chalice, Request, Response, SQSEvent, WebsocketEvent
from pydantic import BaseModel, ValidationError

from chalicelib import observability
from chalicelib.auth import bearer_token, single_token, verify_token
from chalicelib.config import Config
from chalicelib.core import encode, error_frame, load_json, valid_id
from chalicelib.errors import BadRequest, ConnectionGone, OnceChatError
from chalicelib.models import MAX_SEQ, AgentStatusRequest, TransferRequest
from chalicelib.ports import ChalicePusher, SqsDeliveryQueue
from chalicelib.services import Clock, Origin, Ports, Services, build_services, wall_clock_ms

log = logging.getLogger("oncechat")

MAX_PAGE = 100
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")
STATUSES = ("waiting", "active", "closed")
B = TypeVar("B", bound=BaseModel)


class Handlers:
    """The entry points ``app.py`` wires to Chalice's decorators."""

    def __init__(self, app: Chalice, build: Callable[[Chalice], Services] | None = None) -> None:
        self._app = app
        self._build = build or build_aws_services
        self._services: Services | None = None
        self._lock = threading.Lock()

    @property
    def services(self) -> Services:
        """The services, built on first use."""
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = self._build(self._app)
        return self._services

    # ------------------------------------------------------------ WebSocket

    def ws_connect(self, event: WebsocketEvent) -> Response | None:
        """``$connect``: 401 for a bad token, 429 over the connection cap; never pushes a frame."""
        raw = event.to_dict()
        try:
            token = single_token(raw.get("queryStringParameters"),
                                 raw.get("multiValueQueryStringParameters"))
            self.services.connections.connect(token, _origin(event))
        except OnceChatError as err:
            if err.http_status >= 500:
                log.error("connect failed: %s", err.message)
            return Response(body=err.to_body(), status_code=err.http_status)
        return None

    def ws_message(self, event: WebsocketEvent) -> dict[str, Any] | None:
        """``$default``: every client frame, dispatched by its ``action``.

        The reply to the frame (``accepted``,
        ``error``) is the route's response where the stack gives the route
        one (``REPLIES=route``), else a push. A reply to a connection that
        closed meanwhile (410) is the client's loss, not an error: it
        resumes when it is back.
        """
        origin = _origin(event)
        reply: dict[str, Any] | None = None
        try:
            try:
                services = self.services
            except OnceChatError as err:  # misconfigured stage: say so on the socket
                log.error("handler not configured: %s", err.message)
                self._push_error(origin, err)
                return None
            reply = services.messaging.on_frame(origin, event.body)
        except ConnectionGone:
            log.info("connection %s left before its reply", origin.connection_id)
        return None if reply is None else {"statusCode": 200, "body": encode(reply)}

    def _push_error(self, origin: Origin, err: OnceChatError) -> None:
        ChalicePusher(self._app.websocket_api).push(
            origin.connection_id, origin.domain_name, origin.stage, encode(error_frame(err)))

    def ws_disconnect(self, event: WebsocketEvent) -> None:
        """``$disconnect``: forget the connection."""
        self.services.connections.disconnect(event.connection_id)

    # ------------------------------------------------------------------ SQS

    def deliver(self, event: SQSEvent) -> None:
        """The FIFO consumer; raising makes SQS redeliver the whole batch."""
        self.services.consumer.deliver(record.body for record in event)

    def sweep(self, event: Any) -> None:
        """The scheduled sweeper: enqueue what connected participants have not acked (``Sweeper.sweep``).

        Then counts the conversations active before the sweep bound (grace
        plus two schedule periods) that no sweep has covered yet (sweeps
        failing): the figure its alarm watches.
        """
        sweeper = self.services.sweeper
        count = 0
        try:
            count = sweeper.sweep()
            if count:
                log.info("sweeper enqueued %d unacknowledged message(s)", count)
        finally:  # reported even when the sweep itself failed
            bound = sweeper.config.sweep_grace_seconds + observability.SWEEP_BOUND_EXTRA_SECONDS
            stuck = sweeper.unswept_before(sweeper.clock() // 1000 - bound, 100)
            obs = observability.current()
            if obs is not None:
                obs.sweep_report(count, len(stuck))

    # ----------------------------------------------------------- middleware

    def middleware(self, event: Any, get_response: Callable[[Any], Any]) -> Any:
        """Every invocation: correlation ids on the logs, one ``handled`` line, metrics flushed."""
        try:
            config = self.services.config
        except OnceChatError:  # misconfigured: the handler answers for itself
            return get_response(event)
        return observability.setup(config).handle(event, get_response)

    # ----------------------------------------------------------------- REST

    def create_conversation(self, request: Request) -> Response:
        """``POST /conversations`` (``Idempotency-Key`` honoured): 201 created, 200 replayed."""
        headers: Mapping[str, str] = request.headers or {}
        key = headers.get("idempotency-key")

        def call(s: Services, who: Any) -> tuple[int, Any]:
            conv, created = s.desk.open_conversation(who, key)
            return (201 if created else 200), conv.rest_view()
        return self._rest(request, call)

    def list_conversations(self, request: Request) -> Response:
        """``GET /conversations?status=S&limit=L&cursor=C``: the caller's, newest first."""
        query: Mapping[str, str] = request.query_params or {}
        status = query.get("status")
        if status is not None and status not in STATUSES:
            return _error(BadRequest(f"status must be one of {', '.join(STATUSES)}"))
        return self._rest(request, lambda s, who: (200, s.desk.list_conversations(
            who, status, _int_param(query, "limit", 50, 1, MAX_PAGE), query.get("cursor"))))

    def get_conversation(self, request: Request, conversation_id: str) -> Response:
        """``GET /conversations/{id}``."""
        return self._rest(request, lambda s, who: _check_id(conversation_id) or (
            200, s.desk.get_conversation(who, conversation_id)))

    def list_messages(self, request: Request, conversation_id: str) -> Response:
        """``GET /conversations/{id}/messages?after=N|before=N&limit=L``."""
        query: Mapping[str, str] = request.query_params or {}
        return self._rest(request, lambda s, who: _check_id(conversation_id) or (
            200, s.messaging.list_messages(
                who, conversation_id,
                after=_int_param(query, "after", None, 0, MAX_SEQ),
                limit=_int_param(query, "limit", 50, 1, MAX_PAGE),
                before=_int_param(query, "before", None, 1, MAX_SEQ))))

    def close_conversation(self, request: Request, conversation_id: str) -> Response:
        """``POST /conversations/{id}/close``."""
        return self._rest(request, lambda s, who: _check_id(conversation_id) or (
            200, s.desk.close(who, conversation_id).rest_view()))

    def transfer_conversation(self, request: Request, conversation_id: str) -> Response:
        """``POST /conversations/{id}/transfer`` ``{"agentId": A}``."""
        return self._rest(request, lambda s, who: _check_id(conversation_id) or (200, s.desk.transfer(
            who, conversation_id, _body(request, TransferRequest).agent_id).rest_view()))

    def set_agent_status(self, request: Request) -> Response:
        """``PUT /agents/me/status`` ``{"status": S, "capacity": N}``."""
        def call(s: Services, who: Any) -> tuple[int, Any]:
            body = _body(request, AgentStatusRequest)
            if body.status is None and body.capacity is None:
                raise BadRequest("give status, capacity or both")
            return 200, s.desk.set_agent_status(who, body.status, body.capacity).rest_view()
        return self._rest(request, call)

    def list_agents(self, request: Request) -> Response:
        """``GET /agents`` (agents only)."""
        return self._rest(request, lambda s, who: (
            200, {"agents": [a.rest_view() for a in s.desk.list_agents(who)]}))

    def waiting_queue(self, request: Request) -> Response:
        """``GET /queue?limit=L`` (agents only): waiting conversations, oldest first."""
        query: Mapping[str, str] = request.query_params or {}
        return self._rest(request, lambda s, who: (
            200, s.desk.waiting_queue(who, _int_param(query, "limit", 50, 1, MAX_PAGE))))

    def _rest(self, request: Request,
              call: Callable[[Services, Any], tuple[int, Any]]) -> Response:
        try:
            services = self.services
            who = verify_token(bearer_token(request.headers.get("authorization")),
                               services.config.jwt_secret,
                               max_lifetime_seconds=services.config.token_max_lifetime_seconds)
            status, body = call(services, who)
        except OnceChatError as err:
            if err.http_status >= 500:
                log.error("request failed: %s", err.message)
            return _error(err)
        except Exception:
            log.exception("request failed")
            return _error(OnceChatError())
        return Response(body=body, status_code=status,
                        headers={"Content-Type": "application/json"})


def _error(err: OnceChatError) -> Response:
    return Response(body=err.to_body(), status_code=err.http_status,
                    headers={"Content-Type": "application/json"})


def _body(request: Request, model: type[B]) -> B:
    """The JSON body validated by ``model``; BadRequest with the reason otherwise."""
    raw = request.raw_body
    data = load_json(raw, "body") if raw else None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"{where}: {err['msg']}") from None


def _check_id(conversation_id: str) -> Literal[False]:
    """A path id must be an id (``A-Za-z0-9_-``, at most 128): 400 before any lookup.

    Returns False (so ``_check_id(i) or answer`` reads as "check, then answer").
    """
    if not valid_id(conversation_id):
        raise BadRequest("conversation id must be 1 to 128 characters of A-Z a-z 0-9 _ -")
    return False


def _origin(event: WebsocketEvent) -> Origin:
    return Origin(event.connection_id, event.domain_name, event.stage)


def _int_param(query: Mapping[str, str], name: str, default: Any, low: int,
               high: int | None) -> Any:
    raw = query.get(name)
    if raw is None:
        return default
    if not _INTEGER.match(raw):
        raise BadRequest(f"{name} must be an integer")
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be {bound}")
    return value


def build_aws_services(app: Chalice, clock: Clock = wall_clock_ms) -> Services:
    """The production wiring: DynamoDB, SQS FIFO, and Chalice's management API client, observed.

    ``clock`` is the wall clock but in tests that move time on.
    """
    from chalicelib.storage.dynamodb import DynamoStorage

    config = Config.from_env()
    ports = Ports(
        storage=DynamoStorage(config),
        queue=observability.ObservedQueue(SqsDeliveryQueue(config.delivery_queue_name),
                                          observability.current),
        pusher=observability.ObservedPusher(ChalicePusher(app.websocket_api), observability.current,
                                            clock),
        clock=clock,
    )
    return build_services(config, ports)
