"""The gateway on its own, in process: generic route keys and AWS's error frames."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import websockets

from infra.local.gateway import GatewayConfig, WebSocketGateway
from tests.local_cloud import free_port


def post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def with_gateway(routes: dict[str, Any], scenario: Any, two_way: frozenset[str] = frozenset(),
                       concurrency: int = 8) -> Any:
    config = GatewayConfig(port=free_port(), stage="dev", api_id="abcde12345", two_way_routes=two_way,
                           frame_concurrency=concurrency)
    with ThreadPoolExecutor(4) as executor:
        gateway = WebSocketGateway(routes, config, executor)
        await gateway.start()
        try:
            return await asyncio.wait_for(scenario(config), 10)
        finally:
            await gateway.stop()


def test_custom_route_keys_and_forbidden_without_default():
    seen: list[str] = []

    def send_message(event: dict[str, Any]) -> None:
        context = event["requestContext"]
        seen.append(context["routeKey"])
        url = f"http://{context['domainName']}/{context['stage']}/@connections/{context['connectionId']}"
        assert post(url, b"handled by sendmessage") == 200

    async def scenario(config: GatewayConfig) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{config.port}/dev") as ws:
            await ws.send(json.dumps({"action": "sendmessage"}))
            assert await ws.recv() == "handled by sendmessage"
            await ws.send("no route for this")
            frame = json.loads(await ws.recv())
            assert frame["message"] == "Forbidden"
            assert frame["connectionId"] and frame["requestId"]

    asyncio.run(with_gateway({"sendmessage": send_message}, scenario))
    assert seen == ["sendmessage"]


def test_a_two_way_route_sends_what_its_integration_returns_and_a_one_way_route_drops_it(caplog):
    def answer(event: dict[str, Any]) -> dict[str, Any]:
        return {"statusCode": 200, "body": f"reply to {event['body']}"}

    # One frame of the connection at a time: a body sent for "quiet" would
    # arrive before the reply to "first".

    def nothing(event: dict[str, Any]) -> dict[str, Any]:
        return {"statusCode": 200}

    async def scenario(config: GatewayConfig) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{config.port}/dev") as ws:
            await ws.send(json.dumps({"action": "quiet"}))  # one-way: its body is dropped
            await ws.send(json.dumps({"action": "none"}))  # two-way, but no body: nothing sent
            await ws.send("first")
            assert await ws.recv() == "reply to first"
            await ws.send("second")  # the connection keeps working
            assert await ws.recv() == "reply to second"

    routes = {"$default": answer, "quiet": answer, "none": nothing}
    with caplog.at_level("WARNING", logger="infra.local.gateway"):
        asyncio.run(with_gateway(routes, scenario, two_way=frozenset({"$default", "none"}),
                                 concurrency=1))
    dropped = [r.getMessage() for r in caplog.records if "no route response" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].startswith("route quiet returned a body")


def test_management_errors_carry_the_aws_error_type():
    async def scenario(config: GatewayConfig) -> tuple[int, str | None, dict[str, Any]]:
        url = f"http://127.0.0.1:{config.port}/dev/@connections/Unknown12345="

        def call() -> tuple[int, str | None, dict[str, Any]]:
            request = urllib.request.Request(url, data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=30)
            error = caught.value
            return error.code, error.headers.get("x-amzn-ErrorType"), json.loads(error.read())

        return await asyncio.to_thread(call)

    status, error_type, body = asyncio.run(with_gateway({}, scenario))
    assert (status, error_type) == (410, "GoneException")
    assert "message" in body


def test_plain_http_on_the_stage_url_is_refused():
    async def scenario(config: GatewayConfig) -> int:
        def call() -> int:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{config.port}/dev", timeout=30)
            except urllib.error.HTTPError as error:
                return error.code
            return 200

        return await asyncio.to_thread(call)

    assert asyncio.run(with_gateway({}, scenario)) == 426


def test_a_flooding_connection_starves_neither_connect_nor_other_connections():
    """While every frame of one connection is stuck in its handler, others connect and get answers."""
    release = threading.Event()
    connects: list[str] = []

    def connect(event: dict[str, Any]) -> None:
        connects.append(event["requestContext"]["connectionId"])

    def default(event: dict[str, Any]) -> None:
        context = event["requestContext"]
        if event["body"].startswith("flood"):
            assert release.wait(30)
        url = f"http://{context['domainName']}/{context['stage']}/@connections/{context['connectionId']}"
        assert post(url, event["body"].encode()) == 200

    config = GatewayConfig(port=free_port(), stage="dev", max_queued_frames=10, frame_concurrency=2)
    frames = 2 + 10 + 5  # two running, ten waiting, five more

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{config.port}/dev"
        async with websockets.connect(url) as flooder:
            for i in range(frames):
                await flooder.send(f"flood {i}")
            # The five frames beyond the bound are throttled at once, and said so.
            throttled = [json.loads(await flooder.recv()) for _ in range(5)]
            assert {t["message"] for t in throttled} == {"Too Many Requests"}
            # Both of the flooder's slots are held; other connections still go through.
            for n in range(6):
                async with websockets.connect(url) as other:
                    await other.send(f"other {n}")
                    assert await other.recv() == f"other {n}"
            release.set()
            answers = {await flooder.recv() for _ in range(frames - 5)}
            assert answers == {f"flood {i}" for i in range(12)}

    async def main() -> None:
        # Four threads: the flooder may hold two of them; the rest serve the others.
        with ThreadPoolExecutor(4) as executor:
            gateway = WebSocketGateway({"$connect": connect, "$default": default}, config, executor)
            await gateway.start()
            try:
                await asyncio.wait_for(scenario(), 30)
                assert gateway.throttled == 5
            finally:
                release.set()
                await gateway.stop()

    asyncio.run(main())
    assert len(connects) == 7


def test_connect_never_waits_behind_frames():
    """Every frame thread busy: ``$connect`` of a new connection still runs."""
    release = threading.Event()

    def default(event: dict[str, Any]) -> None:
        assert release.wait(30)

    config = GatewayConfig(port=free_port(), stage="dev")

    async def main() -> None:
        with ThreadPoolExecutor(2) as executor:
            gateway = WebSocketGateway({"$connect": lambda event: None, "$default": default}, config, executor)
            await gateway.start()
            try:
                url = f"ws://127.0.0.1:{config.port}/dev"
                async with websockets.connect(url) as busy:
                    for i in range(4):
                        await busy.send(f"hold {i}")
                    async with asyncio.timeout(20):
                        async with websockets.connect(url) as newcomer:
                            assert newcomer.protocol.state.name == "OPEN"
            finally:
                release.set()
                await gateway.stop()

    asyncio.run(main())
