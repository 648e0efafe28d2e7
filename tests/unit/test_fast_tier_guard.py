"""A test marked ``fast`` cannot open a socket, start a process or start moto (tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.conftest import MESSAGE, FastTierViolation, fast_tier_guard

pytest_plugins = ["pytester"]

INNER = '''
import asyncio
import socket
import subprocess

import pytest

pytestmark = pytest.mark.fast


def test_connects_a_socket():
    with socket.socket() as s:
        s.connect(("127.0.0.1", 9))


def test_binds_a_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


def test_creates_a_connection():
    socket.create_connection(("127.0.0.1", 9), timeout=0.1)


def test_starts_a_process():
    subprocess.run(["true"], check=True)


def test_opens_an_asyncio_connection():
    asyncio.run(asyncio.open_connection("127.0.0.1", 9))


def test_starts_an_asyncio_process():
    async def go():
        await asyncio.create_subprocess_exec("true")
    asyncio.run(go())


def test_starts_moto():
    from moto import mock_aws
    with mock_aws():
        pass


@pytest.fixture
def server_socket():
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def test_has_a_fixture_that_listens(server_socket):
    pass


def test_stays_pure():
    assert asyncio.run(asyncio.sleep(0, "pure")) == "pure"
'''

BROKEN = ("connects_a_socket", "binds_a_socket", "creates_a_connection", "starts_a_process",
          "opens_an_asyncio_connection", "starts_an_asyncio_process", "starts_moto")


def test_a_fast_test_that_opens_a_socket_or_starts_a_process_or_moto_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import pytest_runtest_call, pytest_runtest_setup")
    pytester.makepyfile(test_inner=INNER)
    reports = pytester.inline_run("-p", "no:cacheprovider")
    reports.assertoutcome(passed=1, failed=len(BROKEN) + 1)  # the fixture's refusal is an error at setup
    refused = {report.head_line: (report.when, str(report.longrepr))
               for report in reports.getreports("pytest_runtest_logreport") if report.failed}
    assert set(refused) == {f"test_{name}" for name in BROKEN} | {"test_has_a_fixture_that_listens"}
    assert refused.pop("test_has_a_fixture_that_listens")[0] == "setup"
    for when, text in refused.values():
        assert when == "call" and f"FastTierViolation: {MESSAGE}" in text


def test_the_guard_refuses_only_inside_its_block() -> None:
    before = (socket.socket.connect, socket.create_connection, subprocess.Popen)
    with fast_tier_guard(), pytest.raises(FastTierViolation, match="mark it otherwise"):
        socket.create_connection(("127.0.0.1", 9))
    assert (socket.socket.connect, socket.create_connection, subprocess.Popen) == before
