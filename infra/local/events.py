"""Pure builders of the events Lambda receives from API Gateway, SQS and EventBridge.

Nothing here touches a socket or a clock of its own: every time and identifier
comes in as an argument or from a generator that can be replaced in tests.
The shapes follow the events AWS documents and the pydantic models of
``aws_lambda_powertools.utilities.parser.models``, which the tests use to
validate them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any
from collections.abc import Mapping, Sequence

# API Gateway identifiers look like base64 of random bytes ("L0SM9cOFvHcCIhw=").
# We draw from the URL-safe alphabet so that ids can sit in a URL path unquoted,
# like the ids AWS hands out.
_ID_ALPHABET = string.ascii_letters + string.digits + "-_"

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's and LocalStack's default account


def new_aws_id(length: int = 15) -> str:
    """Return an AWS-looking identifier: ``length`` random characters and ``=``."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length)) + "="


def new_api_id() -> str:
    """Return a random API id, ten lower-case letters and digits like AWS's."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(10))


def now_ms() -> int:
    """Return the current Unix time in milliseconds."""
    return int(time.time() * 1000)


def request_time(epoch_ms: int) -> str:
    """Format ``epoch_ms`` like API Gateway's ``requestTime`` (CLF format)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%d/%b/%Y:%H:%M:%S +0000")


def iso8601(epoch_ms: int) -> str:
    """Format ``epoch_ms`` as ISO 8601 UTC with milliseconds, like AWS APIs do."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


@dataclass(frozen=True)
class ApiInfo:
    """What identifies one WebSocket API stage: it goes into every event."""

    api_id: str
    stage: str
    domain_name: str


@dataclass
class ConnectionInfo:
    """What API Gateway knows about one connection, shared by all its events."""

    connection_id: str
    connected_at_ms: int
    source_ip: str
    user_agent: str | None
    headers: dict[str, str] = field(default_factory=dict)
    multi_value_headers: dict[str, list[str]] = field(default_factory=dict)


def fold_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Fold header or query pairs like API Gateway: the single-value map keeps the last value."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value
        multi.setdefault(key, []).append(value)
    return single, multi


def _request_context(
    api: ApiInfo,
    conn: ConnectionInfo,
    route_key: str,
    event_type: str,
    epoch_ms: int,
) -> dict[str, Any]:
    identity: dict[str, Any] = {"sourceIp": conn.source_ip}
    if conn.user_agent is not None:
        identity["userAgent"] = conn.user_agent
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": new_aws_id(),
        "requestTime": request_time(epoch_ms),
        "messageDirection": "IN",
        "stage": api.stage,
        "connectedAt": conn.connected_at_ms,
        "requestTimeEpoch": epoch_ms,
        "identity": identity,
        "requestId": new_aws_id(),
        "domainName": api.domain_name,
        "connectionId": conn.connection_id,
        "apiId": api.api_id,
    }


def websocket_connect_event(
    api: ApiInfo,
    conn: ConnectionInfo,
    query_pairs: Sequence[tuple[str, str]] = (),
    epoch_ms: int | None = None,
) -> dict[str, Any]:
    """Build the ``$connect`` event: headers and query string of the handshake."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    event: dict[str, Any] = {
        "headers": dict(conn.headers),
        "multiValueHeaders": {k: list(v) for k, v in conn.multi_value_headers.items()},
        "requestContext": _request_context(api, conn, "$connect", "CONNECT", epoch_ms),
        "isBase64Encoded": False,
    }
    # For parity: AWS omits the query string keys when there is no query string.
    if query_pairs:
        single, multi = fold_pairs(query_pairs)
        event["queryStringParameters"] = single
        event["multiValueQueryStringParameters"] = multi
    return event


def websocket_message_event(
    api: ApiInfo,
    conn: ConnectionInfo,
    route_key: str,
    body: str | bytes,
    epoch_ms: int | None = None,
) -> dict[str, Any]:
    """Build a MESSAGE event for one frame; binary frames are base64-encoded."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    context = _request_context(api, conn, route_key, "MESSAGE", epoch_ms)
    context["messageId"] = new_aws_id()
    if isinstance(body, bytes):
        return {
            "requestContext": context,
            "body": base64.b64encode(body).decode("ascii"),
            "isBase64Encoded": True,
        }
    return {"requestContext": context, "body": body, "isBase64Encoded": False}


def websocket_disconnect_event(
    api: ApiInfo,
    conn: ConnectionInfo,
    status_code: int,
    reason: str,
    epoch_ms: int | None = None,
) -> dict[str, Any]:
    """Build the ``$disconnect`` event with the close status code and reason."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    context = _request_context(api, conn, "$disconnect", "DISCONNECT", epoch_ms)
    context["disconnectStatusCode"] = status_code
    context["disconnectReason"] = reason
    # For parity: AWS sends a few gateway headers with $disconnect, not the
    # handshake's headers.
    host = api.domain_name
    headers = {"Host": host, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }


def select_route(body: str | bytes, route_keys: Sequence[str] | Mapping[str, Any]) -> str | None:
    """Pick the route for a frame with the expression ``$request.body.action``.

    A JSON object whose ``action`` names a route goes there; anything else
    (non-JSON, binary, no or unknown action) goes to ``$default`` if it exists.
    Returns ``None`` when no route matches.
    """
    keys = set(route_keys)
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # a frame nested too deep for the decoder: $default
            parsed = None
        if isinstance(parsed, dict):
            action = parsed.get("action")
            if isinstance(action, str) and action in keys and not action.startswith("$"):
                return action
    return "$default" if "$default" in keys else None


def gateway_error_frame(message: str, connection_id: str, request_id: str) -> str:
    """Return the JSON frame API Gateway sends when it cannot deliver a message."""
    return json.dumps(
        {"message": message, "connectionId": connection_id, "requestId": request_id}
    )


# --- SQS ---------------------------------------------------------------------


def queue_arn(queue_name: str, region: str = DEFAULT_REGION, account: str = DEFAULT_ACCOUNT_ID) -> str:
    """Return the ARN of a queue from its name."""
    return f"arn:aws:sqs:{region}:{account}:{queue_name}"


def _lambda_message_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Convert SQS API message attributes to the camel-case shape Lambda delivers."""
    converted: dict[str, Any] = {}
    for name, value in attributes.items():
        item: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
        if "StringValue" in value:
            item["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            raw = value["BinaryValue"]
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            item["binaryValue"] = base64.b64encode(raw).decode("ascii")
        converted[name] = item
    return converted


def sqs_record(message: Mapping[str, Any], source_arn: str, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """Convert one message of an SQS ``ReceiveMessage`` response to a Lambda record."""
    body = message["Body"]
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": _lambda_message_attributes(message.get("MessageAttributes", {})),
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode("utf-8")).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": source_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def sqs_event(messages: Sequence[Mapping[str, Any]], source_arn: str, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """Build the event of one SQS batch."""
    return {"Records": [sqs_record(m, source_arn, region) for m in messages]}


# --- EventBridge schedules ----------------------------------------------------


def scheduled_event(
    rule_name: str,
    fired_at_ms: int | None = None,
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT_ID,
) -> dict[str, Any]:
    """Build the "Scheduled Event" EventBridge sends to a rule's target."""
    fired_at_ms = now_ms() if fired_at_ms is None else fired_at_ms
    # For parity: AWS stamps scheduled events with whole seconds.
    stamp = datetime.fromtimestamp(fired_at_ms // 1000, tz=UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule_name}"],
        "detail": {},
    }
