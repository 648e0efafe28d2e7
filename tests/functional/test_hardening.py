"""Bad input at app.py's real handlers (moto in-process): each reproduction of the
production-readiness audit, tokens, fail-closed configuration, limits."""

from __future__ import annotations

import json
import logging
import time

import boto3
import jwt
import pytest

from chalicelib.auth import mint_token
from tests.functional.conftest import REGION, SECRET
from tests.functional.test_handlers import TABLE, chat, send, table_items  # noqa: F401

BOTOCORE_WORDS = ("botocore", "An error occurred", "ResourceNotFound", "oncechat-test-", "operation")


def deep(n: int) -> str:
    return "[" * n + "]" * n


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def stored(name: str) -> int:
    return len(table_items(name))


# ------------------------------------------------------------- bad frames


@pytest.mark.parametrize("make", [
    lambda cid: '{"action":"send","conversationId":"%s","messageId":"m1","body":"a\\ud800b"}' % cid,
    lambda cid: '{"action":"send","conversationId":"%s","messageId":"m\\ud800","body":"x"}' % cid,
    lambda cid: '{"action":"send","conversationId":"%s","messageId":"m1","body":"\\udfff"}' % cid,
    lambda cid: '{"action":"resume","cursors":{"\\ud800":1}}',
    lambda cid: '{"action":"send","x":%s,"conversationId":"%s","messageId":"m1","body":"x"}' % (
        deep(1000), cid),
    lambda cid: deep(1000),
    lambda cid: '{"a":' * 5000 + "1" + "}" * 5000,
    lambda cid: '{"action":"ack","conversationId":"%s","seq":%d}' % (cid, 10**40),
    lambda cid: '{"action":"resume","cursors":{"%s":%d}}' % (cid, 2**53),
], ids=["surrogate-body", "surrogate-messageId", "low-surrogate", "surrogate-key", "deep-field",
        "deep-1000", "deep-5000", "huge-seq", "seq-2^53"])
def test_malformed_frame_is_bad_request_nothing_stored_connection_usable(chat, caplog, make):
    cloud, customer, agent, cid = chat
    before = stored("messages"), stored("idempotency")
    caplog.set_level(logging.INFO, logger="oncechat")
    err = cloud.frame(customer, make(cid))
    assert err["type"] == "error" and err["code"] == "bad_request", err
    assert "messageId" not in err or err["messageId"] == "m1"
    assert (stored("messages"), stored("idempotency")) == before
    assert not tracebacks(caplog)
    assert send(cloud, customer, cid, "m1", "fine")["type"] == "accepted"


def test_error_reply_to_a_connection_that_just_closed_is_not_an_error(chat, caplog):
    cloud, customer, agent, cid = chat
    caplog.set_level(logging.INFO, logger="oncechat")
    cloud.pushes.gone.add(customer)
    for raw in ("{not json", deep(1000), '{"action":"fly"}',
                json.dumps({"action": "send", "conversationId": cid, "messageId": "g1", "body": "x"})):
        assert cloud.frame(customer, raw) is None  # the handler returns normally
    assert not tracebacks(caplog)
    assert any("left before its reply" in r.getMessage() for r in caplog.records)


def test_storage_errors_never_reach_clients(chat, caplog):
    cloud, customer, agent, cid = chat
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.delete_table(TableName=TABLE + "limits")  # REST writes count in it
    ddb.update_table(TableName=TABLE + "idempotency", DeletionProtectionEnabled=False)
    ddb.delete_table(TableName=TABLE + "idempotency")  # a send stores in it
    err = send(cloud, customer, cid, "m-lost")
    assert err["type"] == "error" and err["code"] == "internal"
    assert err["message"].startswith("internal error; retry")
    status, body = cloud.rest("POST", "/conversations", "cust-2")
    assert status == 500 and body == {"code": "internal", "message": "internal error; retry later"}
    for text in (json.dumps(err), json.dumps(body)):
        assert not any(word in text for word in BOTOCORE_WORDS), text


# ------------------------------------------------------------- REST


def test_rest_deep_json_and_surrogates_are_400(chat, caplog):
    cloud, customer, agent, cid = chat
    caplog.set_level(logging.INFO, logger="oncechat")
    for body in (deep(1000), '{"status":' + deep(1000) + "}", '{"status":"\\ud800"}',
                 '{"a":' * 3000 + "1" + "}" * 3000):
        status, resp = cloud.rest("PUT", "/agents/me/status", "agent-1", "agent", body=body)
        assert status == 400 and resp["code"] == "bad_request", resp
    status, resp = cloud.rest("POST", f"/conversations/{cid}/transfer", "agent-1", "agent",
                              body='{"agentId":"a\\udc00"}')
    assert status == 400 and resp["code"] == "bad_request"
    assert not tracebacks(caplog)


