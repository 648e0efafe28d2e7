"""Markers by what a test needs (registered in pytest.ini).

``fast``: the pure core, the services on in-memory adapters, the property
tests, the storage contract on memory, the SDK's pure core and the chaos
checker: no moto, no sockets, no subprocess (``make test-fast``).
``cloud``: in a module that starts the local cloud as a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

FAST_DIRS = ("unit", "property", "bench")
FAST_FILES = ("sdk/test_core.py",)
CLOUD_DIRS = ("e2e",)
CLOUD_FILES = ("sdk/test_sdk_e2e.py", "sdk/test_sdk_domain.py", "local/test_aws_fidelity.py",
               "local/test_faults.py", "local/test_local_cloud_echo.py", "local/test_local_cloud_lifecycle.py",
               "local/test_cli.py")
# The storage fixtures of the contract suite: fast when the implementation is memory.
STORAGE_FIXTURES = ("storage", "concurrent_storage")


def _is_fast(item: pytest.Item, relative: str) -> bool:
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
