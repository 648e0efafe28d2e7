"""The management-client redirection installed into Chalice apps."""

from __future__ import annotations

import boto3
import pytest
from chalice import Chalice

from infra.local import redirect


def test_redirect_keeps_the_stage_path():
    assert (
        redirect.redirect_endpoint("https://abc.execute-api.us-east-1.amazonaws.com/prod", "http://127.0.0.1:8001")
        == "http://127.0.0.1:8001/prod"
    )
    assert redirect.redirect_endpoint("https://127.0.0.1:8001/api", "http://127.0.0.1:9") == "http://127.0.0.1:9/api"


def _session() -> boto3.session.Session:
    return boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_installed_app_builds_management_clients_on_the_emulator():
    app = Chalice("t")
    app.websocket_api.session = _session()
    redirect.install(app, "http://127.0.0.1:8001")
    app.websocket_api.configure_from_api_id("abcde12345", "api")
    assert app.websocket_api._get_client().meta.endpoint_url == "http://127.0.0.1:8001/api"


def test_other_services_pass_through():
    session = redirect.ManagementRedirectSession(_session(), "http://127.0.0.1:8001")
    assert session.client("sqs", endpoint_url="http://127.0.0.1:4566").meta.endpoint_url == "http://127.0.0.1:4566"
    assert session.region_name == "us-east-1"


def test_session_assigned_after_install_is_wrapped_too():
    app = Chalice("t")
    redirect.install(app, "http://127.0.0.1:8001")
    assert app.websocket_api.session is None
    app.websocket_api.session = _session()
    app.websocket_api.configure("example.com", "dev")
    assert app.websocket_api._get_client().meta.endpoint_url == "http://127.0.0.1:8001/dev"


def test_app_without_session_fails_like_on_aws():
    app = Chalice("t")
    redirect.install(app, "http://127.0.0.1:8001")
    app.websocket_api.configure("example.com", "dev")
    with pytest.raises(ValueError, match="session"):
        app.websocket_api.send("abc=", "hi")
