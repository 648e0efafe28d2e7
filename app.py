"""oncechat: wiring only. Every handler is one call into chalicelib."""

import boto3
from chalice import Chalice, CORSConfig, Rate

from chalicelib.config import delivery_queue_name
from chalicelib.entry import LazyHandlers

# Logging is chalicelib/observability.py's (powertools), not Chalice's.
app = Chalice(app_name="oncechat", configure_logs=False)
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()
# The browser pages (widget, console; docs/web.md) come from another origin than
# the REST API and send a Bearer token, never a cookie: any origin may call.
app.api.cors = CORSConfig(allow_origin="*", allow_headers=["Idempotency-Key"], max_age=600)
handlers = LazyHandlers(app)  # chalicelib.handlers is imported on the first event


@app.middleware("all")
def observe(event, get_response):
    return handlers.middleware(event, get_response)


@app.on_ws_connect()
def connect(event):
    return handlers.ws_connect(event)


@app.on_ws_message()
def message(event):
    handlers.ws_message(event)


@app.on_ws_disconnect()
def disconnect(event):
    handlers.ws_disconnect(event)


@app.on_sqs_message(queue=delivery_queue_name(), batch_size=10)
def deliver(event):
    handlers.deliver(event)


@app.schedule(Rate(1, unit=Rate.MINUTES))
def sweep(event):
    handlers.sweep(event)


@app.route("/conversations", methods=["POST"])
def create_conversation():
    return handlers.create_conversation(app.current_request)


@app.route("/conversations", methods=["GET"])
def list_conversations():
    return handlers.list_conversations(app.current_request)


@app.route("/conversations/{conversation_id}", methods=["GET"])
def get_conversation(conversation_id):
    return handlers.get_conversation(app.current_request, conversation_id)


@app.route("/conversations/{conversation_id}/messages", methods=["GET"])
def list_messages(conversation_id):
    return handlers.list_messages(app.current_request, conversation_id)


@app.route("/conversations/{conversation_id}/close", methods=["POST"])
def close_conversation(conversation_id):
    return handlers.close_conversation(app.current_request, conversation_id)


@app.route("/conversations/{conversation_id}/transfer", methods=["POST"])
def transfer_conversation(conversation_id):
    return handlers.transfer_conversation(app.current_request, conversation_id)


@app.route("/agents/me/status", methods=["PUT"])
def set_agent_status():
    return handlers.set_agent_status(app.current_request)


@app.route("/agents", methods=["GET"])
def list_agents():
    return handlers.list_agents(app.current_request)


@app.route("/queue", methods=["GET"])
def waiting_queue():
    return handlers.waiting_queue(app.current_request)
