"""app.py's handlers with API Gateway-shaped events, against moto in-process."""

from __future__ import annotations

import threading
import time

import boto3
import jwt
import pytest

from tests.functional.conftest import REGION, SECRET, STAGE

TABLE = f"oncechat-{STAGE}-"


def table_items(name):
    ddb = boto3.client("dynamodb", region_name=REGION)
    return ddb.scan(TableName=TABLE + name, ConsistentRead=True)["Items"]


@pytest.fixture
def chat(cloud):
    """An agent and a customer, connected, in one active conversation."""
    agent, resp = cloud.connect("agent-1", "agent")
    assert resp["statusCode"] == 200
    customer, resp = cloud.connect("cust-1")
    assert resp["statusCode"] == 200
    status, conv = cloud.rest("POST", "/conversations", "cust-1")
    assert status == 201 and conv["status"] == "active" and conv["agentId"] == "agent-1"
    return cloud, customer, agent, conv["conversationId"]


def send(cloud, conn, cid, mid, body="hello"):
    return cloud.frame(conn, {"action": "send", "conversationId": cid, "messageId": mid, "body": body})


def processed(frames, cid):
    """What a client following the protocol's rule processes, in order."""
    last, out = 0, []
    for f in frames:
        if f["type"] == "message" and f["conversationId"] == cid and f["seq"] == last + 1:
            out.append(f["seq"])
            last = f["seq"]
    return out


# ------------------------------------------------------------------ connect


def test_connect_records_connection_with_ttl(cloud):
    conn, resp = cloud.connect("cust-9")
    assert resp["statusCode"] == 200
    [item] = [i for i in table_items("connections") if i["connectionId"]["S"] == conn]
    assert item["userId"]["S"] == "cust-9" and item["role"]["S"] == "customer"
    assert item["domainName"]["S"].startswith("abc123.") and item["stage"]["S"] == "api"
    assert int(item["expiresAt"]["N"]) > time.time() + 3600
    assert cloud.pushes.frames == {}  # $connect never pushes


def _token(**over):
    claims = {"sub": "u", "role": "customer", "iss": "oncechat", "aud": "oncechat",
              "exp": int(time.time()) + 60} | over
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("token", [
    "", "not-a-jwt",
    _token(exp=int(time.time()) - 10),
    _token(exp=None),
    _token(iss="someone-else"),
    _token(aud="someone-else"),
    _token(role="admin"),
    jwt.encode({"sub": "u", "role": "customer", "iss": "oncechat", "aud": "oncechat",
                "exp": int(time.time()) + 60}, "wrong-secret-0123456789abcdef0123", algorithm="HS256"),
    jwt.encode({"sub": "u", "role": "customer", "iss": "oncechat", "aud": "oncechat",
                "exp": int(time.time()) + 60}, SECRET + "x" * 40, algorithm="HS512"),
    jwt.encode({"sub": "u", "role": "customer", "iss": "oncechat", "aud": "oncechat",
                "exp": int(time.time()) + 60}, None, algorithm="none"),
])
def test_bad_tokens_are_rejected_with_401(cloud, token):
    conn, resp = cloud.connect(None, token=token or None)
    assert resp["statusCode"] == 401
    assert not [i for i in table_items("connections") if i["connectionId"]["S"] == conn]


def test_stage_without_secret_refuses_handlers(cloud, monkeypatch):
    from chalicelib.handlers import Handlers

    monkeypatch.setenv("STAGE", "prod")
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    _, resp = cloud.connect("u")
    assert resp["statusCode"] == 500
    status, body = cloud.rest("POST", "/conversations", "u")
    assert status == 500 and body["code"] == "internal"


# --------------------------------------------------------------- send path


def test_message_reaches_agent_and_senders_other_device(chat):
    cloud, customer, agent, cid = chat
    phone, _ = cloud.connect("cust-1")
    acc = send(cloud, customer, cid, "m1", "where is my order?")
    assert acc["type"] == "accepted" and acc["seq"] == 1 and acc["duplicate"] is False
    cloud.consume()
    [msg] = cloud.pushes.of(agent, "message")
    assert msg == {"type": "message", "conversationId": cid, "seq": 1, "messageId": "m1",
                   "senderId": "cust-1", "senderRole": "customer", "body": "where is my order?",
                   "sentAt": acc["sentAt"]}
    assert [f["seq"] for f in cloud.pushes.of(phone, "message")] == [1]
    assert cloud.pushes.of(customer, "message") == []
    reply = send(cloud, agent, cid, "r1", "on its way")
    cloud.consume()
    assert reply["seq"] == 2 and cloud.pushes.of(customer, "message")[0]["body"] == "on its way"


