"""Least privilege: the IAM policies grant exactly the AWS operations the code performs.

The recorder of tests/functional/conftest.py notes every AWS call made from
``chalicelib/`` or ``app.py`` during the functional tests (botocore
``before-parameter-build`` events), as (IAM action, resource). This file
runs last in its folder and also drives every route, action and schedule
itself, so it holds when run alone. It then checks that
``.chalice/policy-{dev,prod}.json`` grant exactly those operations on
exactly those resources (tables and indexes by name, the delivery queue,
the management API's connections, the functions' own log groups), and
that the roles of the packaged template carry the same policy with this
API's id, region and account filled in.

Operations no Python code performs but the functions' roles need: the
Lambda runtime's logs:CreateLogStream/PutLogEvents, and the SQS event
source mapping's ReceiveMessage/DeleteMessage/GetQueueAttributes on the
delivery queue.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.functional.conftest import AWS_CALLS, REGION, SECRET, STAGE

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("api", "connect", "message", "disconnect", "deliver", "sweep")
RUNTIME = {("logs:CreateLogStream", "log-group:/aws/lambda/oncechat-{stage}-" + f + ":*")
           for f in FUNCTIONS} | {("logs:PutLogEvents", "log-group:/aws/lambda/oncechat-{stage}-" + f + ":*")
                                  for f in FUNCTIONS}
EVENT_SOURCE = {(f"sqs:{op}", "oncechat-{stage}-delivery.fifo")
                for op in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes")}
SWEEP_EVENT = {"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
               "account": "123456789012", "time": "2026-11-28T00:00:00Z", "region": REGION,
               "resources": [], "detail": {}}


def drive_everything(cloud, monkeypatch) -> None:
    """Every route, action, the consumer, the sweep, a 410 prune, a probe, the cap, the secret."""
    import boto3

    from chalicelib import config
    from chalicelib.handlers import Handlers, build_aws_services

    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"/oncechat/{STAGE}/jwt-secret", Value=SECRET, Type="SecureString")
    monkeypatch.setenv("JWT_SECRET_PARAMETER", f"/oncechat/{STAGE}/jwt-secret")
    monkeypatch.setenv("MAX_CONNECTIONS_PER_USER", "2")
    monkeypatch.setattr(config, "_secret_cache", {})
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(
        cloud.mod.app, build=lambda app: build_aws_services(app, cloud.clock)))
    agent, _ = cloud.connect("lp-agent", "agent")
    agent2, _ = cloud.connect("lp-agent-2", "agent")
    customer, _ = cloud.connect("lp-cust")
    status, conv = cloud.rest("POST", "/conversations", "lp-cust", headers={"Idempotency-Key": "k1"})
    assert status == 201
    cid = conv["conversationId"]
    frame = {"action": "send", "conversationId": cid, "messageId": "m1", "body": "hi"}
    assert cloud.frame(customer, frame)["type"] == "accepted"
    assert cloud.frame(customer, frame)["duplicate"] is True
    cloud.consume()
    for action in ({"action": "ack", "conversationId": cid, "seq": 1},
                   {"action": "read", "conversationId": cid, "seq": 1},
                   {"action": "typing", "conversationId": cid},
                   {"action": "resume", "cursors": {cid: 0}}, {"action": "resume"}):
        cloud.frame(agent, action)
    who = conv["agentId"]
    for method, path, user, role, body in (
        ("GET", f"/conversations/{cid}", "lp-cust", "customer", None),
        ("GET", f"/conversations/{cid}/messages?after=0", "lp-cust", "customer", None),
        ("GET", f"/conversations/{cid}/messages?before=3", "lp-cust", "customer", None),
        ("GET", "/conversations?status=active", "lp-cust", "customer", None),
        ("GET", "/conversations", who, "agent", None),
        ("GET", "/queue", who, "agent", None),
        ("GET", "/agents", who, "agent", None),
        ("PUT", "/agents/me/status", "lp-agent-2", "agent", {"status": "online", "capacity": 3}),
        ("POST", f"/conversations/{cid}/transfer", who, "agent",
         {"agentId": "lp-agent-2" if who == "lp-agent" else "lp-agent"}),
        ("POST", f"/conversations/{cid}/close", "lp-cust", "customer", None),
    ):
        assert cloud.rest(method, path, user, role, body=body)[0] < 300, (method, path)
    frame["messageId"] = "m2"  # reopens the closed conversation
    assert cloud.frame(customer, frame)["type"] == "accepted"
    cloud.consume()
    # The connection cap probes a settled connection; a gone one is pruned on push.
    cloud.clock.offset_ms += 120_000
    cloud.connect("lp-cust")
    cloud.pushes.gone.add(agent)
    cloud.pushes.gone.add(agent2)
    cloud.connect("lp-cust")  # over the cap of 2: probes
    frame["messageId"] = "m3"
    cloud.frame(customer, frame)
    cloud.consume()
    cloud.mod.handlers.services.config.__dict__["sweep_grace_seconds"] = 0
    time.sleep(1.1)
    cloud.mod.sweep(SWEEP_EVENT, None)
    # A cold container remembers no principal and no counter: the frames that
    # a warm one answers from memory read the connection and the conversation.
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    cloud.frame(customer, {"action": "ack", "conversationId": cid, "seq": 1})
    # A resend that reaches another container: its reserved seq becomes void.
    frame["messageId"] = "m1"
    assert cloud.frame(customer, frame)["duplicate"] is True
    cloud.frame(customer, {"action": "resume"})  # a customer's: the open-by-customer index
    cloud.consume()
    cloud.disconnect(customer)


def needed(stage: str) -> set[tuple[str, str]]:
    out = set()
    for action, resource in AWS_CALLS.calls:
        if action.startswith("secretsmanager:"):
            continue  # the deployed stages read their secret from SSM (see docs/security.md)
        resource = resource.replace(f"oncechat-{STAGE}-", f"oncechat-{stage}-")
        resource = resource.replace(f"/oncechat/{STAGE}/", f"/oncechat/{stage}/")
        if action == "execute-api:ManageConnections":
            resource = "*/api/" + resource
        out.add((action, resource))
    return out | {(a, r.format(stage=stage)) for a, r in RUNTIME | EVENT_SOURCE}


def granted(policy: dict) -> set[tuple[str, str]]:
    out = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [
            statement["Resource"]]
        for action in actions:
            assert "*" not in action, action
            service = action.split(":")[0]
            for resource in resources:
                prefix = f"arn:aws:{service}:*:*:"
                assert resource.startswith(prefix), resource
                out.add((action, resource[len(prefix):]))
    return out


def policy_document(need: set[tuple[str, str]]) -> dict:
    """The policy granting exactly ``need``: one statement per resource group, stable order."""
    by_resource: dict[str, set[str]] = {}
    for action, resource in need:
        by_resource.setdefault(f"arn:aws:{action.split(':')[0]}:*:*:{resource}", set()).add(action)
    by_actions: dict[tuple[str, ...], list[str]] = {}
    for resource, actions in sorted(by_resource.items()):
        by_actions.setdefault(tuple(sorted(actions)), []).append(resource)
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": list(actions), "Resource": resources}
        for actions, resources in sorted(by_actions.items(), key=lambda kv: kv[1])]}


@pytest.mark.parametrize("stage", ["prod", "dev"])
def test_policy_grants_exactly_what_the_code_does(cloud, monkeypatch, stage):
    drive_everything(cloud, monkeypatch)
    policy = json.loads((ROOT / f".chalice/policy-{stage}.json").read_text())
    need = needed(stage)
    print(f"policy-{stage}.json granting exactly what was used:\n"
          f"{json.dumps(policy_document(need), indent=2)}")
    grant = granted(policy)
    assert sorted(grant - need) == [], "granted but never used"
    assert sorted(need - grant) == [], "used but not granted"
    for action, resource in grant:
        assert "*" not in resource.replace("@connections/*", "").replace(":*", "").lstrip("*"), (
            action, resource)


def test_packaged_roles_carry_the_policy_with_this_api_region_and_account():
    from infra.package import role_policy

    policy = json.loads((ROOT / ".chalice/policy-prod.json").read_text())
    document = json.dumps(role_policy(policy))
    assert "arn:aws:" not in document and ":*:*:" not in document
    assert "${WebsocketAPI}/api/POST/@connections/*" in document
    assert "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/oncechat-prod-messages" \
        in document
