"""The gateway on its own, in process: generic route keys and AWS's error frames."""

from __future__ import annotations

import asyncio
import json
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
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def with_gateway(routes: dict[str, Any], scenario: Any) -> Any:
    config = GatewayConfig(port=free_port(), stage="dev", api_id="abcde12345")
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


def test_management_errors_carry_the_aws_error_type():
    async def scenario(config: GatewayConfig) -> tuple[int, str | None, dict[str, Any]]:
        url = f"http://127.0.0.1:{config.port}/dev/@connections/Unknown12345="

        def call() -> tuple[int, str | None, dict[str, Any]]:
            request = urllib.request.Request(url, data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=5)
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
                urllib.request.urlopen(f"http://127.0.0.1:{config.port}/dev", timeout=5)
            except urllib.error.HTTPError as error:
                return error.code
            return 200

        return await asyncio.to_thread(call)

    assert asyncio.run(with_gateway({}, scenario)) == 426
