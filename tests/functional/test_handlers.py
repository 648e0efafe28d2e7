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
    """An agent and a customer, connected, in one active conversation.

    The assignment is the conversation's seq 1: an "assigned" system message,
    delivered here like any message; the frames pushed so far are then
    forgotten, so tests see only their own.
    """
    agent, resp = cloud.connect("agent-1", "agent")
    assert resp["statusCode"] == 200
    customer, resp = cloud.connect("cust-1")
    assert resp["statusCode"] == 200
    status, conv = cloud.rest("POST", "/conversations", "cust-1")
    assert status == 201 and conv["status"] == "active" and conv["agentId"] == "agent-1"
    assert conv["lastSeq"] == 1
    cid = conv["conversationId"]
    cloud.consume()
    for conn in (customer, agent):
        [system] = cloud.pushes.of(conn, "message")
        assert system == {"type": "message", "conversationId": cid, "seq": 1, "messageId": "system-1",
                          "senderId": "system", "senderRole": "system", "body": system["body"],
                          "sentAt": system["sentAt"], "event": "assigned", "status": "active",
                          "agentId": "agent-1"}
    cloud.pushes.frames.clear()
    return cloud, customer, agent, cid


def last_seq(cloud, cid):
    """The conversation's counter (what the setup's system messages used)."""
    return cloud.mod.handlers.services.storage.get_conversation(cid).last_seq


def send(cloud, conn, cid, mid, body="hello"):
    return cloud.frame(conn, {"action": "send", "conversationId": cid, "messageId": mid, "body": body})


def processed(frames, cid, last=0):
    """What a client following the protocol's rule processes, in order, from its cursor ``last``."""
    out = []
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
    s = last_seq(cloud, cid)
    phone, _ = cloud.connect("cust-1")
    acc = send(cloud, customer, cid, "m1", "where is my order?")
    assert acc["type"] == "accepted" and acc["seq"] == s + 1 and acc["duplicate"] is False
    cloud.consume()
    [msg] = cloud.pushes.of(agent, "message")
    assert msg == {"type": "message", "conversationId": cid, "seq": s + 1, "messageId": "m1",
                   "senderId": "cust-1", "senderRole": "customer", "body": "where is my order?",
                   "sentAt": acc["sentAt"]}
    assert [f["seq"] for f in cloud.pushes.of(phone, "message")] == [s + 1]
    assert cloud.pushes.of(customer, "message") == []
    reply = send(cloud, agent, cid, "r1", "on its way")
    cloud.consume()
    assert reply["seq"] == s + 2 and cloud.pushes.of(customer, "message")[0]["body"] == "on its way"


def test_duplicate_send_one_item_one_seq_one_processed_delivery(chat):
    cloud, customer, agent, cid = chat
    s = last_seq(cloud, cid)  # the system messages before it have no idempotency record
    first = send(cloud, customer, cid, "m1")
    cloud.consume()
    again = send(cloud, customer, cid, "m1")
    assert (again["seq"], again["duplicate"], again["sentAt"]) == (s + 1, True, first["sentAt"])
    cloud.consume()
    assert len(table_items("messages")) == s + 1 and len(table_items("idempotency")) == 1
    assert processed(cloud.pushes.of(agent), cid, last=s) == [s + 1]


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
    s = last_seq(cloud, cid)
    storage = cloud.mod.handlers.services.storage
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
    assert len(sent[customer]) == len(sent[agent]) == 12
    assert not sent[customer] & sent[agent]
    # Every seq up to the counter holds a message answered with it, or is void
    # (reserved by the losing copy of a racing duplicate): none empty.
    last = cloud.mod.handlers.services.storage.get_conversation(cid).last_seq
    items = table_items("messages")
    assert sorted(int(i["seq"]["N"]) for i in items) == list(range(1, last + 1))
    voids = {int(i["seq"]["N"]) for i in items if i.get("void")}
    assert sorted(sent[customer] | sent[agent] | voids) == list(range(s + 1, last + 1))
    cloud.consume()
    # each side received the other side's messages and every void (pushed so
    # that no recipient waits for a seq that will never carry a message)
    got = {f["seq"] for f in cloud.pushes.of(agent, "message")}
    assert got - voids == sent[customer]
    got = {f["seq"] for f in cloud.pushes.of(customer, "message")}
    assert got - voids == sent[agent]


