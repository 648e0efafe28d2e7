"""What ``app.py`` needs at import time: nothing heavier than Chalice and boto3.

A cold start imports ``app.py`` before the first event. ``LazyHandlers``
stands in for ``chalicelib.handlers.Handlers`` and imports it (pydantic,
PyJWT, the services, the storage adapters) on the first event only, so
``import app`` costs about what ``import boto3`` costs (``make bench``
measures the ratio); ``chalice package`` and the local cloud's route
discovery never pay for the rest.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chalice.app import Chalice

    from chalicelib.handlers import Handlers


class LazyHandlers:
    """``Handlers(app)``, built on first use (thread-safe); every attribute is the real one's."""

    def __init__(self, app: Chalice) -> None:
        self._app = app
        self._real: Handlers | None = None
        self._lock = threading.Lock()

    def _handlers(self) -> Handlers:
        if self._real is None:
            with self._lock:
                if self._real is None:
                    from chalicelib.handlers import Handlers

                    self._real = Handlers(self._app)
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handlers(), name)
