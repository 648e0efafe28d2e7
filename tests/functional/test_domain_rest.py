"""The domain's REST routes and WebSocket actions through app.py's real handlers (moto in-process)."""

from __future__ import annotations

from typing import Any

import pytest


def consume_all(cloud: Any) -> None:
    while cloud.consume():
        pass


@pytest.fixture
def desk(cloud):
    """Agents amy and bob online (capacity 1 for amy), customer cara with one conversation (amy's)."""
    amy, _ = cloud.connect("amy", "agent")
    assert cloud.rest("PUT", "/agents/me/status", "amy", "agent", body={"capacity": 1})[0] == 200
    cara, _ = cloud.connect("cara", "customer")
    status, conv = cloud.rest("POST", "/conversations", "cara")
    assert status == 201 and conv["agentId"] == "amy" and conv["lastSeq"] == 1
    bob, _ = cloud.connect("bob", "agent")
    return cloud, {"amy": amy, "cara": cara, "bob": bob}, conv["conversationId"]


def test_post_conversations_honours_the_idempotency_key(cloud):
    first = cloud.rest("POST", "/conversations", "cara", headers={"Idempotency-Key": "k-1"})
    again = cloud.rest("POST", "/conversations", "cara", headers={"Idempotency-Key": "k-1"})
    other = cloud.rest("POST", "/conversations", "dave", headers={"Idempotency-Key": "k-1"})
    assert (first[0], again[0], other[0]) == (201, 200, 201)
    assert again[1]["conversationId"] == first[1]["conversationId"] != other[1]["conversationId"]
    status, body = cloud.rest("POST", "/conversations", "cara", headers={"Idempotency-Key": "a b"})
    assert status == 400 and body["code"] == "bad_request"
    listed = cloud.rest("GET", "/conversations", "cara")[1]["conversations"]
    assert [c["conversationId"] for c in listed] == [first[1]["conversationId"]]


def test_lifecycle_over_rest_with_system_messages_and_conversation_frames(desk):
    cloud, conns, cid = desk
    status, view = cloud.rest("GET", f"/conversations/{cid}", "cara")
    assert status == 200 and (view["status"], view["agentId"]) == ("active", "amy")
    assert {p["userId"] for p in view["participants"]} == {"amy", "cara"}

    status, moved = cloud.rest("POST", f"/conversations/{cid}/transfer", "amy", "agent",
                               body={"agentId": "bob"})
    assert status == 200 and (moved["agentId"], moved["lastSeq"]) == ("bob", 2)
    status, closed = cloud.rest("POST", f"/conversations/{cid}/close", "bob", "agent")
    assert status == 200 and (closed["status"], closed["lastSeq"]) == ("closed", 3)
    assert closed["closedAt"].endswith("Z")
    status, again = cloud.rest("POST", f"/conversations/{cid}/close", "cara")
    assert status == 409 and again["code"] == "conflict"

    consume_all(cloud)
    status, page = cloud.rest("GET", f"/conversations/{cid}/messages", "cara")
    assert [(m["seq"], m["event"], m["senderRole"]) for m in page["messages"]] == [
        (1, "assigned", "system"), (2, "transferred", "system"), (3, "closed", "system")]
    assert [f["event"] for f in cloud.pushes.of(conns["cara"], "conversation")] == [
        "assigned", "transferred", "closed"]
    # amy followed until the transfer took it from her; bob from the transfer on.
    assert [f["event"] for f in cloud.pushes.of(conns["amy"], "conversation")] == [
        "assigned", "transferred"]
    assert [f["event"] for f in cloud.pushes.of(conns["bob"], "conversation")] == [
        "transferred", "closed"]
    # Messages go to whoever holds the conversation when the consumer runs: bob, all of it.
    assert [m["seq"] for m in cloud.pushes.of(conns["bob"], "message")] == [1, 2, 3]

    # The customer's message reopens it (the window is 24 h by default).
    reply = cloud.frame(conns["cara"], {"action": "send", "conversationId": cid, "messageId": "r1",
                                        "body": "one more thing"})
    assert reply["type"] == "accepted" and reply["seq"] == 5
    status, view = cloud.rest("GET", f"/conversations/{cid}", "cara")
    assert view["status"] == "active" and view["agentId"] in ("amy", "bob")