def test_stale_connection_is_pruned_on_410(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    cloud.pushes.gone.add(agent)
    send(cloud, customer, cid, "m1")
    cloud.clock.offset_ms += 31_000  # long after the agent's $connect
    cloud.consume()
    assert not [i for i in table_items("connections") if i["connectionId"]["S"] == agent]
    assert [i for i in table_items("agents") if i["agentId"]["S"] == "agent-1"][0]["presence"]["S"] == "offline"
    assert cloud.sqs.get_queue_attributes(QueueUrl=cloud.queue_url, AttributeNames=["All"])[
        "Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_other_push_failure_leaves_batch_for_redelivery(chat):
    cloud, customer, agent, cid = chat
    s = last_seq(cloud, cid)
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
    assert processed(cloud.pushes.of(agent), cid, last=s) == [s + 1]


def _expire_in_flight(cloud):
    # Make in-flight messages visible again, as the visibility timeout would.
    from moto.sqs.models import sqs_backends

    queue = sqs_backends["123456789012"][REGION].queues[f"oncechat-{STAGE}-delivery.fifo"]
    for m in queue._messages:
        m.change_visibility(0)


def test_a_recipient_who_acked_first_still_gets_the_push_with_its_seq(chat):
    """The consumer reads no ack cursor; the client drops what it has by seq."""
    cloud, customer, agent, cid = chat
    acc = send(cloud, customer, cid, "m1")
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": acc["seq"]})
    cloud.consume()
    assert [m["seq"] for m in cloud.pushes.of(agent, "message")][-1:] == [acc["seq"]]


def test_ack_cursor_never_moves_back(chat):
    cloud, customer, agent, cid = chat
    s = last_seq(cloud, cid)
    for i in range(5):
        send(cloud, customer, cid, f"m{i}")
    assert cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": s + 4}) is None
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": s + 2})
    [p] = [i for i in table_items("participants")
           if i["userId"]["S"] == "agent-1" and i["conversationId"]["S"] == cid]
    assert int(p["ackSeq"]["N"]) == s + 4


def test_resume_pages_through_long_backlog(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    # rate limits are not under test here: let one customer send the whole backlog at once
    monkeypatch.setenv("RATE_USER_SENDS", "1000")
    monkeypatch.setenv("RATE_CONNECTION_SENDS", "1000")
    cloud.use_clock(cloud.clock)  # the services again, with these limits
    s = last_seq(cloud, cid)
    for i in range(250):
        assert send(cloud, customer, cid, f"m{i}")["seq"] == s + i + 1
    total = s + 250
    laptop, _ = cloud.connect("agent-1", "agent")
    last = 0
    for _ in range(5):
        cloud.frame(laptop, {"action": "resume", "cursors": {cid: last}})
        frames = cloud.pushes.of(laptop)
        assert frames[-1]["type"] == "resumed" and frames[-1]["conversations"][cid] == total
        last = processed(frames, cid)[-1]
        if last == total:
            break
    assert processed(cloud.pushes.of(laptop), cid) == list(range(1, total + 1))
    first = cloud.pushes.of(laptop, "message")[0]
    assert (first["seq"], first["senderRole"], first["event"]) == (1, "system", "assigned")
    # 251 messages (the system message and 250), pages of 30, at most 100 per resume: three resumes
    assert len(cloud.pushes.of(laptop, "resumed")) == 3


def test_resume_of_unlisted_conversation_uses_stored_cursor(chat):
    cloud, customer, agent, cid = chat
    s = last_seq(cloud, cid)
    for i in range(4):
        send(cloud, customer, cid, f"m{i}")
    cloud.frame(agent, {"action": "ack", "conversationId": cid, "seq": s + 3})
    fresh, _ = cloud.connect("agent-1", "agent")
    cloud.frame(fresh, {"action": "resume", "cursors": {}})
    assert [f["seq"] for f in cloud.pushes.of(fresh, "message")] == [s + 4]
    assert cloud.pushes.of(fresh)[-1] == {"type": "resumed", "conversations": {cid: s + 4}}


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
    s = last_seq(cloud, cid)
    for i in range(5):
        send(cloud, customer, cid, f"m{i}", f"body {i}")
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages?after={s + 1}&limit=2",
                              "agent-1", "agent")
    assert status == 200 and [m["seq"] for m in page["messages"]] == [s + 2, s + 3]
    assert page["next"] == s + 3
    assert page["messages"][0]["body"] == "body 1"
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages?after={s + 3}", "cust-1")
    assert [m["seq"] for m in page["messages"]] == [s + 4, s + 5] and page["next"] is None
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages?limit=1", "cust-1")
    [first] = page["messages"]  # the history starts with the assignment
    assert (first["seq"], first["senderRole"], first["event"]) == (1, "system", "assigned")
    assert page["next"] == 1
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
    assert status == 200 and page["next"] is None and page["prev"] is None
    [system] = page["messages"]  # the assignment, recorded as the conversation's first message
    assert system == {"type": "message", "conversationId": conv["conversationId"], "seq": 1,
                      "messageId": "system-1", "senderId": "system", "senderRole": "system",
                      "body": system["body"], "sentAt": system["sentAt"], "event": "assigned",
                      "status": "active", "agentId": "agent-7"}


def test_scheduled_sweeper_recovers_commit_without_enqueue(chat, monkeypatch):
    cloud, customer, agent, cid = chat
    chat_service = cloud.mod.handlers.services
    real = chat_service.queue.enqueue
    calls = {"n": 0}

    def die_once(delivery):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Lambda died between commit and enqueue")
        real(delivery)

    monkeypatch.setattr(chat_service.queue, "enqueue", die_once)
    # The handler dies before its fast path too: only the sweeper can deliver it.
    monkeypatch.setattr(chat_service.fanout, "push_now", lambda *args: None)
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
    # Past the grace period: the service's clock moves on (no waiting on the wall clock).
    cloud.clock.offset_ms += chat_service.config.sweep_grace_seconds * 1000 + 2000
    cloud.mod.sweep(sweep_event, None)
    cloud.consume()
    assert [m["body"] for m in cloud.pushes.of(agent, "message")] == ["orphan"]


def test_poison_delivery_lands_in_dlq_and_redrive_brings_it_back(chat):
    from infra import dlq

    cloud, customer, agent, cid = chat
    cloud.pushes.failing.add(agent)  # the agent's endpoint keeps failing
    stuck = send(cloud, customer, cid, "m1", "stuck")["seq"]
    for _ in range(5):  # maxReceiveCount = 5
        with pytest.raises(Exception):
            cloud.consume()
        _expire_in_flight(cloud)
    assert cloud.consume() == 0  # the 6th receive moved it to the DLQ
    dlq_url = cloud.sqs.get_queue_url(QueueName=f"oncechat-{STAGE}-delivery-dlq.fifo")["QueueUrl"]
    listed = dlq.list_dlq(cloud.sqs, dlq_url, 10)
    assert [(m["conversationId"], m["seq"], m["group"]) for m in listed] == [(cid, stuck, cid)]
    cloud.pushes.failing.clear()
    assert dlq.redrive(cloud.sqs, dlq_url, cloud.queue_url, 10) == 1
    assert dlq.list_dlq(cloud.sqs, dlq_url, 10) == []
    cloud.consume()
    assert [m["body"] for m in cloud.pushes.of(agent, "message")] == ["stuck"]
