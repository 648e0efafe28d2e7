"""Functional tests: app.py's real handlers, API Gateway-shaped events, moto in-process.

DynamoDB and SQS are moto's (tables and queues deployed from
infra/template.yaml through moto's CloudFormation). Pushes go through
Chalice's ``app.websocket_api`` and boto3's ``apigatewaymanagementapi``
client; a botocore hook records each PostToConnection and answers 410 for
connections a test marks gone, since moto's management API never does.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local import moto_patches

from chalicelib.auth import mint_token

ROOT = Path(__file__).resolve().parents[2]
SECRET = "functional-test-secret-0123456789abcdef"
STAGE = "test"
REGION = "us-east-1"


class PushRecorder:
    """Records management API posts and fails the ones a test asks for."""

    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()
        self.failing: set[str] = set()
        self.endpoints: set[str] = set()
        self.probed: list[str] = []

    def hook(self, params: dict[str, Any], model: Any, context: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        from urllib.parse import unquote

        conn = unquote(params["url_path"].rsplit("/@connections/", 1)[1])
        if conn in self.gone or conn in self.failing:
            status, code = (410, "GoneException") if conn in self.gone else (500, "InternalServerError")
            return (AWSResponse("", status, {}, None),
                    {"Error": {"Code": code, "Message": code},
                     "ResponseMetadata": {"HTTPStatusCode": status}})
        data = params["body"]
        self.frames.setdefault(conn, []).append(json.loads(data))
        return (AWSResponse("", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}})

    def info_hook(self, params: dict[str, Any], model: Any, context: Any, **_: Any) -> Any:
        """GetConnection: 410 for connections marked gone, else a minimal description."""
        from urllib.parse import unquote

        from botocore.awsrequest import AWSResponse

        conn = unquote(params["url_path"].rsplit("/@connections/", 1)[1])
        self.probed.append(conn)
        if conn in self.gone:
            return (AWSResponse("", 410, {}, None),
                    {"Error": {"Code": "GoneException", "Message": "GoneException"},
                     "ResponseMetadata": {"HTTPStatusCode": 410}})
        return (AWSResponse("", 200, {}, None),
                {"ConnectedAt": "2026-11-28T00:00:00Z", "Identity": {"SourceIp": "127.0.0.1"},
                 "ResponseMetadata": {"HTTPStatusCode": 200}})

    def of(self, conn: str, type_: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames.get(conn, []) if type_ is None or f["type"] == type_]


class ManualClock:
    """A clock the test moves: milliseconds since the epoch, like the services' ``clock``."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class MovableClock:
    """The wall clock (ms), plus ``offset_ms`` that a test moves on instead of waiting."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        from chalicelib.services import wall_clock_ms

        return wall_clock_ms() + self.offset_ms


class Cloud:
    """Drives app.py's handlers with API Gateway-shaped events."""

    def __init__(self, app_module: Any, pushes: PushRecorder) -> None:
        self.mod = app_module
        self.pushes = pushes
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.queue_url = self.sqs.get_queue_url(QueueName=f"oncechat-{STAGE}-delivery.fifo")["QueueUrl"]
        self._ids = itertools.count(1)
        #: The services' clock: the wall clock, moved on by tests (``clock.offset_ms``).
        self.clock = MovableClock()

    def use_clock(self, clock: Any) -> None:
        """Build app.py's services with ``clock`` instead of the wall clock (for the rest of the test)."""
        from chalicelib.handlers import Handlers, build_aws_services

        self.mod.handlers = Handlers(self.mod.app, build=lambda app: build_aws_services(app, clock))  # the fixture's monkeypatch restores it

    # ---------------------------------------------------------------- events
    def _context(self, conn: str, route: str, event_type: str) -> dict[str, Any]:
        now = int(time.time() * 1000)
        return {
            "routeKey": route, "eventType": event_type, "connectionId": conn,
            "connectedAt": now, "requestTimeEpoch": now, "requestTime": "28/Nov/2026:00:00:00 +0000",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com", "stage": "api",
            "apiId": "abc123", "requestId": uuid.uuid4().hex, "extendedRequestId": uuid.uuid4().hex,
            "messageDirection": "IN", "identity": {"sourceIp": "127.0.0.1", "userAgent": "test"},
        }

    def connect(self, user: str | None, role: str = "customer", token: str | None = None,
                conn: str | None = None) -> tuple[str, dict[str, Any]]:
        conn = conn or f"conn{next(self._ids)}="
        if token is None and user is not None:
            token = mint_token(SECRET, user, role)
        event = {
            "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com"},
            "multiValueHeaders": {},
            "queryStringParameters": {"token": token} if token else None,
            "requestContext": self._context(conn, "$connect", "CONNECT"),
            "isBase64Encoded": False,
        }
        return conn, self.mod.connect(event, None)

    def frame(self, conn: str, body: Any) -> dict[str, Any] | None:
        raw = body if isinstance(body, str) else json.dumps(body)
        ctx = self._context(conn, "$default", "MESSAGE") | {"messageId": uuid.uuid4().hex}
        before = len(self.pushes.of(conn))
        self.mod.message({"body": raw, "requestContext": ctx, "isBase64Encoded": False}, None)
        new = self.pushes.of(conn)[before:]
        # The answer to this frame; pushes from other threads (another sender's
        # fast path) may land on the same connection meanwhile.
        replies = [f for f in new if f.get("type") in ("accepted", "error", "resumed")]
        # Two threads sending on one connection: each takes the answer naming its messageId.
        mid = body.get("messageId") if isinstance(body, dict) else None
        if mid is not None and any(f.get("messageId") == mid for f in replies):
            replies = [f for f in replies if f.get("messageId") == mid]
        if replies:
            return replies[-1]
        return new[-1] if new else None

    def disconnect(self, conn: str) -> None:
        ctx = self._context(conn, "$disconnect", "DISCONNECT") | {
            "disconnectStatusCode": 1000, "disconnectReason": "bye"}
        self.mod.disconnect({"headers": {}, "requestContext": ctx, "isBase64Encoded": False}, None)

    def consume(self, max_batches: int = 50) -> int:
        """Run the SQS consumer like Lambda's event source: receive, invoke, delete on success."""
        batches = 0
        for _ in range(max_batches):
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                           AttributeNames=["All"], WaitTimeSeconds=0)
            msgs = got.get("Messages", [])
            if not msgs:
                break
            event = {"Records": [{
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m.get("Attributes", {}), "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:oncechat-{STAGE}-delivery.fifo",
                "awsRegion": REGION} for m in msgs]}
            self.mod.deliver(event, None)  # raises on failure: the messages stay
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
            batches += 1
        return batches

    def rest(self, method: str, path: str, user: str | None, role: str = "customer",
             headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any]:
        from chalice.test import Client

        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = f"Bearer {mint_token(SECRET, user, role)}"
        # project_dir without .chalice/: the client must not overlay a stage's environment
        with Client(self.mod.app, stage_name=STAGE, project_dir=str(Path(__file__).parent)) as client:
            kwargs: dict[str, Any] = {"headers": hdrs}
            if body is not None:
                kwargs["body"] = body if isinstance(body, str) else json.dumps(body)
                hdrs.setdefault("Content-Type", "application/json")
            resp = getattr(client.http, method.lower())(path, **kwargs)
        return resp.status_code, json.loads(resp.body) if resp.body else None