@pytest.mark.parametrize("path", [
    "/conversations/a.b", "/conversations/" + "x" * 129, "/conversations/a,b/messages",
    "/conversations/~x/close", "/conversations/a$b/transfer",
])
def test_rest_path_ids_are_checked(chat, path):
    cloud, *_ = chat
    method = "POST" if path.endswith(("close", "transfer")) else "GET"
    status, body = cloud.rest(method, path, "agent-1", "agent", body={"agentId": "x"})
    assert status == 400 and body["code"] == "bad_request"


@pytest.mark.parametrize("query", [
    "after=100000000000000000000000000000000000000000", "before=9007199254740992",
    "after=9007199254740992", "after=-1", "before=0", "after=1e3", "limit=%201",
])
def test_history_bounds(chat, query):
    cloud, customer, agent, cid = chat
    status, body = cloud.rest("GET", f"/conversations/{cid}/messages?{query}", "cust-1")
    assert status == 400 and body["code"] == "bad_request"
    assert cloud.rest("GET", f"/conversations/{cid}/messages?after=9007199254740991",
                      "cust-1") == (200, {"messages": [], "next": None, "prev": None})


# ------------------------------------------------------------- tokens


def _claims(**over):
    now = int(time.time())
    claims = {"sub": "u", "role": "customer", "iss": "oncechat", "aud": "oncechat",
              "iat": now, "exp": now + 600} | over
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("token", [
    _claims(exp=" 1796040000"),
    _claims(exp=str(int(time.time()) + 600)),
    _claims(iat=str(int(time.time()))),
    _claims(exp=True),
    _claims(iat=None),
    _claims(exp=int(time.time()) + 25 * 3600),  # beyond the 24 h maximum lifetime
    _claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),  # issued in the future
    _claims(sub="a\ud800"),
    _claims(sub="x" * 200),
    _claims(nbf="0"),
], ids=["exp-padded-string", "exp-string", "iat-string", "exp-bool", "no-iat", "lifetime",
        "future-iat", "surrogate-sub", "long-sub", "nbf-string"])
def test_token_claims_are_strict(cloud, token):
    conn, resp = cloud.connect(None, token=token)
    assert resp["statusCode"] == 401
    status, body = cloud.rest("GET", "/conversations", None,
                              headers={"Authorization": f"Bearer {token}"})
    assert status == 401 and body["code"] == "unauthorized"


def test_max_token_lifetime_is_configurable(cloud, monkeypatch):
    from chalicelib.handlers import Handlers

    monkeypatch.setenv("TOKEN_MAX_LIFETIME_SECONDS", "300")
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    assert cloud.connect(None, token=mint_token(SECRET, "u", "customer", ttl_seconds=600))[1][
        "statusCode"] == 401
    assert cloud.connect(None, token=mint_token(SECRET, "u", "customer", ttl_seconds=300))[1][
        "statusCode"] == 200


def _connect_query(cloud, conn, pairs):
    event = {
        "headers": {}, "multiValueHeaders": {},
        "queryStringParameters": {k: v for k, v in pairs},
        "multiValueQueryStringParameters": {k: [v for kk, v in pairs if kk == k] for k, _ in pairs},
        "requestContext": cloud._context(conn, "$connect", "CONNECT"), "isBase64Encoded": False,
    }
    return cloud.mod.connect(event, None)


def test_token_parameter_must_be_single(cloud):
    good = mint_token(SECRET, "u", "customer")
    assert _connect_query(cloud, "c-two=", [("token", "garbage"), ("token", good)])["statusCode"] == 401
    assert _connect_query(cloud, "c-same=", [("token", good), ("token", good)])["statusCode"] == 401
    assert not [i for i in table_items("connections") if i["connectionId"]["S"].startswith("c-")]
    assert _connect_query(cloud, "c-one=", [("token", good), ("x", "1")])["statusCode"] == 200


# ------------------------------------------------------------- fail closed


