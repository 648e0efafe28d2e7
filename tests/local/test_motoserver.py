"""The local cloud's moto server over real HTTP: one connection carries many requests."""

from __future__ import annotations

import http.client
import json

from infra.local.aws import MotoServer
from tests.local_cloud import free_port

HEADERS = {"Content-Type": "application/x-amz-json-1.0",
           "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, "
                            "SignedHeaders=host, Signature=0"}


def call(conn: http.client.HTTPConnection, operation: str, payload: dict) -> tuple[int, dict, dict]:
    conn.request("POST", "/", body=json.dumps(payload),
                 headers={**HEADERS, "X-Amz-Target": f"DynamoDB_20120810.{operation}"})
    response = conn.getresponse()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(body or b"{}")


def test_one_connection_carries_requests_and_errors_and_stays_open():
    server = MotoServer("127.0.0.1", free_port())
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1]), timeout=30)
        status, headers, _ = call(conn, "CreateTable", {
            "TableName": "t", "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}]})
        assert status == 200 and headers.get("connection") != "close"
        sock = conn.sock
        put = {"TableName": "t", "Item": {"k": {"S": "a"}}, "ConditionExpression": "attribute_not_exists(k)"}
        assert call(conn, "PutItem", put)[0] == 200
        status, headers, body = call(conn, "PutItem", put)  # an error answer keeps the connection too
        assert status == 400 and body["__type"].endswith("ConditionalCheckFailedException")
        assert headers["content-length"] and headers.get("connection") != "close"
        status, _, body = call(conn, "GetItem", {"TableName": "t", "Key": {"k": {"S": "a"}}})
        assert status == 200 and body["Item"] == {"k": {"S": "a"}}
        assert conn.sock is sock  # every request went over the first connection
        conn.close()
    finally:
        server.stop()
