"""The wschat baseline: the pattern of the Chalice docs' WebSocket chat tutorial.

Connections live in DynamoDB (one item per connection, with its room and
user); a message handler reads the sender's connection record, queries the
room's connections and ``websocket_api.send``s the frame to every other one.
No message is stored, nothing is acknowledged: a push that fails is lost.

Frames: ``{"action": "send", "room": R, "id": ID, "body": TEXT}`` in,
``{"type": "message", "room": R, "id": ID, "body": TEXT, "from": USER}`` out.
Connect with ``?room=R&user=U``.
"""

import json
import os

import boto3
from chalice import Chalice, WebsocketDisconnectedError

app = Chalice(app_name="wschat")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

TABLE = os.environ["CONNECTIONS_TABLE"]
_db = None


def db():
    global _db
    if _db is None:
        _db = boto3.session.Session().client("dynamodb")
    return _db


@app.on_ws_connect()
def connect(event):
    query = event.to_dict().get("queryStringParameters") or {}
    db().put_item(TableName=TABLE, Item={
        "connectionId": {"S": event.connection_id},
        "room": {"S": query.get("room", "lobby")},
        "user": {"S": query.get("user", "anonymous")},
    })
    return {"statusCode": 200}


@app.on_ws_message()
def message(event):
    frame = json.loads(event.body)
    me = db().get_item(TableName=TABLE, Key={"connectionId": {"S": event.connection_id}}).get("Item")
    if me is None:
        return
    room = me["room"]["S"]
    out = json.dumps({"type": "message", "room": room, "id": frame.get("id"), "body": frame.get("body"),
                      "from": me["user"]["S"]})
    page = db().query(TableName=TABLE, IndexName="byRoom", KeyConditionExpression="room = :r",
                      ExpressionAttributeValues={":r": {"S": room}})
    for item in page.get("Items", []):
        other = item["connectionId"]["S"]
        if other == event.connection_id:
            continue
        try:
            app.websocket_api.send(other, out)
        except WebsocketDisconnectedError:
            db().delete_item(TableName=TABLE, Key={"connectionId": {"S": other}})


@app.on_ws_disconnect()
def disconnect(event):
    db().delete_item(TableName=TABLE, Key={"connectionId": {"S": event.connection_id}})
