"""Point an unmodified app's ``apigatewaymanagementapi`` client at the emulator.

Why: Chalice builds the management endpoint itself, as
``https://{domain_name}/{stage}``, where the domain is either
``{api_id}.execute-api.{region}.amazonaws.com`` (inside WebSocket handlers,
from the event's ``apiId``) or whatever the app passed to
``websocket_api.configure()`` (typically the ``domainName`` recorded at
``$connect``). Neither is reachable locally: the first is AWS, the second is
``https`` on a plain-HTTP port. ``AWS_ENDPOINT_URL`` cannot help because an
explicit ``endpoint_url`` wins over it, and moto's management API accepts any
connection id without a WebSocket behind it.

So the runtime replaces ``app.websocket_api.session`` with
:class:`ManagementRedirectSession`, which wraps the app's own session: when a
management client is created with an ``endpoint_url``, it keeps the URL's
path (the stage) and swaps scheme, host and port for the emulator's. Every
other client and attribute passes through to the wrapped session untouched.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MANAGEMENT_SERVICE = "apigatewaymanagementapi"


def redirect_endpoint(endpoint_url: str, emulator_url: str) -> str:
    """Return ``endpoint_url`` with the scheme and authority of ``emulator_url``.

    >>> redirect_endpoint("https://abc.execute-api.us-east-1.amazonaws.com/api", "http://127.0.0.1:8001")
    'http://127.0.0.1:8001/api'
    """
    original = urlsplit(endpoint_url)
    target = urlsplit(emulator_url)
    return urlunsplit((target.scheme, target.netloc, original.path, original.query, original.fragment))


class ManagementRedirectSession:
    """A boto3-session proxy whose management clients talk to the local gateway."""

    def __init__(self, wrapped: Any, emulator_url: str) -> None:
        self._wrapped = wrapped
        self._emulator_url = emulator_url
        # boto3 sessions are not thread-safe while creating clients, and
        # handlers run on a thread pool: serialize client creation.
        self._lock = threading.Lock()

    def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
        """Create a client; management clients get the emulator's endpoint."""
        if service_name == MANAGEMENT_SERVICE:
            endpoint = kwargs.get("endpoint_url")
            kwargs["endpoint_url"] = redirect_endpoint(endpoint or "/", self._emulator_url)
        with self._lock:
            return self._wrapped.client(service_name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def install(app: Any, emulator_url: str) -> None:
    """Redirect ``app.websocket_api`` (if the app has one) to ``emulator_url``.

    The session is wrapped now and whenever the app assigns a new one later
    (some apps assign it lazily in a handler): the instance's class is
    swapped for a subclass whose ``session`` property wraps on assignment.
    For parity, an app that never assigns a session keeps ``None`` and gets
    Chalice's own ``ValueError``, exactly as it would on AWS.
    """
    websocket_api = getattr(app, "websocket_api", None)
    if websocket_api is None or isinstance(websocket_api, _RedirectingMixin):
        return
    current = websocket_api.__dict__.pop("session", None)
    websocket_api.__class__ = type(
        "Local" + type(websocket_api).__name__, (_RedirectingMixin, type(websocket_api)), {}
    )
    websocket_api._emulator_url = emulator_url
    websocket_api.session = current


class _RedirectingMixin:
    """Mixin for Chalice's ``WebsocketAPI`` that wraps every session assigned to it."""

    _emulator_url: str
    _local_session: Any = None

    @property
    def session(self) -> Any:
        """The (wrapped) boto3 session of the app."""
        return self._local_session

    @session.setter
    def session(self, value: Any) -> None:
        if value is not None and not isinstance(value, ManagementRedirectSession):
            value = ManagementRedirectSession(value, self._emulator_url)
        # For parity, a client Chalice already cached stays cached.
        self._local_session = value