def test_transfer_errors_are_json(desk):
    cloud, _, cid = desk
    cases = [
        (("cara", "customer"), {"agentId": "bob"}, 403, "forbidden"),
        (("amy", "agent"), {"agentId": "ghost"}, 404, "not_found"),
        (("amy", "agent"), {"agentId": "amy"}, 409, "conflict"),
        (("amy", "agent"), {}, 400, "bad_request"),
        (("amy", "agent"), "not json", 400, "bad_request"),
        (("bob", "agent"), {"agentId": "amy"}, 403, "forbidden"),
    ]
    for (user, role), body, status, code in cases:
        got = cloud.rest("POST", f"/conversations/{cid}/transfer", user, role, body=body)
        assert (got[0], got[1]["code"]) == (status, code), (user, body)


def test_agent_status_capacity_and_listing(desk):
    cloud, _, cid = desk
    status, me = cloud.rest("PUT", "/agents/me/status", "bob", "agent",
                            body={"status": "away", "capacity": 7})
    assert status == 200 and (me["status"], me["capacity"], me["connections"]) == ("away", 7, 1)
    for body in ({}, {"status": "busy"}, {"capacity": -1}, {"capacity": 101}, {"extra": 1}):
        got = cloud.rest("PUT", "/agents/me/status", "bob", "agent", body=body)
        assert got[0] == 400 and got[1]["code"] == "bad_request", body
    assert cloud.rest("PUT", "/agents/me/status", "cara", body={"status": "online"})[0] == 403
    status, agents = cloud.rest("GET", "/agents", "bob", "agent")
    assert status == 200
    assert [(a["agentId"], a["status"], a["activeCount"], a["capacity"]) for a in agents["agents"]] == [
        ("amy", "online", 1, 1), ("bob", "away", 0, 7)]
    assert cloud.rest("GET", "/agents", "cara")[0] == 403


def test_waiting_queue_listing_and_filters(desk):
    cloud, _, cid = desk
    cloud.rest("PUT", "/agents/me/status", "bob", "agent", body={"status": "away"})
    waiting = [cloud.rest("POST", "/conversations", f"cust-{i}")[1]["conversationId"] for i in range(3)]
    status, queue = cloud.rest("GET", "/queue?limit=2", "bob", "agent")
    assert status == 200
    assert [(c["conversationId"], c["position"]) for c in queue["conversations"]] == [
        (waiting[0], 1), (waiting[1], 2)]
    assert cloud.rest("GET", "/queue", "cara")[0] == 403
    # An agent may look at a waiting conversation, not at one of another agent.
    assert cloud.rest("GET", f"/conversations/{waiting[0]}", "bob", "agent")[0] == 200
    assert cloud.rest("GET", f"/conversations/{cid}", "bob", "agent")[0] == 403
    assert cloud.rest("GET", f"/conversations/{waiting[0]}/messages", "bob", "agent")[0] == 403
    # Coming online takes the oldest first.
    cloud.rest("PUT", "/agents/me/status", "bob", "agent", body={"status": "online"})
    status, mine = cloud.rest("GET", "/conversations?status=active", "bob", "agent")
    assert [c["conversationId"] for c in mine["conversations"]] == waiting[::-1]
    assert cloud.rest("GET", "/conversations?status=nope", "bob", "agent")[0] == 400
    assert cloud.rest("GET", "/conversations?cursor=garbage", "bob", "agent")[0] == 400


def test_conversation_list_pages_with_a_cursor(cloud):
    made = [cloud.rest("POST", "/conversations", "cara")[1]["conversationId"] for _ in range(5)]
    seen, path = [], "/conversations?limit=2"
    for _ in range(5):
        status, page = cloud.rest("GET", path, "cara")
        assert status == 200
        seen += [c["conversationId"] for c in page["conversations"]]
        if page["next"] is None:
            break
        path = f"/conversations?limit=2&cursor={page['next']}"
    assert seen == made[::-1]


