"""The REST API answers browser pages of another origin (the widget and the console, docs/web.md)."""

from __future__ import annotations

from chalice.config import Config
from chalice.local import LocalGateway

from app import app


def test_preflight_allows_any_origin_with_authorization_and_idempotency_key():
    gateway = LocalGateway(app, Config())
    response = gateway.handle_request("OPTIONS", "/conversations", headers={
        "origin": "https://shop.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,idempotency-key,content-type"}, body=b"")
    assert response["statusCode"] == 200
    headers = response["headers"]
    assert headers["Access-Control-Allow-Origin"] == "*"
    allowed = headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed
    assert "POST" in headers["Access-Control-Allow-Methods"]


def test_every_route_carries_the_cors_configuration():
    for path, methods in app.routes.items():
        for method, entry in methods.items():
            assert entry.cors is not None, f"{method} {path}"
