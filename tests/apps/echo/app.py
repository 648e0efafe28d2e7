"""A tiny Chalice app that exercises every event source of the local cloud.

Frames on the WebSocket ($default route) are JSON objects with an ``action``:

* ``enqueue``: put ``text`` on the FIFO queue; the SQS handler sends it back.
* ``poison``: put a message on the FIFO queue that the SQS handler always
  fails on (it first reports the attempt to the connection).
* ``enqueue_many``: put ``count`` messages on the standard queue; the batch
  handler reports the size of each batch it gets.
* ``boom``: raise, so the gateway answers "Internal server error".
* ``whoami``: reply with the connection id.
* ``record``: store the event in the events table and reply "recorded".

``$connect`` rejects ``?deny=1`` with 403, raises on ``?boom=1``, and on
``?record=1`` stores its event and the outcome of a send to itself.

Anything else is echoed back as it came. ``$disconnect`` and the schedule
write to the events table; ``GET /hello`` is a REST route.
"""

import json
import os

import boto3
from chalice import Chalice, WebsocketDisconnectedError

app = Chalice(app_name="echo")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

JOBS_QUEUE = os.environ["JOBS_QUEUE"]
BATCH_QUEUE = os.environ["BATCH_QUEUE"]
EVENTS_TABLE = os.environ["EVENTS_TABLE"]


def _sqs():
    return boto3.client("sqs")


def _table():
    return boto3.resource("dynamodb").Table(EVENTS_TABLE)


@app.route("/hello")
def hello():
    return {"hello": "world", "greeting": os.environ["GREETING"]}


@app.on_ws_connect()
def connect(event):
    query = event.to_dict().get("queryStringParameters") or {}
    if query.get("deny") == "1":
        return {"statusCode": 403}
    if query.get("boom") == "1":
        raise RuntimeError("boom during $connect")
    if query.get("record") == "1":
        # Until $connect returns the connection is not open: AWS answers 410.
        try:
            app.websocket_api.send(event.connection_id, "too early")
            outcome = "sent"
        except WebsocketDisconnectedError:
            outcome = "gone"
        _record("connect#" + event.connection_id, event.to_dict(), outcome=outcome)
    return {"statusCode": 200}


@app.on_ws_message()
def message(event):
    context = event.to_dict()["requestContext"]
    try:
        frame = json.loads(event.body)
    except ValueError:
        frame = None
    action = frame.get("action") if isinstance(frame, dict) else None
    reply_to = {
        "connection_id": event.connection_id,
        "domain": context["domainName"],
        "stage": context["stage"],
    }
    if action == "enqueue":
        body = dict(reply_to, kind="echo", text=frame["text"])
        _send_job(body)
    elif action == "poison":
        _send_job(dict(reply_to, kind="poison"))
    elif action == "enqueue_many":
        url = _sqs().get_queue_url(QueueName=BATCH_QUEUE)["QueueUrl"]
        for i in range(frame["count"]):
            _sqs().send_message(QueueUrl=url, MessageBody=json.dumps(dict(reply_to, n=i)))
    elif action == "boom":
        raise RuntimeError("boom in $default")
    elif action == "record":
        _record("message#" + event.connection_id, event.to_dict())
        app.websocket_api.send(event.connection_id, "recorded")
    elif action == "whoami":
        app.websocket_api.send(event.connection_id, json.dumps({"connection_id": event.connection_id}))
    else:
        app.websocket_api.send(event.connection_id, event.body)


def _send_job(body):
    url = _sqs().get_queue_url(QueueName=JOBS_QUEUE)["QueueUrl"]
    _sqs().send_message(
        QueueUrl=url,
        MessageBody=json.dumps(body),
        MessageGroupId=body["connection_id"],
        MessageAttributes={"kind": {"DataType": "String", "StringValue": body["kind"]}},
    )


@app.on_ws_disconnect()
def disconnect(event):
    context = event.to_dict()["requestContext"]
    _table().put_item(
        Item={
            "pk": "disconnect#" + event.connection_id,
            "code": context["disconnectStatusCode"],
            "reason": context["disconnectReason"],
            "event": json.dumps(event.to_dict()),
        }
    )


def _record(key, event, **extra):
    _table().put_item(Item=dict({"pk": key, "event": json.dumps(event)}, **extra))


@app.on_sqs_message(queue=JOBS_QUEUE, batch_size=1)
def jobs(event):
    for record in event:
        body = json.loads(record.body)
        # Outside WebSocket handlers Chalice needs the endpoint: configure it
        # from what the WebSocket handler recorded.
        app.websocket_api.configure(body["domain"], body["stage"])
        if body["kind"] == "poison":
            attempt = record.to_dict()["attributes"]["ApproximateReceiveCount"]
            app.websocket_api.send(body["connection_id"], json.dumps({"attempt": int(attempt)}))
            raise RuntimeError("poison message")
        app.websocket_api.send(body["connection_id"], json.dumps({"from_sqs": body["text"]}))


@app.on_sqs_message(queue=BATCH_QUEUE, batch_size=10, maximum_batching_window_in_seconds=2)
def batches(event):
    records = list(event)
    body = json.loads(records[0].body)
    app.websocket_api.configure(body["domain"], body["stage"])
    app.websocket_api.send(body["connection_id"], json.dumps({"batch": len(records)}))


@app.schedule("rate(1 minute)")
def tick(event):
    _table().update_item(
        Key={"pk": "schedule"},
        UpdateExpression="ADD fired :one SET last_event = :event",
        ExpressionAttributeValues={":one": 1, ":event": json.dumps(event.to_dict())},
    )
