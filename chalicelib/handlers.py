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
import threading
from collections.abc import Callable
from typing import Any

from chalice.app import Chalice, Request, Response, SQSEvent, WebsocketEvent

from chalicelib.auth import bearer_token, verify_token
from chalicelib.config import Config
from chalicelib.errors import BadRequest, OnceChatError
from chalicelib.ports import ChalicePusher, SqsDeliveryQueue
from chalicelib.service import ChatService, DeliveryService, Origin

log = logging.getLogger("oncechat")

MAX_PAGE = 100


class Handlers:
    """The entry points ``app.py`` wires to Chalice's decorators."""

    def __init__(self, app: Chalice, build: Callable[[Chalice], ChatService] | None = None) -> None:
        self._app = app
        self._build = build or build_aws_services
        self._chat: ChatService | None = None
        self._lock = threading.Lock()

    @property
    def chat(self) -> ChatService:
        """The chat service, built on first use."""
        if self._chat is None:
            with self._lock:
                if self._chat is None:
                    self._chat = self._build(self._app)
        return self._chat

    # ------------------------------------------------------------ WebSocket

    def ws_connect(self, event: WebsocketEvent) -> Response | None:
        """``$connect``: 401 for a bad token; never pushes a frame."""
        query = event.to_dict().get("queryStringParameters") or {}
        try:
            self.chat.connect(query.get("token"), _origin(event))
        except OnceChatError as err:
            if err.http_status >= 500:
                log.error("connect failed: %s", err.message)
            return Response(body=err.to_body(), status_code=err.http_status)
        return None

    def ws_message(self, event: WebsocketEvent) -> None:
        """``$default``: every client frame, dispatched by its ``action``."""
        origin = _origin(event)
        try:
            chat = self.chat
        except OnceChatError as err:  # misconfigured stage: say so on the socket
            log.error("handler not configured: %s", err.message)
            ChalicePusher(self._app.websocket_api).push(
                origin.connection_id, origin.domain_name, origin.stage,
                '{"type":"error","code":"internal","message":"service not configured"}')
            return
        chat.on_frame(origin, event.body)

    def ws_disconnect(self, event: WebsocketEvent) -> None:
        """``$disconnect``: forget the connection."""
        self.chat.disconnect(event.connection_id)

    # ------------------------------------------------------------------ SQS

    def deliver(self, event: SQSEvent) -> None:
        """The FIFO consumer; raising makes SQS redeliver the whole batch."""
        DeliveryService(self.chat).deliver(record.body for record in event)

    def sweep(self, event: Any) -> None:
        """The scheduled sweeper: enqueue messages stored but never enqueued."""
        count = self.chat.sweep()
        if count:
            log.warning("sweeper enqueued %d message(s)", count)

    # ----------------------------------------------------------------- REST

    def create_conversation(self, request: Request) -> Response:
        """``POST /conversations``."""
        return self._rest(request, lambda chat, who: (
            201, chat.create_conversation(who).rest_view()))

    def list_messages(self, request: Request, conversation_id: str) -> Response:
        """``GET /conversations/{id}/messages?after=N&limit=L``."""
        query = request.query_params or {}
        return self._rest(request, lambda chat, who: (200, chat.list_messages(
            who, conversation_id,
            _int_param(query, "after", 0, 0, None),
            _int_param(query, "limit", 50, 1, MAX_PAGE))))

    def _rest(self, request: Request,
              call: Callable[[ChatService, Any], tuple[int, Any]]) -> Response:
        try:
            chat = self.chat
            who = verify_token(bearer_token(request.headers.get("authorization")),
                               chat.config.jwt_secret)
            status, body = call(chat, who)
        except OnceChatError as err:
            if err.http_status >= 500:
                log.error("request failed: %s", err.message)
            return Response(body=err.to_body(), status_code=err.http_status)
        except Exception:
            log.exception("request failed")
            return Response(body=OnceChatError().to_body(), status_code=500)
        return Response(body=body, status_code=status,
                        headers={"Content-Type": "application/json"})


def _origin(event: WebsocketEvent) -> Origin:
    return Origin(event.connection_id, event.domain_name, event.stage)


def _int_param(query: dict[str, str], name: str, default: int, low: int,
               high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be {bound}")
    return value


def build_aws_services(app: Chalice) -> ChatService:
    """The production wiring: DynamoDB, SQS FIFO, and Chalice's management API client."""
    from chalicelib.storage.dynamodb import DynamoStorage

    config = Config.from_env()
    return ChatService(
        config=config,
        storage=DynamoStorage(config),
        queue=SqsDeliveryQueue(config.delivery_queue_name),
        pusher=ChalicePusher(app.websocket_api),
    )