@pytest.mark.parametrize("env, drop", [
    ({"AWS_LAMBDA_FUNCTION_NAME": "oncechat-prod-message"}, "STAGE"),
    ({"STAGE": "prod"}, "JWT_SECRET"),
    ({"STAGE": "prod", "JWT_SECRET": "oncechat-local-development-secret"}, None),
    ({"STAGE": "prod", "AWS_LAMBDA_FUNCTION_NAME": "f", "JWT_SECRET": "short"}, None),
    ({"STAGE": "prod", "JWT_SECRET_PARAMETER": "/oncechat/test/jwt-secret"}, "JWT_SECRET"),  # absent
])
def test_misconfigured_stage_refuses_to_serve(cloud, monkeypatch, env, drop):
    from chalicelib.handlers import Handlers

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if drop:
        monkeypatch.delenv(drop)
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    conn, resp = cloud.connect("u")
    assert resp["statusCode"] == 500
    assert json.loads(resp["body"]) == {"code": "internal", "message": "service not configured"}
    status, body = cloud.rest("POST", "/conversations", "u")
    assert status == 500 and body == {"code": "internal", "message": "service not configured"}
    frame = cloud.frame(conn, {"action": "resume"})
    assert frame == {"type": "error", "code": "internal", "message": "service not configured"}
    assert not table_items("connections") and not table_items("conversations")


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_secret_from_parameter_store_or_secrets_manager_is_cached(cloud, monkeypatch, source):
    from chalicelib import config
    from chalicelib.handlers import Handlers

    secret = "a-secret-from-the-store-0123456789abcdef"
    if source == "ssm":
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name="/oncechat/test/jwt-secret", Value=secret, Type="SecureString")
        monkeypatch.setenv("JWT_SECRET_PARAMETER", "/oncechat/test/jwt-secret")
    else:
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="oncechat-test-jwt", SecretString=secret)
        monkeypatch.setenv("JWT_SECRET_ID", "oncechat-test-jwt")
    monkeypatch.setenv("JWT_SECRET", "the-environment-secret-is-not-used-0123")
    monkeypatch.setattr(config, "_secret_cache", {})
    calls = []
    session = boto3.session.Session()
    session.events.register(f"before-call.{source}", lambda **kw: calls.append(kw["model"].name))
    monkeypatch.setattr("chalicelib.aws.boto3.session.Session", lambda: session)
    for _ in range(2):  # two cold starts of one container: one read
        monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
        assert cloud.connect(None, token=mint_token(secret, "u", "customer"))[1]["statusCode"] == 200
        assert cloud.connect(None, token=mint_token(SECRET, "u", "customer"))[1]["statusCode"] == 401
    assert len(calls) == 1


# ------------------------------------------------------------- limits


class FakeClock:
    def __init__(self) -> None:
        self.ms = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.ms


@pytest.mark.parametrize("action, limit_var", [
    ("ack", "RATE_CONNECTION_ACKS"), ("read", "RATE_CONNECTION_READS"),
    ("resume", "RATE_CONNECTION_RESUMES"), ("typing", "RATE_CONNECTION_TYPING"),
])
def test_every_action_is_rate_limited_per_connection(chat, monkeypatch, action, limit_var):
    cloud, customer, agent, cid = chat
    from chalicelib.handlers import Handlers, build_aws_services

    monkeypatch.setenv(limit_var, "3")
    clock = FakeClock()
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app, build=lambda app: build_aws_services(app, clock)))
    frame = {"action": action, "conversationId": cid, "seq": 1} if action != "resume" else {
        "action": "resume", "cursors": {cid: 1}}
    replies = [cloud.frame(customer, frame) for _ in range(5)]
    limited = [r for r in replies if r and r.get("code") == "rate_limited"]
    assert len(limited) == 2
    other, _ = cloud.connect("cust-1")  # another connection of the same user is not held back
    assert cloud.frame(other, frame) is None or cloud.frame(other, frame).get("code") != "rate_limited"
    assert send(cloud, customer, cid, "still-sends")["type"] == "accepted"
    clock.ms += 10_000  # a window later the bucket is full again
    reply = cloud.frame(customer, frame)
    assert reply is None or reply.get("code") != "rate_limited"


def test_frame_flood_is_refused_before_any_aws_request(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    from chalicelib.handlers import Handlers, build_aws_services

    monkeypatch.setenv("RATE_CONNECTION_FRAMES", "10")
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app, build=lambda app: build_aws_services(app, FakeClock())))
    for _ in range(10):
        assert cloud.frame(customer, "{garbage")["code"] == "bad_request"
    calls = []
    boto3.DEFAULT_SESSION = None
    storage = cloud.mod.handlers.services.storage
    monkeypatch.setattr(storage, "get_connection", lambda *a: calls.append(a))
    for _ in range(50):
        assert cloud.frame(customer, "{garbage")["code"] == "rate_limited"
    assert calls == []


def test_connection_cap_per_user(cloud, monkeypatch):
    from chalicelib.handlers import Handlers, build_aws_services

    monkeypatch.setenv("MAX_CONNECTIONS_PER_USER", "2")
    clock = FakeClock()
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app, build=lambda app: build_aws_services(app, clock)))
    first, r1 = cloud.connect("capped")
    second, r2 = cloud.connect("capped")
    third, r3 = cloud.connect("capped")
    assert (r1["statusCode"], r2["statusCode"], r3["statusCode"]) == (200, 200, 429)
    assert json.loads(r3["body"])["code"] == "rate_limited"
    assert cloud.connect("someone-else")[1]["statusCode"] == 200
    cloud.disconnect(first)
    assert cloud.connect("capped")[1]["statusCode"] == 200
    # A connection whose $disconnect was lost: the cap probes and forgets it.
    cloud.pushes.gone.add(second)
    clock.ms += 60_000
    assert cloud.connect("capped")[1]["statusCode"] == 200
    assert not [i for i in table_items("connections") if i["connectionId"]["S"] == second]
