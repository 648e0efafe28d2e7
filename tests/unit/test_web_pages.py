"""The web pages' servers without a browser: the local cloud's web server and the S3 publisher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import boto3
import jwt
import yaml
from aiohttp.test_utils import TestClient, TestServer
from moto import mock_aws

from infra import web as publisher
from infra.local.web import WebServer, content_security_policy

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "oncechat-local-development-secret"


def _server(secret: str | None = SECRET) -> WebServer:
    return WebServer(REPO_ROOT / "web", "127.0.0.1", 0, "http://127.0.0.1:8000", "ws://127.0.0.1:8001/api",
                     "local", secret)


def _run(server: WebServer, calls):
    async def go():
        async with TestClient(TestServer(server.build_app())) as client:
            return await calls(client)
    return asyncio.run(go())


def test_pages_are_served_with_the_csp_and_config_names_the_apis():
    async def calls(client):
        page = await client.get("/")
        console = await client.get("/console")
        module = await client.get("/sdk/oncechat.js")
        config = await client.get("/config.json")
        return page, await page.text(), console.status, module.headers["Content-Type"], await config.json()

    page, html, console_status, module_type, config = _run(_server(), calls)
    assert page.status == 200 and "<oncechat-widget" in html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    assert "connect-src 'self' http://127.0.0.1:8000 ws://127.0.0.1:8001" in csp
    assert console_status == 200 and module_type.startswith("text/javascript")
    assert config == {"restUrl": "http://127.0.0.1:8000", "websocketUrl": "ws://127.0.0.1:8001/api",
                      "tokenUrl": "/dev/token", "stage": "local", "devSignIn": True}


def test_no_file_outside_the_web_directory_is_served():
    async def calls(client):
        return [(await client.get(p)).status for p in ("/../app.py", "/%2e%2e/app.py", "/missing.js")]

    assert _run(_server(), calls) == [404, 404, 404]


def test_dev_token_signs_with_the_stage_secret_and_checks_its_input():
    async def calls(client):
        ok = await (await client.post("/dev/token", json={"sub": "agent-1", "role": "agent"})).json()
        bad_role = (await client.post("/dev/token", json={"sub": "x", "role": "admin"})).status
        bad_sub = (await client.post("/dev/token", json={"sub": "a#b", "role": "agent"})).status
        return ok, bad_role, bad_sub

    ok, bad_role, bad_sub = _run(_server(), calls)
    claims = jwt.decode(ok["token"], SECRET, algorithms=["HS256"], audience="oncechat", issuer="oncechat")
    assert (claims["sub"], claims["role"]) == ("agent-1", "agent")
    assert bad_role == 400 and bad_sub == 400


def test_a_stage_without_a_secret_has_no_dev_sign_in():
    async def calls(client):
        return (await client.post("/dev/token", json={"sub": "a", "role": "agent"})).status, \
            await (await client.get("/config.json")).json()

    status, config = _run(_server(None), calls)
    assert status == 404 and config["tokenUrl"] is None and config["devSignIn"] is False


def test_csp_forbids_inline_script_and_framing():
    csp = content_security_policy(["https://api.example.com"])
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


@mock_aws
def test_publish_uploads_every_file_with_its_type_and_a_config_from_the_deployment(tmp_path):
    deployed = tmp_path / ".chalice" / "deployed"
    deployed.mkdir(parents=True)
    (deployed / "prod.json").write_text(json.dumps({"resources": [
        {"resource_type": "rest_api", "rest_api_url": "https://r1.execute-api.eu-west-1.amazonaws.com/api/"},
        {"resource_type": "websocket_api", "websocket_api_url": "wss://w1.execute-api.eu-west-1.amazonaws.com/api/"},
    ]}))
    urls = publisher.deployed_urls(tmp_path, "prod")
    config = publisher.web_config(urls["restUrl"], urls["websocketUrl"], "https://www.example.com/token", "prod")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="web")
    keys = publisher.publish(s3, "web", REPO_ROOT / "web", config)
    assert {"index.html", "console.html", "console", "sdk/oncechat.js", "widget/oncechat-widget.js",
            "config.json"} <= set(keys)
    module = s3.get_object(Bucket="web", Key="sdk/oncechat.js")
    assert module["ContentType"] == "text/javascript; charset=utf-8"
    assert s3.get_object(Bucket="web", Key="console")["ContentType"].startswith("text/html")
    written = json.loads(s3.get_object(Bucket="web", Key="config.json")["Body"].read())
    assert written == {"restUrl": "https://r1.execute-api.eu-west-1.amazonaws.com/api",
                       "websocketUrl": "wss://w1.execute-api.eu-west-1.amazonaws.com/api",
                       "tokenUrl": "https://www.example.com/token", "stage": "prod", "devSignIn": False}


def test_web_template_keeps_the_bucket_private_and_sends_the_csp():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: (
        loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node)))
    template = yaml.load((REPO_ROOT / "infra" / "web.yaml").read_text(), Loader=Loader)
    resources = template["Resources"]
    block = resources["WebBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    assert all(block.values())
    headers = resources["WebHeaders"]["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    assert "script-src 'self';" in headers["ContentSecurityPolicy"]["ContentSecurityPolicy"]
    assert set(template["Outputs"]) == {"WebBucketName", "WebDistributionId", "WebUrl"}
