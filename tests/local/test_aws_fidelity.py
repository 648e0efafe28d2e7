"""AWS behaviours other people's apps rely on, through real sockets (tests/apps/fidelity).

Each test is one difference from AWS the local cloud once had: a trailing
slash on the WebSocket URL, binary frames, per-function environment
variables, an authorizer's ``UnauthorizedError``, oncechat's banner on
every project.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.local_cloud import APPS_DIR, REPO_ROOT, LocalCloud

FIDELITY_APP = APPS_DIR / "fidelity"


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(FIDELITY_APP) as running:
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body else None


def disconnect_code(cloud: LocalCloud, connection_id: str, timeout_s: float = 60.0) -> int:
    """Wait for the ``$disconnect`` of ``connection_id`` and return its status code."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, body = get(cloud.rest_url + "/disconnects")
        for record in (body or {}).get("disconnects", []):
            if record["connection_id"] == connection_id:
                return int(record["code"])
        time.sleep(0.1)
    raise AssertionError(f"no $disconnect for {connection_id}")


def test_websocket_url_with_a_trailing_slash_connects(cloud):
    async def scenario() -> None:
        async with websockets.connect(cloud.websocket_url + "/") as ws:
            await ws.send("through the trailing slash")
            assert await ws.recv() == "through the trailing slash"

    run(scenario())


def test_binary_frame_closes_the_connection_with_1003_and_invokes_nothing(cloud):
    management = cloud.client("apigatewaymanagementapi")

    async def scenario() -> tuple[str, int]:
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send("whoami")
            connection_id = await ws.recv()
            await ws.send(b"\x00\x01binary")
            with pytest.raises(ConnectionClosed) as closed:
                # Nothing comes back for the binary frame: no invocation echoes it.
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1003
            return str(connection_id), closed.value.rcvd.code

    connection_id, _ = run(scenario())
    assert disconnect_code(cloud, connection_id) == 1003
    with pytest.raises(management.exceptions.GoneException):
        management.get_connection(ConnectionId=connection_id)


def test_each_function_sees_only_its_own_lambda_functions_variables(cloud):
    async def ws_env() -> dict[str, Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send("env")
            return dict(json.loads(await ws.recv()))

    message_env = run(ws_env())
    status, rest_env = get(cloud.rest_url + "/env")
    assert status == 200
    # Chalice scopes a WebSocket handler's settings by its own name for the
    # function (websocket_message), not the Python function's (message).
    assert message_env == {
        "SHARED": "message's override",
        "ONLY_MESSAGE": "message's own",
        "ONLY_API": None,
        "ONLY_AUTHORIZER": None,
        "BY_PYTHON_NAME": None,
    }
    assert rest_env == {"SHARED": "stage", "ONLY_MESSAGE": None, "ONLY_API": "api_handler's own",
                        "ONLY_AUTHORIZER": None, "BY_PYTHON_NAME": None}
    # The authorizer is a function of its own: it passes only if it sees its variable.
    assert get(cloud.rest_url + "/private", {"Authorization": "env"})[0] == 200


@pytest.mark.parametrize(
    "token, status, body",
    [
        ("allow", 200, {"ok": True}),
        ("deny", 401, {"message": "Unauthorized"}),
        ("boom", 500, {"message": None}),
    ],
)
def test_authorizer_outcomes_are_api_gateway_answers(cloud, token, status, body):
    assert get(cloud.rest_url + "/private", {"Authorization": token}) == (status, body)


def test_missing_token_is_401(cloud):
    assert get(cloud.rest_url + "/private")[0] == 401


def test_banner_of_another_project_has_no_oncechat_token_hint(cloud):
    assert not any("Dev token" in line or "make token" in line for line in cloud.output)
    assert any(line.startswith("WebSocket API:") for line in cloud.output)


def test_banner_of_oncechat_has_the_token_hint():
    with LocalCloud(REPO_ROOT) as oncechat:
        assert any(line.startswith("Dev token:") for line in oncechat.output)
