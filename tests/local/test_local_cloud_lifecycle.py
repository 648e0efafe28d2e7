"""End to end: a project without a template, connection limits, and shutdown.

The cloud of this module runs with short limits (idle 1.5 s, maximum
duration 4 s); its last test stops it with SIGINT and checks that no
process is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.local_cloud import APPS_DIR, LocalCloud

BARE_APP = APPS_DIR / "bare"


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(
        BARE_APP, "--idle-timeout", "1.5", "--max-connection-duration", "4", api_stage="ws"
    ) as running:
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def disconnects(cloud: LocalCloud) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(cloud.rest_url + "/disconnects", timeout=30) as response:
        return {d["connection_id"]: d for d in json.loads(response.read())["disconnects"]}


def wait_for_disconnect(cloud: LocalCloud, known: set[str], timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = {k: v for k, v in disconnects(cloud).items() if k not in known}
        if new:
            return next(iter(new.values()))
        time.sleep(0.1)
    raise AssertionError("no $disconnect recorded")


def test_project_without_template_starts_and_echoes(cloud):
    assert "no infra/template.yaml" in cloud.log()

    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send("hello")
            return await ws.recv()

    assert run(scenario()) == "hello"


def test_idle_connection_is_closed_with_going_away(cloud):
    known = set(disconnects(cloud))

    async def scenario():
        async with websockets.connect(cloud.websocket_url, ping_interval=None) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            return caught.value.rcvd.code, time.monotonic() - started

    code, elapsed = run(scenario())
    assert code == 1001
    assert elapsed > 1.2  # not before the idle timeout (1.5 s); later only on a slow machine
    assert wait_for_disconnect(cloud, known)["code"] == 1001


def test_maximum_duration_closes_an_active_connection(cloud):
    known = set(disconnects(cloud))

    async def scenario():
        async with websockets.connect(cloud.websocket_url) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as caught:
                while True:  # keep it active: only the maximum duration can end it
                    await ws.send("tick")
                    assert await ws.recv() == "tick"
                    await asyncio.sleep(0.5)
            return caught.value.rcvd.code, time.monotonic() - started

    code, elapsed = run(scenario())
    assert code == 1001
    assert elapsed > 3  # not before the maximum duration (4 s); later only on a slow machine
    assert wait_for_disconnect(cloud, known)["code"] == 1001


def test_configured_endpoint_is_used_instead_of_moto(cloud):
    with LocalCloud(BARE_APP, "--aws-endpoint", cloud.aws_endpoint, api_stage="ws") as second:
        assert "starting moto server" not in second.log()
        assert f"AWS endpoint:    {cloud.aws_endpoint}" in second.output
        assert not _children(second.process.pid)

        async def scenario():
            async with websockets.connect(second.websocket_url) as ws:
                await ws.send("through the second cloud")
                return await ws.recv()

        assert run(scenario()) == "through the second cloud"


def _children(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigint_stops_everything_and_exits_0(cloud):
    process = cloud.process
    assert process is not None
    moto = [pid for pid in _children(process.pid) if "infra.local.motoserver" in open(f"/proc/{pid}/cmdline").read()]
    assert len(moto) == 1

    async def open_connection_sees_going_away() -> int:
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            os.kill(process.pid, signal.SIGINT)  # only the parent, like a polite Ctrl-C
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            return caught.value.rcvd.code

    assert run(open_connection_sees_going_away()) == 1001
    assert process.wait(60) == 0
    deadline = time.monotonic() + 5
    while _alive(moto[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(moto[0])
    assert "stopping" in cloud.log()
