"""The event builders, in process: shapes checked against the powertools models."""

from __future__ import annotations

import base64

from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
    EventBridgeModel,
    SqsModel,
)

from infra.local import events

API = events.ApiInfo(api_id="abcde12345", stage="api", domain_name="127.0.0.1:8001")


def connection() -> events.ConnectionInfo:
    headers, multi = events.fold_pairs([("Host", "127.0.0.1:8001"), ("X-Many", "1"), ("X-Many", "2")])
    return events.ConnectionInfo(
        connection_id=events.new_aws_id(),
        connected_at_ms=1_700_000_000_000,
        source_ip="127.0.0.1",
        user_agent="test-agent",
        headers=headers,
        multi_value_headers=multi,
    )


def test_connect_event_validates_and_carries_the_handshake():
    conn = connection()
    event = events.websocket_connect_event(API, conn, [("a", "1"), ("a", "2"), ("b", "x")], epoch_ms=1_700_000_000_123)
    parsed = APIGatewayWebSocketConnectEventModel.model_validate(event)
    assert parsed.request_context.route_key == "$connect"
    assert parsed.request_context.event_type == "CONNECT"
    assert event["queryStringParameters"] == {"a": "2", "b": "x"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x"]}
    assert event["headers"]["X-Many"] == "2" and event["multiValueHeaders"]["X-Many"] == ["1", "2"]
    assert event["requestContext"]["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "test-agent"}
    assert event["requestContext"]["requestTimeEpoch"] == 1_700_000_000_123
    assert event["requestContext"]["requestTime"] == "14/Nov/2023:22:13:20 +0000"


def test_connect_event_without_query_string_has_no_query_keys():
    event = events.websocket_connect_event(API, connection())
    assert "queryStringParameters" not in event
    assert "multiValueQueryStringParameters" not in event


def test_message_event_validates_with_fresh_ids():
    conn = connection()
    first = events.websocket_message_event(API, conn, "$default", '{"action": "x"}')
    second = events.websocket_message_event(API, conn, "$default", "plain")
    for event in (first, second):
        parsed = APIGatewayWebSocketMessageEventModel.model_validate(event)
        assert parsed.request_context.event_type == "MESSAGE"
        assert parsed.request_context.message_direction == "IN"
        assert parsed.request_context.connection_id == conn.connection_id
    assert first["requestContext"]["requestId"] != second["requestContext"]["requestId"]
    assert first["requestContext"]["messageId"] != second["requestContext"]["messageId"]


def test_binary_message_is_base64_encoded():
    event = events.websocket_message_event(API, connection(), "$default", b"\x00\xff")
    APIGatewayWebSocketMessageEventModel.model_validate(event)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xff"


def test_disconnect_event_validates_with_status_and_reason():
    event = events.websocket_disconnect_event(API, connection(), 1001, "Going away")
    parsed = APIGatewayWebSocketDisconnectEventModel.model_validate(event)
    assert parsed.request_context.disconnect_status_code == 1001
    assert parsed.request_context.disconnect_reason == "Going away"


def test_connection_ids_look_like_aws_ids():
    ids = {events.new_aws_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and i.endswith("=") and "/" not in i and "+" not in i for i in ids)


def test_route_selection_uses_the_action_of_json_objects():
    routes = {"$connect": 1, "$default": 2, "sendmessage": 3}
    assert events.select_route('{"action": "sendmessage"}', routes) == "sendmessage"
    assert events.select_route('{"action": "nope"}', routes) == "$default"
    assert events.select_route('{"action": "$connect"}', routes) == "$default"
    assert events.select_route("not json", routes) == "$default"
    assert events.select_route('["action"]', routes) == "$default"
    assert events.select_route(b'{"action": "sendmessage"}', routes) == "$default"
    assert events.select_route('{"action": "nope"}', {"sendmessage": 3}) is None


def test_sqs_event_validates_and_converts_message_attributes():
    message = {
        "MessageId": "3f1c9d5e-0000-4000-8000-000000000001",
        "ReceiptHandle": "handle",
        "MD5OfBody": "5d41402abc4b2a76b9719d911017c592",
        "Body": "hello",
        "Attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1700000000000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1700000000001",
            "MessageGroupId": "g1",
            "MessageDeduplicationId": "d1",
            "SequenceNumber": "1",
        },
        "MessageAttributes": {
            "kind": {"DataType": "String", "StringValue": "echo"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
        },
    }
    arn = events.queue_arn("jobs.fifo")
    event = events.sqs_event([message], arn)
    SqsModel.model_validate(event)
    record = event["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:jobs.fifo"
    assert record["attributes"]["MessageGroupId"] == "g1"
    assert record["messageAttributes"]["kind"]["stringValue"] == "echo"
    assert record["messageAttributes"]["blob"]["binaryValue"] == "AQI="


def test_scheduled_event_validates_as_an_eventbridge_event():
    event = events.scheduled_event("app-local-tick", fired_at_ms=1_700_000_000_999)
    parsed = EventBridgeModel.model_validate(event)
    assert parsed.detail_type == "Scheduled Event"
    assert event["time"] == "2023-11-14T22:13:20Z"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/app-local-tick"]


def test_iso8601_keeps_milliseconds():
    assert events.iso8601(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
