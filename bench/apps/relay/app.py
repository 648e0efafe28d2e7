"""The relay baseline: every frame pushed to the room's other connections, no storage at all.

The at-most-once floor: one frame in, one push out, no AWS request. The
room's connections are kept in this process's memory, which works in the
local cloud (one process) and stands for whatever free routing a real
relay would have; nothing survives a restart and a failed push is lost.

Same frames as the wschat baseline: connect with ``?room=R&user=U``, send
``{"action": "send", "room": R, "id": ID, "body": TEXT}``.
"""

import json
import threading

import boto3
from chalice import Chalice, WebsocketDisconnectedError

app = Chalice(app_name="relay")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

_lock = threading.Lock()
_rooms = {}  # room -> {connection_id: user}
_where = {}  # connection_id -> room


@app.on_ws_connect()
def connect(event):
    query = event.to_dict().get("queryStringParameters") or {}
    room = query.get("room", "lobby")
    with _lock:
        _rooms.setdefault(room, {})[event.connection_id] = query.get("user", "anonymous")
        _where[event.connection_id] = room
    return {"statusCode": 200}


@app.on_ws_message()
def message(event):
    frame = json.loads(event.body)
    with _lock:
        room = _where.get(event.connection_id)
        members = dict(_rooms.get(room, {}))
    out = json.dumps({"type": "message", "room": room, "id": frame.get("id"), "body": frame.get("body"),
                      "from": members.get(event.connection_id)})
    for other in members:
        if other == event.connection_id:
            continue
        try:
            app.websocket_api.send(other, out)
        except WebsocketDisconnectedError:
            pass


@app.on_ws_disconnect()
def disconnect(event):
    with _lock:
        room = _where.pop(event.connection_id, None)
        _rooms.get(room, {}).pop(event.connection_id, None)