def test_duplicate_send_one_item_one_seq_one_processed_delivery(chat):
    cloud, customer, agent, cid = chat
    first = send(cloud, customer, cid, "m1")
    cloud.consume()
    again = send(cloud, customer, cid, "m1")
    assert (again["seq"], again["duplicate"], again["sentAt"]) == (1, True, first["sentAt"])
    cloud.consume()
    assert len(table_items("messages")) == 1 and len(table_items("idempotency")) == 1
    assert processed(cloud.pushes.of(agent), cid) == [1]


def test_conflicting_reuse_of_message_id(chat):
    cloud, customer, agent, cid = chat
    send(cloud, customer, cid, "m1", "a")
    err = send(cloud, customer, cid, "m1", "b")
    assert err == {"type": "error", "code": "conflict", "messageId": "m1",
                   "message": "messageId was already used with a different body"}


class _AtomicRequests:
    """A DynamoDB client whose calls run one at a time.

    moto's in-process DynamoDB is not thread-safe (a transaction snapshots
    and restores whole tables), while each request to AWS is atomic; this
    restores that per-request atomicity without hiding any race between
    requests, which is what the send loop must handle.
    """

    _lock = threading.Lock()

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)
        return call


def test_concurrent_senders_gapless(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    storage = cloud.mod.handlers.chat.storage
    monkeypatch.setattr(storage, "_client", _AtomicRequests(storage._db))
    sent, lock = {customer: set(), agent: set()}, threading.Lock()

    def run(conn, prefix):
        for i in range(12):
            f = send(cloud, conn, cid, f"{prefix}{i}")
            with lock:
                sent[conn].add(f["seq"])

    # two threads per sender reuse the same messageIds: racing duplicates
    threads = [threading.Thread(target=run, args=a) for a in
               ((customer, "c"), (agent, "a"), (customer, "c"), (agent, "a"))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(sent[customer] | sent[agent]) == list(range(1, 25))
    assert len(sent[customer]) == len(sent[agent]) == 12
    assert len(table_items("messages")) == 24
    cloud.consume()
    # each side received exactly the other side's messages, in FIFO order
    got = [f["seq"] for f in cloud.pushes.of(agent, "message")]
    assert sorted(set(got)) == sorted(sent[customer]) and got == sorted(got)
    got = [f["seq"] for f in cloud.pushes.of(customer, "message")]
    assert sorted(set(got)) == sorted(sent[agent]) and got == sorted(got)


def test_stale_connection_is_pruned_on_410(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    cloud.pushes.gone.add(agent)
    send(cloud, customer, cid, "m1")
    service = cloud.mod.handlers.chat
    later = service.clock() + 31_000  # long after the agent's $connect
    monkeypatch.setattr(service, "clock", lambda: later)
    cloud.consume()
    assert not [i for i in table_items("connections") if i["connectionId"]["S"] == agent]
    assert [i for i in table_items("agents") if i["agentId"]["S"] == "agent-1"][0]["presence"]["S"] == "offline"
    assert cloud.sqs.get_queue_attributes(QueueUrl=cloud.queue_url, AttributeNames=["All"])[
        "Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_other_push_failure_leaves_batch_for_redelivery(chat):
    cloud, customer, agent, cid = chat
    cloud.pushes.failing.add(agent)
    send(cloud, customer, cid, "m1")
    with pytest.raises(Exception, match="push"):
        cloud.consume()
    # the message is still on the queue (in flight until the visibility timeout)
    attrs = cloud.sqs.get_queue_attributes(QueueUrl=cloud.queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "1"
    cloud.pushes.failing.clear()
    _expire_in_flight(cloud)
    cloud.consume()
    assert processed(cloud.pushes.of(agent), cid) == [1]


def _expire_in_flight(cloud):
    # Make in-flight messages visible again, as the visibility timeout would.
    from moto.sqs.models import sqs_backends

    queue = sqs_backends["123456789012"][REGION].queues[f"oncechat-{STAGE}-delivery.fifo"]
    for m in queue._messages:
        m.change_visibility(0)


def test_acked_recipient_is_skipped_on_redelivery(chat):
    cloud, customer, agent, cid = chat
    send(cloud, customer, cid, "m1")
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": 1})
    cloud.consume()
    assert cloud.pushes.of(agent, "message") == []


def test_ack_cursor_never_moves_back(chat):
    cloud, customer, agent, cid = chat
    for i in range(5):
        send(cloud, customer, cid, f"m{i}")
    assert cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": 4}) is None
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": 2})
    [p] = [i for i in table_items("participants")
           if i["userId"]["S"] == "agent-1" and i["conversationId"]["S"] == cid]
    assert int(p["ackSeq"]["N"]) == 4


def test_resume_pages_through_long_backlog(chat):
    cloud, customer, agent, cid = chat
    for i in range(250):
        assert send(cloud, customer, cid, f"m{i}")["seq"] == i + 1
    laptop, _ = cloud.connect("agent-1", "agent")
    last = 0
    for _ in range(5):
        cloud.frame(laptop, {"action": "resume", "cursors": {cid: last}})
        frames = cloud.pushes.of(laptop)
        assert frames[-1]["type"] == "resumed" and frames[-1]["conversations"][cid] == 250
        last = processed(frames, cid)[-1]
        if last == 250:
            break
    assert processed(cloud.pushes.of(laptop), cid) == list(range(1, 251))
    # 250 messages, pages of 30, at most 100 per resume: three resumes
    assert len(cloud.pushes.of(laptop, "resumed")) == 3


def test_resume_of_unlisted_conversation_uses_stored_cursor(chat):
    cloud, customer, agent, cid = chat
    for i in range(4):
        send(cloud, customer, cid, f"m{i}")
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": 3})
    fresh, _ = cloud.connect("agent-1", "agent")
    cloud.frame(fresh, {"action": "resume", "cursors": {}})
    assert [f["seq"] for f in cloud.pushes.of(fresh, "message")] == [4]
    assert cloud.pushes.of(fresh)[-1] == {"type": "resumed", "conversations": {cid: 4}}


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("raw, code", [
    ("{not json", "bad_request"),
    ("[]", "bad_request"),
    ('{"action":"fly"}', "bad_request"),
    ('{"action":"send","conversationId":"CID","messageId":"m 1","body":"x"}', "bad_request"),
    ('{"action":"send","conversationId":"CID","messageId":"m1","body":7}', "bad_request"),
    ('{"action":"ack","conversationId":"CID","seq":"1"}', "bad_request"),
    ('{"action":"send","conversationId":"CID","messageId":"big","body":"' + "x" * 16385 + '"}',
     "payload_too_large"),
    ('{"action":"send","conversationId":"nope","messageId":"m1","body":"x"}', "not_found"),
])
def test_bad_frames_get_error_frames_and_connection_keeps_working(chat, raw, code):
    cloud, customer, agent, cid = chat
    err = cloud.frame(customer, raw.replace("CID", cid))
    assert err["type"] == "error" and err["code"] == code
    assert send(cloud, customer, cid, "after")["type"] == "accepted"


def test_outsiders_are_forbidden(chat):
    cloud, customer, agent, cid = chat
    eve, _ = cloud.connect("eve")
    assert send(cloud, eve, cid, "m1")["code"] == "forbidden"
    assert cloud.frame(eve, {"action": "ack", "conversationId": cid, "seq": 0})["code"] == "forbidden"
    assert cloud.frame(eve, {"action": "resume", "cursors": {cid: 0}})["code"] == "forbidden"
    status, body = cloud.rest("GET", f"/conversations/{cid}/messages", "eve")
    assert status == 403 and body["code"] == "forbidden"


def test_disconnect_removes_record(chat):
    cloud, customer, agent, cid = chat
    cloud.disconnect(customer)
    assert not [i for i in table_items("connections") if i["connectionId"]["S"] == customer]
    assert send(cloud, customer, cid, "m1")["code"] == "unauthorized"


# -------------------------------------------------------------------- REST


def test_rest_messages_pagination_and_errors(chat):
    cloud, customer, agent, cid = chat
    for i in range(5):
        send(cloud, customer, cid, f"m{i}", f"body {i}")
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages?after=1&limit=2", "agent-1", "agent")
    assert status == 200 and [m["seq"] for m in page["messages"]] == [2, 3] and page["next"] == 3
    assert page["messages"][0]["body"] == "body 1"
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages?after=3", "cust-1")
    assert [m["seq"] for m in page["messages"]] == [4, 5] and page["next"] is None
    assert cloud.rest("GET", f"/conversations/{cid}/messages?limit=0", "cust-1")[0] == 400
    assert cloud.rest("GET", f"/conversations/{cid}/messages?after=x", "cust-1")[1]["code"] == "bad_request"
    assert cloud.rest("GET", "/conversations/missing/messages", "cust-1")[0] == 404
    assert cloud.rest("GET", f"/conversations/{cid}/messages", None) == (
        401, {"code": "unauthorized", "message": "missing token"})
    assert cloud.rest("POST", "/conversations", "agent-1", "agent")[0] == 403


def test_waiting_conversation_assigned_when_agent_connects(cloud):
    status, conv = cloud.rest("POST", "/conversations", "cust-2")
    assert status == 201 and conv["status"] == "waiting" and conv["agentId"] is None
    assert conv["lastSeq"] == 0 and conv["createdAt"].endswith("Z")
    cloud.connect("agent-7", "agent")
    status, page = cloud.rest("GET", f"/conversations/{conv['conversationId']}/messages", "agent-7", "agent")
    assert status == 200 and page == {"messages": [], "next": None}


def test_scheduled_sweeper_recovers_commit_without_enqueue(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    chat_service = cloud.mod.handlers.chat
    real = chat_service.queue.enqueue
    calls = {"n": 0}

    def die_once(delivery):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Lambda died between commit and enqueue")
        real(delivery)

    monkeypatch.setattr(chat_service.queue, "enqueue", die_once)
    err = send(cloud, customer, cid, "m1", "orphan")
    assert err["code"] == "internal" and err["messageId"] == "m1"
    cloud.consume()
    assert cloud.pushes.of(agent, "message") == []
    sweep_event = {"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
                   "account": "123456789012", "time": "2026-11-28T00:00:00Z", "region": REGION,
                   "resources": [], "detail": {}}
    cloud.mod.sweep(sweep_event, None)  # within the grace period: nothing yet
    cloud.consume()
    assert cloud.pushes.of(agent, "message") == []
    object.__setattr__(chat_service.config, "sweep_grace_seconds", 0)  # a frozen dataclass
    time.sleep(1.1)
    cloud.mod.sweep(sweep_event, None)
    cloud.consume()
    assert [m["body"] for m in cloud.pushes.of(agent, "message")] == ["orphan"]


def test_poison_delivery_lands_in_dlq_and_redrive_brings_it_back(chat):
    from infra import dlq

    cloud, customer, agent, cid = chat
    cloud.pushes.failing.add(agent)  # the agent's endpoint keeps failing
    send(cloud, customer, cid, "m1", "stuck")
    for _ in range(5):  # maxReceiveCount = 5
        with pytest.raises(Exception):
            cloud.consume()
        _expire_in_flight(cloud)
    assert cloud.consume() == 0  # the 6th receive moved it to the DLQ
    dlq_url = cloud.sqs.get_queue_url(QueueName=f"oncechat-{STAGE}-delivery-dlq.fifo")["QueueUrl"]
    listed = dlq.list_dlq(cloud.sqs, dlq_url, 10)
    assert [(m["conversationId"], m["seq"], m["group"]) for m in listed] == [(cid, 1, cid)]
    cloud.pushes.failing.clear()
    assert dlq.redrive(cloud.sqs, dlq_url, cloud.queue_url, 10) == 1
    assert dlq.list_dlq(cloud.sqs, dlq_url, 10) == []
    cloud.consume()
    assert [m["body"] for m in cloud.pushes.of(agent, "message")] == ["stuck"]
