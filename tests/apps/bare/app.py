"""A Chalice app without infrastructure: WebSocket echo and an in-memory log.

``$disconnect`` appends to a list that ``GET /disconnects`` returns, which
works because the local cloud runs every handler in one process.
"""

import threading

import boto3
from chalice import Chalice

app = Chalice(app_name="bare")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

_lock = threading.Lock()
_disconnects = []


@app.route("/disconnects")
def disconnects():
    with _lock:
        return {"disconnects": list(_disconnects)}


@app.on_ws_message()
def message(event):
    app.websocket_api.send(event.connection_id, event.body)


@app.on_ws_disconnect()
def disconnect(event):
    context = event.to_dict()["requestContext"]
    with _lock:
        _disconnects.append(
            {
                "connection_id": event.connection_id,
                "code": context["disconnectStatusCode"],
                "reason": context["disconnectReason"],
            }
        )