@pytest.fixture
def cloud(monkeypatch):
    env = {
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "STAGE": STAGE, "JWT_SECRET": SECRET,
        "RESUME_MAX_MESSAGES": "100", "PAGE_SIZE": "30",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    # SQS FIFO deduplication as on AWS: ids are remembered for 5 minutes after
    # a delete (the sweeper's re-enqueues of delivered messages are dropped).
    moto_patches.remember_dedup_ids()
    # The local cloud's DynamoDB transactions (infra/local/moto_patches.py, held to the
    # storage contract in tests/contract): moto's own copy every table on each
    # transaction, which made a long backlog quadratic.
    from moto.dynamodb.models import DynamoDBBackend

    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", moto_patches.transact_write_items)
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName="oncechat-test", TemplateBody=(ROOT / "infra/template.yaml").read_text(),
                         Parameters=[{"ParameterKey": "Stage", "ParameterValue": STAGE}])
        import app as app_module
        from chalicelib.handlers import Handlers, build_aws_services

        pushes = PushRecorder()
        session = boto3.session.Session()
        session.events.register("before-call.apigatewaymanagementapi.PostToConnection", pushes.hook)
        session.events.register("before-call.apigatewaymanagementapi.GetConnection", pushes.info_hook)
        api = app_module.app.websocket_api
        monkeypatch.setattr(api, "session", session)
        monkeypatch.setattr(api, "_client", None)
        monkeypatch.setattr(api, "_endpoint", None)
        cloud = Cloud(app_module, pushes)
        monkeypatch.setattr(app_module, "handlers", Handlers(
            app_module.app, build=lambda app: build_aws_services(app, cloud.clock)))
        yield cloud