def test_history_before_and_after(desk):
    cloud, conns, cid = desk
    for i in range(6):
        cloud.frame(conns["cara"], {"action": "send", "conversationId": cid, "messageId": f"m{i}",
                                    "body": f"b{i}"})
    status, latest = cloud.rest("GET", f"/conversations/{cid}/messages?before=8&limit=3", "amy", "agent")
    assert status == 200 and [m["seq"] for m in latest["messages"]] == [5, 6, 7]
    assert (latest["prev"], latest["next"]) == (5, None)
    status, older = cloud.rest("GET", f"/conversations/{cid}/messages?before=5&limit=3", "amy", "agent")
    assert [m["seq"] for m in older["messages"]] == [2, 3, 4] and older["prev"] == 2
    assert cloud.rest("GET", f"/conversations/{cid}/messages?before=0", "amy", "agent")[0] == 400
    assert cloud.rest("GET", f"/conversations/{cid}/messages?before=3&after=1", "amy", "agent")[0] == 400


def test_typing_and_read_frames(desk):
    cloud, conns, cid = desk
    assert cloud.frame(conns["cara"], {"action": "typing", "conversationId": cid}) is None
    assert cloud.pushes.of(conns["amy"], "typing") == [
        {"type": "typing", "conversationId": cid, "userId": "cara", "role": "customer"}]
    assert cloud.frame(conns["amy"], {"action": "read", "conversationId": cid, "seq": 1}) is None
    assert cloud.pushes.of(conns["cara"], "read") == [
        {"type": "read", "conversationId": cid, "userId": "amy", "role": "agent", "seq": 1}]
    status, view = cloud.rest("GET", f"/conversations/{cid}", "cara")
    assert {p["userId"]: p["readSeq"] for p in view["participants"]} == {"amy": 1, "cara": 0}
    err = cloud.frame(conns["bob"], {"action": "typing", "conversationId": cid})
    assert err["type"] == "error" and err["code"] == "forbidden"
    err = cloud.frame(conns["cara"], {"action": "read", "conversationId": cid})
    assert err["code"] == "bad_request"


# Every route and action, for each kind of caller, on an active conversation.
# owner: its customer; other: another customer; agent: the assigned agent;
# stranger: another agent. The value is the HTTP status, or for WebSocket
# actions the frame type or error code that comes back (None: no reply).
MATRIX = {
    ("GET", "/conversations/{cid}"): {"owner": 200, "other": 403, "agent": 200, "stranger": 403},
    ("GET", "/conversations/{cid}/messages"): {"owner": 200, "other": 403, "agent": 200, "stranger": 403},
    ("POST", "/conversations/{cid}/transfer"): {"owner": 403, "other": 403, "agent": 409, "stranger": 403},
    ("PUT", "/agents/me/status"): {"owner": 403, "other": 403, "agent": 200, "stranger": 200},
    ("GET", "/agents"): {"owner": 403, "other": 403, "agent": 200, "stranger": 200},
    ("GET", "/queue"): {"owner": 403, "other": 403, "agent": 200, "stranger": 200},
    ("POST", "/conversations"): {"owner": 201, "other": 201, "agent": 403, "stranger": 403},
    ("WS", "send"): {"owner": "accepted", "other": "forbidden", "agent": "accepted", "stranger": "forbidden"},
    ("WS", "ack"): {"owner": None, "other": "forbidden", "agent": None, "stranger": "forbidden"},
    ("WS", "read"): {"owner": None, "other": "forbidden", "agent": None, "stranger": "forbidden"},
    ("WS", "typing"): {"owner": None, "other": "forbidden", "agent": None, "stranger": "forbidden"},
    ("WS", "resume"): {"owner": "resumed", "other": "forbidden", "agent": "resumed", "stranger": "forbidden"},
    # Last: closing makes the conversation read-only.
    ("POST", "/conversations/{cid}/close"): {"owner": 200, "other": 403, "agent": 409, "stranger": 403},
}


