"""Fixtures of the browser tests: one local cloud per module, one Chromium per session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.local_cloud import REPO_ROOT, LocalCloud
from tests.web.browser import launch, reset_desk


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Per module, not per session: Playwright's sync API keeps an event loop
    # running in this thread while it is open, and other test packages call
    # asyncio.run() in the same session.
    with sync_playwright() as playwright:
        chromium = launch(playwright)  # fails (never skips) without Chromium
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1") as running:
        yield running


@pytest.fixture
def contexts(browser: Any, cloud: LocalCloud) -> Iterator[Any]:
    """``contexts()`` opens a new browser profile; all are closed and the desk reset after the test."""
    opened: list[Any] = []

    def new(**options: Any) -> Any:
        context = browser.new_context(**options)
        context.set_default_timeout(60_000)
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()
    reset_desk(cloud)
