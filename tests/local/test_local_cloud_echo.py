"""End to end: the echo app in the local cloud, over real sockets.

One local cloud serves the whole module; every test opens its own
connections with the ``websockets`` client and checks AWS's behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any
from collections.abc import Callable

import pytest
import websockets
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.local_cloud import APPS_DIR, LocalCloud

ECHO_APP = APPS_DIR / "echo"


@pytest.fixture(scope="module")
def cloud():
    # one poller: the batching-window test counts what one poller gathers
    with LocalCloud(ECHO_APP, "--schedule-speed", "60", "--sqs-concurrency", "1") as running:
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def eventually(check: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


async def whoami(ws: Any) -> str:
    await ws.send(json.dumps({"action": "whoami"}))
    return json.loads(await ws.recv())["connection_id"]


def disconnect_record(cloud: LocalCloud, connection_id: str) -> dict[str, Any] | None:
    table = cloud.client("dynamodb")
    item = table.get_item(TableName="echo-local-events", Key={"pk": {"S": "disconnect#" + connection_id}}).get("Item")
    if item is None:
        return None
    return {"code": int(item["code"]["N"]), "reason": item["reason"]["S"]}


# --- WebSocket routes ------------------------------------------------------------


def test_echo_over_the_default_route(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send("not json at all")
            assert await ws.recv() == "not json at all"
            await ws.send(json.dumps({"action": "unknown-route", "x": 1}))
            assert json.loads(await ws.recv()) == {"action": "unknown-route", "x": 1}

    run(scenario())


@pytest.mark.parametrize("query, status", [("deny=1", 403), ("boom=1", 500)])
def test_connect_rejection_is_the_handshake_status(cloud, query, status):
    async def scenario():
        with pytest.raises(InvalidStatus) as caught:
            async with websockets.connect(f"{cloud.websocket_url}?{query}"):
                pass
        return caught.value.response.status_code

    assert run(scenario()) == status


def test_handler_exception_sends_internal_server_error_and_keeps_the_connection(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"action": "boom"}))
            error = json.loads(await ws.recv())
            assert error["message"] == "Internal server error"
            assert error["connectionId"] == connection_id
            assert error["requestId"]
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(scenario())


def test_frames_of_one_connection_are_handled_concurrently(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            for i in range(20):
                await ws.send(f"frame {i}")
            received = {await ws.recv() for _ in range(20)}
            assert received == {f"frame {i}" for i in range(20)}

    run(scenario())


def test_many_connections_at_once(cloud):
    async def one(i: int) -> str:
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send(f"hello {i}")
            return await ws.recv()

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(30)))

    assert run(scenario()) == [f"hello {i}" for i in range(30)]


# --- $disconnect ------------------------------------------------------------------


def test_disconnect_runs_on_client_close_with_its_status(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            connection_id = await whoami(ws)
            await ws.close(code=4001, reason="bye")
        return connection_id

    connection_id = run(scenario())
    assert eventually(lambda: disconnect_record(cloud, connection_id)) == {"code": 4001, "reason": "bye"}


def test_disconnect_runs_on_an_abrupt_drop(cloud):
    async def scenario():
        ws = await websockets.connect(cloud.websocket_url)
        connection_id = await whoami(ws)
        ws.transport.abort()  # TCP reset, no close frame
        return connection_id

    connection_id = run(scenario())
    assert eventually(lambda: disconnect_record(cloud, connection_id))["code"] == 1006


def test_oversize_message_closes_with_1009_and_runs_disconnect(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url, max_size=None) as ws:
            connection_id = await whoami(ws)
            await ws.send("x" * (128 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            return connection_id, caught.value.rcvd.code

    connection_id, code = run(scenario())
    assert code == 1009
    assert eventually(lambda: disconnect_record(cloud, connection_id))["code"] == 1009


def stored_item(cloud: LocalCloud, key: str) -> dict[str, Any] | None:
    item = cloud.client("dynamodb").get_item(TableName="echo-local-events", Key={"pk": {"S": key}}).get("Item")
    return {name: next(iter(value.values())) for name, value in item.items()} if item else None


def test_events_the_handlers_receive_validate_against_the_powertools_models(cloud):
    async def scenario():
        async with websockets.connect(
            cloud.websocket_url + "?record=1&tag=a&tag=b", additional_headers={"X-Test": "yes"}
        ) as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"action": "record"}))
            assert await ws.recv() == "recorded"
        return connection_id

    connection_id = run(scenario())
    connect = json.loads(eventually(lambda: stored_item(cloud, "connect#" + connection_id))["event"])
    message = json.loads(eventually(lambda: stored_item(cloud, "message#" + connection_id))["event"])
    disconnect = json.loads(eventually(lambda: stored_item(cloud, "disconnect#" + connection_id))["event"])

    parsed_connect = APIGatewayWebSocketConnectEventModel.model_validate(connect)
    parsed_message = APIGatewayWebSocketMessageEventModel.model_validate(message)
    parsed_disconnect = APIGatewayWebSocketDisconnectEventModel.model_validate(disconnect)
    for parsed in (parsed_connect, parsed_message, parsed_disconnect):
        assert parsed.request_context.connection_id == connection_id
        assert parsed.request_context.domain_name == f"127.0.0.1:{cloud.ws_port}"
        assert parsed.request_context.stage == "api"
    assert connect["headers"]["X-Test"] == "yes"
    assert connect["queryStringParameters"]["tag"] == "b"
    assert connect["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert parsed_message.request_context.route_key == "$default"
    assert parsed_disconnect.request_context.disconnect_status_code == 1000
    request_ids = {e["requestContext"]["requestId"] for e in (connect, message, disconnect)}
    assert len(request_ids) == 3


def test_management_api_answers_410_while_connect_runs(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url + "?record=1") as ws:
            return await whoami(ws)

    connection_id = run(scenario())
    assert eventually(lambda: stored_item(cloud, "connect#" + connection_id))["outcome"] == "gone"


# --- management API through boto3 -------------------------------------------------


def test_management_api_post_get_delete_through_boto3(cloud):
    management = cloud.client("apigatewaymanagementapi")

    async def scenario():
        async with websockets.connect(cloud.websocket_url, user_agent_header="echo-test/1.0") as ws:
            connection_id = await whoami(ws)
            await asyncio.to_thread(management.post_to_connection, ConnectionId=connection_id, Data=b"pushed")
            assert await ws.recv() == "pushed"
            await asyncio.to_thread(management.post_to_connection, ConnectionId=connection_id, Data=b"\xff\xfe")
            assert await ws.recv() == b"\xff\xfe"  # not UTF-8: a binary frame

            info = await asyncio.to_thread(management.get_connection, ConnectionId=connection_id)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            assert info["Identity"]["UserAgent"] == "echo-test/1.0"
            assert info["ConnectedAt"] <= info["LastActiveAt"]

            await asyncio.to_thread(management.delete_connection, ConnectionId=connection_id)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            with pytest.raises(management.exceptions.GoneException):
                await asyncio.to_thread(management.get_connection, ConnectionId=connection_id)
            return connection_id

    connection_id = run(scenario())
    assert eventually(lambda: disconnect_record(cloud, connection_id))["code"] == 1000


def test_management_api_answers_410_for_unknown_connections(cloud):
    management = cloud.client("apigatewaymanagementapi")
    with pytest.raises(management.exceptions.GoneException):
        management.post_to_connection(ConnectionId="NoSuchConn123=", Data=b"x")
    with pytest.raises(management.exceptions.GoneException):
        management.delete_connection(ConnectionId="NoSuchConn123=")


def test_management_api_rejects_payloads_over_128_kb(cloud):
    management = cloud.client("apigatewaymanagementapi")

    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            connection_id = await whoami(ws)
            with pytest.raises(management.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(
                    management.post_to_connection, ConnectionId=connection_id, Data=b"x" * (128 * 1024 + 1)
                )

    run(scenario())


# --- SQS event source -------------------------------------------------------------


def test_sqs_handler_sends_to_the_connection(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send(json.dumps({"action": "enqueue", "text": "via the queue"}))
            assert json.loads(await ws.recv()) == {"from_sqs": "via the queue"}

    run(scenario())


def test_sqs_batching_window_gathers_one_batch(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send(json.dumps({"action": "enqueue_many", "count": 3}))
            return json.loads(await ws.recv())

    assert run(scenario()) == {"batch": 3}


def test_failed_batch_is_redelivered_then_moved_to_the_dead_letter_queue(cloud):
    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"action": "poison"}))
            attempts = [json.loads(await ws.recv())["attempt"] for _ in range(3)]
            return connection_id, attempts

    connection_id, attempts = run(scenario())
    assert attempts == [1, 2, 3]  # maxReceiveCount is 3 in the template
    sqs = cloud.client("sqs")
    dlq = sqs.get_queue_url(QueueName="echo-local-jobs-dlq.fifo")["QueueUrl"]

    def dead_letters() -> list[dict[str, Any]]:
        return sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])

    messages = eventually(dead_letters)
    assert json.loads(messages[0]["Body"])["connection_id"] == connection_id


# --- schedules and REST -----------------------------------------------------------


def test_schedule_fires_with_speed_up(cloud):
    dynamodb = cloud.client("dynamodb")

    def fired() -> int:
        item = dynamodb.get_item(TableName="echo-local-events", Key={"pk": {"S": "schedule"}}).get("Item")
        return int(item["fired"]["N"]) if item else 0

    assert eventually(lambda: fired() >= 2)
    item = dynamodb.get_item(TableName="echo-local-events", Key={"pk": {"S": "schedule"}})["Item"]
    event = json.loads(item["last_event"]["S"])
    assert event["detail-type"] == "Scheduled Event"
    assert event["resources"][0].endswith(":rule/echo-local-tick")


def test_rest_route_sees_the_stage_environment(cloud):
    with urllib.request.urlopen(cloud.rest_url + "/hello", timeout=30) as response:
        assert json.loads(response.read()) == {"hello": "world", "greeting": "hello from the local stage"}


# --- embedded AWS -----------------------------------------------------------------


def test_stack_resources_exist_with_their_settings(cloud):
    sqs = cloud.client("sqs")
    url = sqs.get_queue_url(QueueName="echo-local-jobs.fifo")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["FifoQueue"] == "true"
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 3
    dynamodb = cloud.client("dynamodb")
    table = dynamodb.describe_table(TableName="echo-local-events")["Table"]
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["by-kind"]
    ttl = dynamodb.describe_time_to_live(TableName="echo-local-events")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