def test_authorization_matrix_on_every_route_and_action(cloud):
    users = {"owner": ("cara", "customer"), "other": ("dave", "customer"),
             "agent": ("amy", "agent"), "stranger": ("stan", "agent")}
    conns = {name: cloud.connect(user, role)[0] for name, (user, role) in users.items()}
    cloud.rest("PUT", "/agents/me/status", "stan", "agent", body={"status": "away"})
    status, conv = cloud.rest("POST", "/conversations", "cara")
    assert status == 201 and conv["agentId"] == "amy"
    cid = conv["conversationId"]
    bodies = {"/conversations/{cid}/transfer": {"agentId": "amy"}, "/agents/me/status": {"capacity": 5}}
    frames = {
        "send": lambda who: {"action": "send", "conversationId": cid, "messageId": f"m-{who}", "body": "x"},
        "ack": lambda who: {"action": "ack", "conversationId": cid, "seq": 1},
        "read": lambda who: {"action": "read", "conversationId": cid, "seq": 1},
        "typing": lambda who: {"action": "typing", "conversationId": cid},
        "resume": lambda who: {"action": "resume", "cursors": {cid: 0}},
    }
    for (method, path), expected in MATRIX.items():
        for who, want in expected.items():
            user, role = users[who]
            if method == "WS":
                reply = cloud.frame(conns[who], frames[path](who))
                got = None if reply is None else (
                    reply["code"] if reply["type"] == "error" else reply["type"])
                if path == "resume" and got == "message":
                    got = cloud.pushes.of(conns[who])[-1]["type"]
            else:
                got = cloud.rest(method, path.format(cid=cid), user, role,
                                 body=bodies.get(path) if method != "GET" else None)[0]
            assert got == want, (method, path, who)
    # Closed: read-only for the agent; the customer may still read it.
    reply = cloud.frame(conns["agent"], frames["send"]("agent-again"))
    assert reply["code"] == "conversation_closed"
    assert cloud.frame(conns["agent"], frames["typing"]("agent"))["code"] == "conversation_closed"
    assert cloud.rest("GET", f"/conversations/{cid}/messages", "cara")[0] == 200
    assert cloud.rest("GET", f"/conversations/{cid}/messages", "amy", "agent")[0] == 200


def test_over_the_request_limit_rest_answers_429_with_a_json_body(cloud):
    import time

    from tests.functional.conftest import ManualClock

    # A clock the test moves: the window (30 requests per 10 s) does not depend on how fast this runs.
    clock = ManualClock(time.time_ns() // 10_000_000_000 * 10_000 + 3_000)  # now, 3 s into a window
    cloud.use_clock(clock)
    for n in range(30):
        assert cloud.rest("POST", "/conversations", "flood")[0] == 201, n
        clock.advance(0.1)  # 3.0 .. 5.9 s into the window
    status, body = cloud.rest("POST", "/conversations", "flood")
    assert status == 429 and body["code"] == "rate_limited"
    assert "retry in 4 s" in body["message"]  # the window ends 10 s after it began
    listed = cloud.rest("GET", "/conversations?limit=100", "flood")[1]["conversations"]
    assert len(listed) == 30  # the refused request opened nothing
    clock.advance(4)  # the next window
    assert cloud.rest("POST", "/conversations", "flood")[0] == 201
    assert cloud.rest("POST", "/conversations", "someone-else")[0] == 201  # the limit is per user


def test_the_scheduled_sweep_takes_an_agent_with_a_vanished_connection_offline(cloud, monkeypatch):
    from chalicelib import core

    monkeypatch.setattr(core, "CONNECT_SETTLE_MS", 0)  # no waiting for $connect to settle here
    dead, _ = cloud.connect("amy", "agent")
    alive, _ = cloud.connect("bob", "agent")
    cloud.pushes.gone.add(dead)  # its socket died; API Gateway never ran $disconnect
    cloud.mod.sweep({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
                     "account": "123456789012", "time": "2026-11-28T00:00:00Z", "region": "us-east-1",
                     "resources": [], "detail": {}}, None)
    assert dead in cloud.pushes.probed and alive in cloud.pushes.probed
    agents = {a["agentId"]: a for a in cloud.rest("GET", "/agents", "bob", "agent")[1]["agents"]}
    assert (agents["amy"]["status"], agents["amy"]["connections"]) == ("offline", 0)
    assert (agents["bob"]["status"], agents["bob"]["connections"]) == ("online", 1)
    status, conv = cloud.rest("POST", "/conversations", "cara")
    assert conv["agentId"] == "bob"
