"""Test tiers by marker (registered in pytest.ini), and the guard that keeps ``fast`` honest.

``fast``: the pure core, the services on in-memory adapters, the property
tests, the storage contract on memory, the SDK's pure core and the pure
parts of the benchmarks (item sizes, the chaos checker and its verdicts):
no moto, no sockets, no subprocess (``make test-fast``).
``cloud``: in a module that starts the local cloud as a subprocess.
Everything else (moto in-process or as a server, aiohttp test servers,
the metered benchmarks) carries neither marker and runs in ``make test``.

A test cannot claim ``fast`` and then break its promise: while a fast
item's fixtures are set up and while it runs, connecting or binding a
socket, starting a process (``subprocess``, ``asyncio``) and starting
moto raise ``FastTierViolation``. Teardown is not guarded, so a session
fixture of another tier that ends after a fast item can still close.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.unix_events
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

TESTS = Path(__file__).resolve().parent

FAST_DIRS = ("unit", "property")
FAST_FILES = ("sdk/test_core.py", "bench/test_capacity.py", "bench/test_checker.py",
              "bench/test_chaos_verdict.py")
# Fast files of FAST_DIRS that need a socket or moto all the same.
NOT_FAST_FILES = ("unit/test_web_pages.py",)
CLOUD_DIRS = ("e2e",)
CLOUD_FILES = ("sdk/test_sdk_e2e.py", "sdk/test_sdk_domain.py", "local/test_aws_fidelity.py",
               "local/test_faults.py", "local/test_local_cloud_echo.py", "local/test_local_cloud_lifecycle.py",
               "local/test_cli.py")
# The storage fixtures of the contract suite: fast when the implementation is memory.
STORAGE_FIXTURES = ("storage", "concurrent_storage")

MESSAGE = "a fast test may not open sockets or start processes: mark it otherwise"


class FastTierViolation(RuntimeError):
    """A test marked ``fast`` opened a socket, started a process or started moto."""


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise FastTierViolation(f"{MESSAGE} ({what})")
    return refuse


async def _refuse_async(what: str) -> NoReturn:
    raise FastTierViolation(f"{MESSAGE} ({what})")


def _refuse_coroutine(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> Any:
        return _refuse_async(what)
    return refuse


# (owner, attribute): what a fast test may not call.
_BLOCKING = (
    (socket.socket, "connect"), (socket.socket, "connect_ex"), (socket.socket, "bind"),
    (socket, "create_connection"), (socket, "create_server"),
    (subprocess, "Popen"),
)
# The event loop's own ways out: coroutines, so the refusal is raised where they are awaited.
_ASYNC = (
    (asyncio.base_events.BaseEventLoop, "create_connection"),
    (asyncio.base_events.BaseEventLoop, "create_server"),
    (asyncio.base_events.BaseEventLoop, "create_datagram_endpoint"),
    (asyncio.base_events.BaseEventLoop, "subprocess_exec"),
    (asyncio.base_events.BaseEventLoop, "subprocess_shell"),
    (asyncio.unix_events._UnixSelectorEventLoop, "create_unix_connection"),
    (asyncio.unix_events._UnixSelectorEventLoop, "create_unix_server"),
    (asyncio, "create_subprocess_exec"), (asyncio, "create_subprocess_shell"),
    (asyncio.subprocess, "create_subprocess_exec"), (asyncio.subprocess, "create_subprocess_shell"),
)


@contextmanager
def fast_tier_guard() -> Iterator[None]:
    """Within this block sockets, processes and moto raise ``FastTierViolation``."""
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _BLOCKING:
            patch.setattr(owner, name, _refuse(f"{getattr(owner, '__name__', owner)}.{name}"))
        for owner, name in _ASYNC:
            patch.setattr(owner, name, _refuse_coroutine(f"{getattr(owner, '__name__', owner)}.{name}"))
        try:
            # Every way of starting moto in-process (mock_aws as a context manager,
            # a decorator or start()) goes through MockAWS.start.
            from moto.core.models import MockAWS
        except ImportError:
            pass
        else:
            patch.setattr(MockAWS, "start", _refuse("moto.mock_aws"))
        yield


@contextmanager
def _guarded(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("fast") is None:
        yield
    else:
        with fast_tier_guard():
            yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


def _is_fast(item: pytest.Item, relative: str) -> bool:
    if relative in NOT_FAST_FILES:
        return False
    if relative.split("/", 1)[0] in FAST_DIRS or relative in FAST_FILES:
        return True
    if relative.startswith("contract/"):
        params = getattr(getattr(item, "callspec", None), "params", {})
        return any(params.get(name) == "memory" for name in STORAGE_FIXTURES)
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(str(item.fspath)).resolve().relative_to(TESTS).as_posix()
        if _is_fast(item, relative):
            item.add_marker(pytest.mark.fast)
        if relative.split("/", 1)[0] in CLOUD_DIRS or relative in CLOUD_FILES:
            item.add_marker(pytest.mark.cloud)