# ------------------------------------------------------- AWS calls of the code


class AwsCalls:
    """Every AWS operation oncechat's own code performs, as (IAM action, resource).

    A ``before-parameter-build`` hook on every botocore session records the
    calls made from ``chalicelib/`` or ``app.py`` (not the tests' own
    scans and receives). tests/functional/test_least_privilege.py compares
    them with the IAM policies.
    """

    CODE = (str(ROOT / "chalicelib"), str(ROOT / "app.py"))

    def __init__(self) -> None:
        self.calls: set[tuple[str, str]] = set()

    def from_code(self) -> bool:
        import sys

        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.CODE):
                return True
            frame = frame.f_back
        return False

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if not self.from_code():
            return
        service = model.service_model.service_name
        self.calls.update(iam_requests(service, model.name, params))


def iam_requests(service: str, op: str, params: dict[str, Any]) -> set[tuple[str, str]]:
    """The IAM (action, resource) pairs one API call needs; resources without region/account."""
    if service == "dynamodb":
        if op == "TransactWriteItems":
            out = set()
            for item in params["TransactItems"]:
                [(kind, spec)] = item.items()
                action = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                          "ConditionCheck": "ConditionCheckItem"}[kind]
                out.add((f"dynamodb:{action}", f"table/{spec['TableName']}"))
            return out
        if op == "TransactGetItems":
            return {("dynamodb:GetItem", f"table/{i['Get']['TableName']}") for i in params["TransactItems"]}
        if op in ("BatchGetItem", "BatchWriteItem"):
            return {(f"dynamodb:{op}", f"table/{t}") for t in params["RequestItems"]}
        resource = f"table/{params['TableName']}"
        if params.get("IndexName"):
            resource += f"/index/{params['IndexName']}"
        return {(f"dynamodb:{op}", resource)}
    if service == "sqs":
        name = params.get("QueueName") or params["QueueUrl"].rsplit("/", 1)[1]
        return {(f"sqs:{op}", name)}
    if service == "apigatewaymanagementapi":
        method = {"PostToConnection": "POST", "GetConnection": "GET", "DeleteConnection": "DELETE"}[op]
        return {("execute-api:ManageConnections", f"{method}/@connections/*")}
    if service == "ssm":
        return {(f"ssm:{op}", f"parameter{params['Name']}")}
    if service == "secretsmanager":
        return {(f"secretsmanager:{op}", f"secret:{params['SecretId']}")}
    return {(f"{service}:{op}", "*")}


AWS_CALLS = AwsCalls()


@pytest.fixture(scope="session", autouse=True)
def record_aws_calls():
    """Register the recorder on every botocore session created during the tests."""
    import botocore.session

    original = botocore.session.Session.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register("before-parameter-build", AWS_CALLS.hook)

    botocore.session.Session.__init__ = init
    try:
        yield AWS_CALLS
    finally:
        botocore.session.Session.__init__ = original
