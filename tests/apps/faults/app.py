"""A tiny Chalice app shaped like oncechat's write path, for the fault injection tests.

Frames on the WebSocket ($default route) are JSON objects with an ``action``
and an ``id``:

* ``send``: TransactWriteItems ``msg#ID``, then SendMessage to the FIFO
  queue, then reply ``{"ok": ID}``. The SQS handler pushes
  ``{"pushed": ID, "attempt": N}`` to the connection and then records
  ``consumed#ID``.
* ``count``: ADD 1 to ``count#ID`` and reply ``{"counted": ID}``.
* ``push``: push ``{"push": ID}`` to the connection itself and record the
  outcome (``ok`` or the error code) in ``push#ID``.
* ``throttle``: one DynamoDB and one SQS call; reply with the outcome of each.
* ``whoami``: reply ``{"connection_id": ...}``.

``$disconnect`` records ``disconnect#CONNECTION_ID`` with its status code.
"""

import json
import os

import boto3
from botocore.exceptions import ClientError
from chalice import Chalice

app = Chalice(app_name="faults")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()

WORK_QUEUE = os.environ["WORK_QUEUE"]
TABLE = os.environ["TABLE"]

_dynamodb = boto3.client("dynamodb")
_sqs = boto3.client("sqs")


def _put(pk, **attributes):
    item = {"pk": {"S": pk}}
    item.update({k: {"S": str(v)} for k, v in attributes.items()})
    _dynamodb.put_item(TableName=TABLE, Item=item)


def _reply(connection_id, body):
    app.websocket_api.send(connection_id, json.dumps(body))


@app.on_ws_message()
def message(event):
    frame = json.loads(event.body)
    action, item_id = frame["action"], frame["id"]
    context = event.to_dict()["requestContext"]
    if action == "send":
        _dynamodb.transact_write_items(
            TransactItems=[{"Put": {"TableName": TABLE, "Item": {"pk": {"S": "msg#" + item_id}}}}]
        )
        url = _sqs.get_queue_url(QueueName=WORK_QUEUE)["QueueUrl"]
        body = {"id": item_id, "connection_id": event.connection_id,
                "domain": context["domainName"], "stage": context["stage"]}
        _sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body), MessageGroupId=event.connection_id)
        _reply(event.connection_id, {"ok": item_id})
    elif action == "count":
        _dynamodb.update_item(
            TableName=TABLE,
            Key={"pk": {"S": "count#" + item_id}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        _reply(event.connection_id, {"counted": item_id})
    elif action == "push":
        try:
            _reply(event.connection_id, {"push": item_id})
            outcome = "ok"
        except ClientError as exc:
            outcome = exc.response["Error"]["Code"]
        _put("push#" + item_id, outcome=outcome)
    elif action == "whoami":
        _reply(event.connection_id, {"connection_id": event.connection_id})
    elif action == "throttle":
        outcomes = {}
        for name, call in (
            ("dynamodb", lambda: _dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "none"}})),
            ("sqs", lambda: _sqs.get_queue_url(QueueName=WORK_QUEUE)),
        ):
            try:
                retries = call()["ResponseMetadata"]["RetryAttempts"]
                outcomes[name] = {"ok": True, "retries": retries}
            except ClientError as exc:
                outcomes[name] = {"ok": False, "code": exc.response["Error"]["Code"],
                                  "retries": exc.response["ResponseMetadata"]["RetryAttempts"]}
        _reply(event.connection_id, outcomes)


@app.on_ws_disconnect()
def disconnect(event):
    context = event.to_dict()["requestContext"]
    _put("disconnect#" + event.connection_id, code=context["disconnectStatusCode"])


@app.on_sqs_message(queue=WORK_QUEUE, batch_size=1)
def work(event):
    for record in event:
        body = json.loads(record.body)
        app.websocket_api.configure(body["domain"], body["stage"])
        attempt = int(record.to_dict()["attributes"]["ApproximateReceiveCount"])
        _reply(body["connection_id"], {"pushed": body["id"], "attempt": attempt})
        _put("consumed#" + body["id"], attempt=attempt)
