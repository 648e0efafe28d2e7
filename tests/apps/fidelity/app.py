"""A Chalice app that exercises the AWS behaviours the local cloud must match.

- ``$default`` echoes text frames; ``whoami`` answers with the connection id, ``env`` with the variables the
  ``message`` function sees; ``$disconnect`` records its status code;
- ``GET /env`` answers with the variables the REST function (``api_handler``) sees;
- ``GET /private`` is behind the ``gatekeeper`` authorizer: token ``allow``
  passes, ``deny`` raises ``UnauthorizedError``, ``boom`` raises anything else,
  ``env`` passes only if the authorizer sees its own variable.
"""

import json
import os
import threading

import boto3
from chalice import AuthResponse, Chalice, UnauthorizedError

app = Chalice(app_name="fidelity")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

NAMES = ("SHARED", "ONLY_MESSAGE", "ONLY_API", "ONLY_AUTHORIZER", "BY_PYTHON_NAME")

_lock = threading.Lock()
_disconnects = []


def visible():
    return {name: os.environ.get(name) for name in NAMES}


@app.authorizer()
def gatekeeper(auth_request):
    token = auth_request.token
    if token == "deny":
        raise UnauthorizedError("Unauthorized")
    if token == "boom":
        raise RuntimeError("the authorizer failed")
    if token == "env" and os.environ.get("ONLY_AUTHORIZER") != "gatekeeper's own":
        raise UnauthorizedError("Unauthorized")
    return AuthResponse(routes=["*"], principal_id="someone")


@app.route("/env")
def env():
    return visible()


@app.route("/private", authorizer=gatekeeper)
def private():
    return {"ok": True}


@app.route("/disconnects")
def disconnects():
    with _lock:
        return {"disconnects": list(_disconnects)}


@app.on_ws_message()
def message(event):
    if event.body == "whoami":
        app.websocket_api.send(event.connection_id, event.connection_id)
    elif event.body == "env":
        app.websocket_api.send(event.connection_id, json.dumps(visible()))
    else:
        app.websocket_api.send(event.connection_id, event.body)


@app.on_ws_disconnect()
def disconnect(event):
    context = event.to_dict()["requestContext"]
    with _lock:
        _disconnects.append({"connection_id": event.connection_id, "code": context["disconnectStatusCode"]})
