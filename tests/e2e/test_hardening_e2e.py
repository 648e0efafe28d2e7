"""Bad input, limits and least privilege over real sockets against the local cloud.

The local cloud's processes get ``AWS_SDK_UA_APP_ID`` so that every AWS
request they make is marked in its User-Agent, and moto server records
every request it receives; the AWS operations of this module's traffic are
then checked against .chalice/policy-prod.json.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
import uuid

import pytest
import websockets

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from tests.local_cloud import REPO_ROOT, LocalCloud

APP_ID = "oncechat-e2e-code"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    env = {"AWS_SDK_UA_APP_ID": APP_ID, "MOTO_RECORDER_FILEPATH": str(recording),
           "MAX_CONNECTIONS_PER_USER": "3"}
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1", env=env) as running:
        urllib.request.urlopen(urllib.request.Request(
            running.aws_endpoint + "/moto-api/recorder/start-recording", method="POST"), timeout=10)
        running.recording = recording
        yield running


def token(user, role="customer"):
    return mint_token(LOCAL_JWT_SECRET, user, role)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rest(cloud, method, path, user=None, role="customer", body=None):
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = f"Bearer {token(user, role)}"
    data = body.encode() if isinstance(body, str) else (b"{}" if method == "POST" else None)
    req = urllib.request.Request(cloud.rest_url + path, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def next_of(ws, *types, timeout=20):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame.get("type") in types:
            return frame


def test_bad_frames_over_sockets_get_bad_request_and_the_connection_stays_usable(cloud):
    user = uid("cust")
    status, conv = rest(cloud, "POST", "/conversations", user)
    cid = conv["conversationId"]

    async def scenario():
        async with websockets.connect(f"{cloud.websocket_url}?token={token(user)}") as ws:
            for raw in ('{"action":"send","conversationId":"%s","messageId":"m1","body":"a\\ud800"}' % cid,
                        '{"action":"send","conversationId":"%s","messageId":"m\\udc00","body":"x"}' % cid,
                        "[" * 1000 + "]" * 1000,
                        '{"action":"send","conversationId":"%s","messageId":"m1","body":"x","p":%s}' % (
                            cid, "[" * 1000 + "]" * 1000),
                        '{"action":"ack","conversationId":"%s","seq":%d}' % (cid, 10**40)):
                await ws.send(raw)
                reply = await next_of(ws, "error", "accepted")
                assert reply["type"] == "error" and reply["code"] == "bad_request", (raw[:80], reply)
            await ws.send(json.dumps({"action": "send", "conversationId": cid, "messageId": "m1",
                                      "body": "fine"}))
            accepted = await next_of(ws, "accepted", "error")
            assert accepted["type"] == "accepted" and accepted["seq"] == 1

    asyncio.run(scenario())
    status, page = rest(cloud, "GET", f"/conversations/{cid}/messages", user)
    assert [m["body"] for m in page["messages"]] == ["fine"]


def test_rest_bad_input_over_http(cloud):
    agent = uid("agent")
    assert rest(cloud, "PUT", "/agents/me/status", agent, "agent", body="[" * 1000 + "]" * 1000)[0] == 400
    assert rest(cloud, "PUT", "/agents/me/status", agent, "agent", body='{"status":"\\ud800"}')[0] == 400
    status, body = rest(cloud, "GET", "/conversations/a.b/messages", agent, "agent")
    assert status == 400 and body["code"] == "bad_request"
    status, body = rest(cloud, "GET", "/conversations/abc/messages?after=" + "9" * 40, agent, "agent")
    assert status == 400 and body["code"] == "bad_request"


def test_repeated_token_parameter_and_connection_cap_refuse_the_handshake(cloud):
    user = uid("cust")

    async def scenario():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.connect(f"{cloud.websocket_url}?token=garbage&token={token(user)}")
        assert refused.value.response.status_code == 401
        sockets = [await websockets.connect(f"{cloud.websocket_url}?token={token(user)}")
                   for _ in range(3)]
        with pytest.raises(websockets.exceptions.InvalidStatus) as capped:
            await websockets.connect(f"{cloud.websocket_url}?token={token(user)}")
        assert capped.value.response.status_code == 429
        await sockets[0].close()
        await asyncio.sleep(0.5)  # $disconnect ran
        again = await websockets.connect(f"{cloud.websocket_url}?token={token(user)}")
        for ws in (*sockets[1:], again):
            await ws.close()

    asyncio.run(scenario())


def test_a_flooding_connection_is_limited_and_others_still_send(cloud):
    flooder, other = uid("flood"), uid("cust")
    flood_cid = rest(cloud, "POST", "/conversations", flooder)[1]["conversationId"]
    other_cid = rest(cloud, "POST", "/conversations", other)[1]["conversationId"]

    async def scenario():
        async with websockets.connect(f"{cloud.websocket_url}?token={token(flooder)}",
                                      max_queue=None) as ws:
            for _ in range(400):
                await ws.send(json.dumps({"action": "ack", "conversationId": flood_cid, "seq": 0}))
            async with websockets.connect(f"{cloud.websocket_url}?token={token(other)}") as ws2:
                await ws2.send(json.dumps({"action": "send", "conversationId": other_cid,
                                           "messageId": "m1", "body": "hi"}))
                assert (await next_of(ws2, "accepted", "error", timeout=120))["type"] == "accepted"
            codes = []
            while len(codes) < 200:
                codes.append((await next_of(ws, "error", timeout=120))["code"])
            assert "rate_limited" in codes

    asyncio.run(scenario())


def test_smoke_check_passes_against_the_local_cloud(cloud):
    from infra.smoke import Smoke

    passed = asyncio.run(Smoke(cloud.websocket_url, cloud.rest_url, LOCAL_JWT_SECRET).run())
    assert len(passed) == 7


# ------------------------------------------------------------ least privilege

#: What the local cloud's SQS poller (the event source emulator) does that
#: AWS's event source mapping needs no role permission for.
EMULATOR_ONLY = {"sqs:ChangeMessageVisibility"}


def recorded_operations(cloud) -> set[tuple[str, str]]:
    from tests.functional.conftest import iam_requests

    used = set()
    for line in cloud.recording.read_text().splitlines():
        entry = json.loads(line)
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        if f"app/{APP_ID}" not in headers.get("user-agent", ""):
            continue
        target = headers.get("x-amz-target", "")
        if not target:
            continue  # query-protocol calls (CloudFormation of the launcher)
        prefix, _, op = target.partition(".")
        service = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs"}.get(prefix)
        if service is None:
            continue
        body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else entry["body"]
        params = json.loads(body or "{}")
        op = {"DeleteMessageBatch": "DeleteMessage",
              "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}.get(op, op)
        used |= iam_requests(service, op, params)
    return used


def test_every_operation_of_the_end_to_end_traffic_is_granted_by_the_policy(cloud):
    from tests.functional.test_least_privilege import granted

    used = {(a, r.replace("oncechat-local-", "oncechat-prod-")) for a, r in recorded_operations(cloud)
            if a not in EMULATOR_ONLY}
    assert {a for a, _ in used} >= {"dynamodb:PutItem", "dynamodb:Query", "sqs:SendMessage",
                                    "sqs:ReceiveMessage"}, used
    policy = granted(json.loads((REPO_ROOT / ".chalice/policy-prod.json").read_text()))
    assert sorted(used - policy) == []
