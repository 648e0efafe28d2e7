"""oncechat: wiring only. Every handler is one call into chalicelib."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import boto3
from chalice import Chalice, CORSConfig, Rate
from chalice.app import Request, Response, SQSEvent, WebsocketEvent

from chalicelib.config import delivery_queue_name
from chalicelib.entry import LazyHandlers

if TYPE_CHECKING:
    from chalicelib.handlers import Handlers

# Logging is chalicelib/observability.py's (powertools), not Chalice's.
app = Chalice(app_name="oncechat", configure_logs=False)
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()
# The browser pages (widget, console; docs/web.md) come from another origin than
# the REST API and send a Bearer token, never a cookie: any origin may call.
app.api.cors = CORSConfig(allow_origin="*", allow_headers=["Idempotency-Key"], max_age=600)
# chalicelib.handlers is imported on the first event (chalicelib/entry.py).
handlers = cast("Handlers", LazyHandlers(app))


def request() -> Request:
    """The REST request being handled (Chalice sets it before calling a route)."""
    return cast(Request, app.current_request)


@app.middleware("all")
def observe(event: Any, get_response: Callable[[Any], Any]) -> Any:
    return handlers.middleware(event, get_response)


@app.on_ws_connect()
def connect(event: WebsocketEvent) -> Response | None:
    return handlers.ws_connect(event)


@app.on_ws_message()
def message(event: WebsocketEvent) -> dict[str, Any] | None:
    return handlers.ws_message(event)


@app.on_ws_disconnect()
def disconnect(event: WebsocketEvent) -> None:
    handlers.ws_disconnect(event)


@app.on_sqs_message(queue=delivery_queue_name(), batch_size=10)
def deliver(event: SQSEvent) -> None:
    handlers.deliver(event)


@app.schedule(Rate(1, unit=Rate.MINUTES))
def sweep(event: Any) -> None:
    handlers.sweep(event)


@app.route("/conversations", methods=["POST"])
def create_conversation() -> Response:
    return handlers.create_conversation(request())


@app.route("/conversations", methods=["GET"])
def list_conversations() -> Response:
    return handlers.list_conversations(request())


@app.route("/conversations/{conversation_id}", methods=["GET"])
def get_conversation(conversation_id: str) -> Response:
    return handlers.get_conversation(request(), conversation_id)


@app.route("/conversations/{conversation_id}/messages", methods=["GET"])
def list_messages(conversation_id: str) -> Response:
    return handlers.list_messages(request(), conversation_id)


@app.route("/conversations/{conversation_id}/close", methods=["POST"])
def close_conversation(conversation_id: str) -> Response:
    return handlers.close_conversation(request(), conversation_id)


@app.route("/conversations/{conversation_id}/transfer", methods=["POST"])
def transfer_conversation(conversation_id: str) -> Response:
    return handlers.transfer_conversation(request(), conversation_id)


@app.route("/agents/me/status", methods=["PUT"])
def set_agent_status() -> Response:
    return handlers.set_agent_status(request())


@app.route("/agents", methods=["GET"])
def list_agents() -> Response:
    return handlers.list_agents(request())


@app.route("/queue", methods=["GET"])
def waiting_queue() -> Response:
    return handlers.waiting_queue(request())
