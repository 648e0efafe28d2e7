"""The customer-service domain in the services, on the in-memory adapters.

Lifecycle (assign, transfer, close, reopen) with system messages and
``conversation`` frames, presence and capacity with fair assignment, typing
and read receipts, multi-device, the authorization matrix, rate limits and
keyed conversation creation; races with real threads.
"""

from __future__ import annotations

import json
import threading

import pytest

from chalicelib.auth import mint_token
from chalicelib.config import Config
from chalicelib.errors import BadRequest, Conflict, Forbidden, NotFound
from chalicelib.ports import MemoryPusher, MemoryQueue
from chalicelib.services import Origin, Ports, Services, build_services
from chalicelib.storage.memory import MemoryStorage

SECRET = "test-secret-that-is-at-least-32-bytes-long"


class Clock:
    """Milliseconds that advance 1 ms per read, or by ``advance``."""

    def __init__(self) -> None:
        self.t = 1_800_000_000_000
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.t += 1
            return self.t

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += int(seconds * 1000)

    sleep = advance  # what the services wait for passes on this clock; nothing sleeps


def make_chat(**env: str) -> Services:
    """The services on memory, replying as every deployed stage does (REPLIES=route)."""
    config = Config.from_env({"STAGE": "test", "JWT_SECRET": SECRET, "REPLIES": "route", **env})
    ids = iter(f"conv{i}" for i in range(10_000))
    clock = Clock()
    return build_services(config, Ports(MemoryStorage(), MemoryQueue(), MemoryPusher(), clock=clock,
                                        new_id=lambda: next(ids), sleep=clock.sleep))


@pytest.fixture
def chat() -> Services:
    return make_chat(REOPEN_WINDOW_SECONDS="600")


def connect(chat: Services, user: str, role: str, conn: str | None = None) -> Origin:
    origin = Origin(conn or f"{user}-conn", "gw.example", "api")
    chat.connections.connect(mint_token(SECRET, user, role), origin)
    return origin


def on_frame(chat: Services, origin: Origin, raw: str) -> None:
    """One frame through the $default route: its response reaches the connection, as the gateway sends it."""
    reply = chat.messaging.on_frame(origin, raw)
    if reply is not None:
        chat.pusher.sent.setdefault(origin.connection_id, []).append(reply)


def who(chat: Services, origin: Origin):
    return chat.connections.principal_of(origin.connection_id)


def frames(chat: Services, origin: Origin, type_: str | None = None) -> list[dict]:
    got = [json.loads(f) if isinstance(f, str) else f for f in chat.pusher.frames(origin.connection_id)]
    return [f for f in got if type_ is None or f.get("type") == type_]


def send(chat: Services, origin: Origin, cid: str, mid: str, body: str = "hi") -> dict:
    on_frame(chat, origin, json.dumps({"action": "send", "conversationId": cid, "messageId": mid,
                                      "body": body}))
    return frames(chat, origin)[-1]


def pump(chat: Services) -> int:
    return chat.consumer.deliver(d.to_json() for d in chat.queue.drain())


def stored(chat: Services, cid: str) -> list:
    return chat.storage.messages_after(cid, 0, 1000)


# ---------------------------------------------------------------- lifecycle


def test_assignment_appends_an_assigned_system_message_delivered_and_announced(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    conv = chat.desk.create_conversation(who(chat, alice))
    assert (conv.status, conv.agent_id, conv.last_seq) == ("active", "bob", 1)
    pump(chat)
    for origin in (alice, bob):
        [msg] = frames(chat, origin, "message")
        assert (msg["seq"], msg["senderRole"], msg["event"], msg["agentId"], msg["status"]) == (
            1, "system", "assigned", "bob", "active")
        [event] = frames(chat, origin, "conversation")
        assert (event["event"], event["seq"], event["agentId"], event["customerId"]) == (
            "assigned", 1, "bob", "alice")
    assert send(chat, alice, conv.conversation_id, "m1")["seq"] == 2


def test_waiting_conversations_go_oldest_first_to_the_least_loaded_agent_within_capacity(chat):
    from chalicelib.models import Principal
    alice = connect(chat, "alice", "customer")
    convs = [chat.desk.create_conversation(who(chat, alice)).conversation_id for _ in range(5)]
    assert [chat.storage.get_conversation(c).status for c in convs] == ["waiting"] * 5
    # Capacities set before the agents come online (the record starts offline).
    chat.desk.set_agent_status(Principal(user_id="bob", role="agent"), None, 2)
    chat.desk.set_agent_status(Principal(user_id="carol", role="agent"), None, 1)
    assert chat.storage.get_agent("bob").presence == "offline"
    connect(chat, "bob", "agent")
    assert [chat.storage.get_conversation(c).agent_id for c in convs] == ["bob", "bob", None, None, None]
    connect(chat, "carol", "agent")
    assert [chat.storage.get_conversation(c).agent_id for c in convs] == [
        "bob", "bob", "carol", None, None]
    assert [c.conversation_id for c in chat.storage.waiting_conversations(10)] == convs[3:]
    assert (chat.storage.get_agent("bob").active_count,
            chat.storage.get_agent("carol").active_count) == (2, 1)


def test_capacity_is_never_exceeded_and_a_freed_place_takes_the_next_waiting(chat):
    bob = connect(chat, "bob", "agent")
    chat.desk.set_agent_status(who(chat, bob), None, 2)
    alice = connect(chat, "alice", "customer")
    convs = [chat.desk.create_conversation(who(chat, alice)) for _ in range(3)]
    assert [c.status for c in convs] == ["active", "active", "waiting"]
    assert chat.storage.get_agent("bob").active_count == 2
    chat.desk.close(who(chat, bob), convs[0].conversation_id)
    third = chat.storage.get_conversation(convs[2].conversation_id)
    assert (third.status, third.agent_id) == ("active", "bob")
    assert chat.storage.get_agent("bob").active_count == 2


def test_fewest_active_wins_ties_by_id(chat):
    for agent in ("bob", "amy"):
        connect(chat, agent, "agent")
    alice = connect(chat, "alice", "customer")
    got = [chat.desk.create_conversation(who(chat, alice)).agent_id for _ in range(4)]
    assert got == ["amy", "bob", "amy", "bob"]


def test_away_and_offline_agents_get_nothing_and_coming_online_takes_work(chat):
    bob = connect(chat, "bob", "agent")
    chat.desk.set_agent_status(who(chat, bob), "away", None)
    alice = connect(chat, "alice", "customer")
    conv = chat.desk.create_conversation(who(chat, alice))
    assert conv.status == "waiting"
    # A second device of an away agent keeps him away.
    connect(chat, "bob", "agent", "bob-phone")
    assert chat.storage.get_agent("bob").presence == "away"
    agent = chat.desk.set_agent_status(who(chat, bob), "online", None)
    assert (agent.presence, agent.active_count) == ("online", 1)
    assert chat.storage.get_conversation(conv.conversation_id).agent_id == "bob"


def test_the_last_connection_going_takes_the_agent_offline(chat):
    connect(chat, "bob", "agent", "b1")
    connect(chat, "bob", "agent", "b2")
    chat.connections.disconnect("b1")
    assert chat.storage.get_agent("bob").presence == "online"
    chat.connections.disconnect("b2")
    assert chat.storage.get_agent("bob").presence == "offline"


def test_transfer_moves_the_conversation_and_both_agents_screens_follow(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    carol = connect(chat, "carol", "agent")
    send(chat, alice, cid, "m1")
    conv = chat.desk.transfer(who(chat, bob), cid, "carol")
    assert (conv.agent_id, conv.status, conv.last_seq) == ("carol", "active", 3)
    assert (chat.storage.get_agent("bob").active_count,
            chat.storage.get_agent("carol").active_count) == (0, 1)
    pump(chat)
    for origin in (alice, bob, carol):
        events = [f["event"] for f in frames(chat, origin, "conversation")]
        assert events[-1] == "transferred", origin
    [moved] = [f for f in frames(chat, carol, "message") if f.get("event") == "transferred"]
    assert (moved["previousAgentId"], moved["agentId"]) == ("bob", "carol")
    # bob is no longer a participant: he cannot write, read or transfer again.
    assert send(chat, bob, cid, "b1")["code"] == "forbidden"
    with pytest.raises(Forbidden):
        chat.messaging.list_messages(who(chat, bob), cid)
    with pytest.raises(Forbidden):
        chat.desk.transfer(who(chat, bob), cid, "bob")
    # carol sees the whole history, from seq 1.
    page = chat.messaging.list_messages(who(chat, carol), cid)
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]


def test_transfer_rules(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    with pytest.raises(Forbidden):
        chat.desk.transfer(who(chat, alice), cid, "bob")  # customers do not transfer
    with pytest.raises(NotFound):
        chat.desk.transfer(who(chat, bob), cid, "nobody")
    with pytest.raises(Conflict):
        chat.desk.transfer(who(chat, bob), cid, "bob")  # to oneself
    carol = connect(chat, "carol", "agent")
    chat.desk.set_agent_status(who(chat, carol), "away", None)
    with pytest.raises(Conflict):
        chat.desk.transfer(who(chat, bob), cid, "carol")  # away: no room
    chat.desk.set_agent_status(who(chat, carol), "online", 0)
    with pytest.raises(Conflict):
        chat.desk.transfer(who(chat, bob), cid, "carol")  # capacity 0
    assert chat.storage.get_conversation(cid).agent_id == "bob"
    assert chat.storage.get_conversation(cid).last_seq == 1  # nothing was appended


def test_close_is_once_then_conflict_and_read_only_for_the_agent(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    closed = chat.desk.close(who(chat, bob), cid)
    assert (closed.status, closed.last_seq, closed.agent_id) == ("closed", 2, "bob")
    with pytest.raises(Conflict):
        chat.desk.close(who(chat, alice), cid)
    assert chat.storage.get_conversation(cid).last_seq == 2
    reply = send(chat, bob, cid, "late")
    assert reply["code"] == "conversation_closed" and reply["messageId"] == "late"
    # Still readable by both.
    assert [m["event"] for m in chat.messaging.list_messages(who(chat, bob), cid)["messages"]] == [
        "assigned", "closed"]
    outsider = connect(chat, "eve", "customer")
    with pytest.raises(Forbidden):
        chat.desk.close(who(chat, outsider), cid)


def test_the_customer_reopens_within_the_window_and_the_message_follows_the_event(chat):
    _bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    chat.desk.close(who(chat, alice), cid)
    acc = send(chat, alice, cid, "again", "one more thing")
    assert acc["type"] == "accepted" and acc["seq"] == 4
    events = [(m.seq, m.event) for m in stored(chat, cid)]
    assert events == [(1, "assigned"), (2, "closed"), (3, "reopened"), (4, None), (5, "assigned")]
    conv = chat.storage.get_conversation(cid)
    assert (conv.status, conv.agent_id) == ("active", "bob")
    # A retry of the reopening message is a duplicate, not a second reopening.
    again = send(chat, alice, cid, "again", "one more thing")
    assert (again["seq"], again["duplicate"]) == (4, True)
    assert chat.storage.get_conversation(cid).last_seq == 5


def test_after_the_window_the_customer_must_open_a_new_conversation(chat):
    connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    chat.desk.close(who(chat, alice), cid)
    chat.clock.advance(601)
    reply = send(chat, alice, cid, "too-late")
    assert reply["code"] == "conversation_closed"
    assert chat.storage.get_conversation(cid).status == "closed"
    fresh = chat.desk.create_conversation(who(chat, alice))
    assert fresh.conversation_id != cid and fresh.status == "active"


def test_racing_closes_and_transfers_apply_exactly_once(chat):
    connect(chat, "bob", "agent")
    connect(chat, "carol", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    agent = chat.storage.get_conversation(cid).agent_id
    other = "carol" if agent == "bob" else "bob"
    from chalicelib.models import Principal
    results: list[str] = []
    barrier = threading.Barrier(8)

    def act(i: int) -> None:
        barrier.wait()
        try:
            if i % 2:
                chat.desk.close(Principal(user_id="alice", role="customer"), cid)
                results.append("closed")
            else:
                chat.desk.transfer(Principal(user_id=agent, role="agent"), cid, other)
                results.append("transferred")
        except (Conflict, Forbidden):
            pass

    threads = [threading.Thread(target=act, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [m.seq for m in stored(chat, cid)]
    assert seqs == list(range(1, len(seqs) + 1))
    events = [m.event for m in stored(chat, cid)]
    assert events.count("closed") <= 1 and events.count("transferred") <= 1
    assert sorted(results) == sorted(e for e in events if e in ("closed", "transferred"))
    loads = chat.storage.get_agent("bob").active_count + chat.storage.get_agent("carol").active_count
    assert loads == (0 if "closed" in events else 1)


def test_racing_assignments_from_many_creates_never_exceed_capacity(chat):
    for agent in ("bob", "carol"):
        connect(chat, agent, "agent")
        chat.desk.set_agent_status(chat.connections.principal_of(f"{agent}-conn"), None, 3)
    customers = [connect(chat, f"cust{i}", "customer") for i in range(10)]
    barrier = threading.Barrier(10)

    def create(i: int) -> None:
        barrier.wait()
        chat.desk.create_conversation(who(chat, customers[i]))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    convs = [chat.storage.get_conversation(f"conv{i}") for i in range(10)]
    active = [c for c in convs if c.status == "active"]
    assert len(active) == 6
    for agent in ("bob", "carol"):
        mine = [c for c in active if c.agent_id == agent]
        assert len(mine) == chat.storage.get_agent(agent).active_count == 3
    for c in active:
        assert [m.event for m in stored(chat, c.conversation_id)] == ["assigned"]
    assert len(chat.storage.waiting_conversations(100)) == 4


# ------------------------------------------------------- typing & read


def test_typing_is_relayed_to_the_others_only_and_never_stored(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    alice_phone = connect(chat, "alice", "customer", "alice-phone")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    on_frame(chat, alice, json.dumps({"action": "typing", "conversationId": cid}))
    assert frames(chat, bob, "typing") == [
        {"type": "typing", "conversationId": cid, "userId": "alice", "role": "customer"}]
    assert frames(chat, alice_phone, "typing") == [] and frames(chat, alice, "typing") == []
    assert chat.storage.get_conversation(cid).last_seq == 1
    outsider = connect(chat, "eve", "customer")
    on_frame(chat, outsider, json.dumps({"action": "typing", "conversationId": cid}))
    assert frames(chat, outsider, "error")[-1]["code"] == "forbidden"


def test_typing_is_rate_limited_per_connection():
    chat = make_chat(RATE_CONNECTION_TYPING="3")
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    for _ in range(5):
        on_frame(chat, alice, json.dumps({"action": "typing", "conversationId": cid}))
    assert len(frames(chat, bob, "typing")) == 3
    assert [f["code"] for f in frames(chat, alice, "error")] == ["rate_limited"] * 2
    chat.clock.advance(10)
    on_frame(chat, alice, json.dumps({"action": "typing", "conversationId": cid}))
    assert len(frames(chat, bob, "typing")) == 4


def test_read_moves_forward_only_and_is_forwarded(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    alice_phone = connect(chat, "alice", "customer", "alice-phone")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    send(chat, bob, cid, "b1")
    on_frame(chat, alice, json.dumps({"action": "read", "conversationId": cid, "seq": 2}))
    on_frame(chat, alice, json.dumps({"action": "read", "conversationId": cid, "seq": 1}))
    expected = {"type": "read", "conversationId": cid, "userId": "alice", "role": "customer", "seq": 2}
    assert frames(chat, bob, "read") == [expected]
    assert frames(chat, alice_phone, "read") == [expected]  # the reader's other device
    assert frames(chat, alice, "read") == []
    view = chat.desk.get_conversation(who(chat, bob), cid)
    assert {p["userId"]: p["readSeq"] for p in view["participants"]} == {"alice": 2, "bob": 0}
    on_frame(chat, alice, json.dumps({"action": "read", "conversationId": cid, "seq": 9}))
    assert frames(chat, alice, "error")[-1]["code"] == "bad_request"


# ------------------------------------------------------------ multi-device


def test_every_device_gets_every_message_and_a_fresh_device_resumes_from_the_server_cursor(chat):
    connect(chat, "bob", "agent")
    laptop = connect(chat, "alice", "customer", "laptop")
    phone = connect(chat, "alice", "customer", "phone")
    bob = Origin("bob-conn", "gw.example", "api")
    cid = chat.desk.create_conversation(who(chat, laptop)).conversation_id
    send(chat, laptop, cid, "m1")
    send(chat, bob, cid, "b1")
    pump(chat)
    # Each once; the messages come by the sender's fast path, the "assigned"
    # event through the queue, so it may arrive after them (the seq rule orders).
    assert sorted(f["seq"] for f in frames(chat, phone, "message")) == [1, 2, 3]
    assert sorted(f["seq"] for f in frames(chat, laptop, "message")) == [1, 3]  # its own: "accepted"
    on_frame(chat, phone, json.dumps({"action": "ack", "conversationId": cid, "seq": 2}))
    tablet = connect(chat, "alice", "customer", "tablet")
    on_frame(chat, tablet, json.dumps({"action": "resume"}))
    assert [f["seq"] for f in frames(chat, tablet, "message")] == [3]
    assert frames(chat, tablet, "resumed")[-1]["conversations"] == {cid: 3}


# --------------------------------------------------- authorization & REST


def test_authorization_matrix(chat):
    bob = connect(chat, "bob", "agent")
    carol = connect(chat, "carol", "agent")
    chat.desk.set_agent_status(who(chat, carol), "away", None)
    alice = connect(chat, "alice", "customer")
    eve = connect(chat, "eve", "customer")
    mine = chat.desk.create_conversation(who(chat, alice)).conversation_id  # bob's
    chat.desk.set_agent_status(who(chat, bob), None, 1)  # full: the next one waits
    waiting = chat.desk.create_conversation(who(chat, eve)).conversation_id
    A, B, C, E = (who(chat, o) for o in (alice, bob, carol, eve))

    # Opening is for customers; agent-only routes are for agents.
    with pytest.raises(Forbidden):
        chat.desk.open_conversation(B)
    for call in (lambda p: chat.desk.list_agents(p), lambda p: chat.desk.waiting_queue(p, 10),
                 lambda p: chat.desk.set_agent_status(p, "online", None)):
        with pytest.raises(Forbidden):
            call(A)
    # Viewing: customers their own; agents their assigned ones and the waiting queue.
    assert chat.desk.get_conversation(A, mine)["conversationId"] == mine
    assert chat.desk.get_conversation(B, mine)["agentId"] == "bob"
    assert chat.desk.get_conversation(C, waiting)["status"] == "waiting"
    for principal, cid in ((E, mine), (C, mine), (A, waiting)):
        with pytest.raises(Forbidden):
            chat.desk.get_conversation(principal, cid)
        with pytest.raises(Forbidden):
            chat.messaging.list_messages(principal, cid)
        with pytest.raises(Forbidden):
            chat.desk.close(principal, cid)
    with pytest.raises(Forbidden):
        chat.messaging.list_messages(C, waiting)  # the queue shows summaries, not messages
    assert [c["conversationId"] for c in chat.desk.list_conversations(A, None, 10, None)["conversations"]] == [mine]
    assert [c["conversationId"] for c in chat.desk.list_conversations(B, None, 10, None)["conversations"]] == [mine]
    assert chat.desk.list_conversations(C, None, 10, None)["conversations"] == []
    queue = chat.desk.waiting_queue(C, 10)["conversations"]
    assert [(c["conversationId"], c["position"]) for c in queue] == [(waiting, 1)]
    with pytest.raises(NotFound):
        chat.desk.get_conversation(A, "nope")


def test_history_pages_both_ways(chat):
    bob = connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    for i in range(9):
        send(chat, alice if i % 2 else bob, cid, f"m{i}")
    A = who(chat, alice)
    first = chat.messaging.list_messages(A, cid, after=0, limit=4)
    assert [m["seq"] for m in first["messages"]] == [1, 2, 3, 4]
    assert (first["next"], first["prev"]) == (4, None)
    latest = chat.messaging.list_messages(A, cid, before=11, limit=4)
    assert [m["seq"] for m in latest["messages"]] == [7, 8, 9, 10]
    assert (latest["next"], latest["prev"]) == (None, 7)
    older = chat.messaging.list_messages(A, cid, before=latest["prev"], limit=4)
    assert [m["seq"] for m in older["messages"]] == [3, 4, 5, 6]
    with pytest.raises(BadRequest):
        chat.messaging.list_messages(A, cid, after=1, before=5)


def test_open_conversation_with_an_idempotency_key_returns_the_same_conversation(chat):
    alice = connect(chat, "alice", "customer")
    eve = connect(chat, "eve", "customer")
    first, created = chat.desk.open_conversation(who(chat, alice), "order-17")
    again, created_again = chat.desk.open_conversation(who(chat, alice), "order-17")
    assert created and not created_again and again.conversation_id == first.conversation_id
    other, _ = chat.desk.open_conversation(who(chat, eve), "order-17")
    assert other.conversation_id != first.conversation_id
    with pytest.raises(BadRequest):
        chat.desk.open_conversation(who(chat, alice), "bad key with spaces")
    # After the retention window the key opens a new conversation.
    chat.clock.advance(chat.config.idempotency_ttl_seconds + 1)
    later, created_later = chat.desk.open_conversation(who(chat, alice), "order-17")
    assert created_later and later.conversation_id != first.conversation_id


# ------------------------------------------------------------- rate limits


def test_sends_over_the_limit_are_refused_and_nothing_is_stored():
    chat = make_chat(RATE_CONNECTION_SENDS="3", RATE_USER_SENDS="4")
    connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    phone = connect(chat, "alice", "customer", "alice-phone")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    replies = [send(chat, alice, cid, f"m{i}") for i in range(4)]
    assert [r["type"] for r in replies] == ["accepted"] * 3 + ["error"]
    assert (replies[3]["code"], replies[3]["messageId"]) == ("rate_limited", "m3")
    assert send(chat, phone, cid, "p0")["type"] == "accepted"  # the user's 4th
    assert send(chat, phone, cid, "p1")["code"] == "rate_limited"  # the user's limit
    assert chat.storage.get_conversation(cid).last_seq == 5
    assert chat.storage.get_idempotency("alice", cid, "m3", 0) is None
    chat.clock.advance(10)
    assert send(chat, alice, cid, "m3")["seq"] == 6  # the connection stays usable


# --------------------------------------------------------------- retention


def test_messages_are_kept_unless_a_retention_is_configured():
    kept = make_chat()
    connect(kept, "bob", "agent")
    alice = connect(kept, "alice", "customer")
    cid = kept.desk.create_conversation(who(kept, alice)).conversation_id
    send(kept, alice, cid, "m1")
    assert kept.storage.get_message(cid, 2).expires_at is None

    expiring = make_chat(MESSAGE_RETENTION_DAYS="30")
    connect(expiring, "bob", "agent")
    alice = connect(expiring, "alice", "customer")
    cid = expiring.desk.create_conversation(who(expiring, alice)).conversation_id
    acc = send(expiring, alice, cid, "m1")
    from chalicelib.core import epoch_ms
    assert expiring.storage.get_message(cid, 2).expires_at == epoch_ms(acc["sentAt"]) // 1000 + 30 * 86400


def test_a_new_conversation_the_lagging_queue_index_misses_is_still_assigned(chat):
    class LaggingIndex(MemoryStorage):
        """waiting_conversations as an eventually consistent GSI: the newest is not there yet."""

        def waiting_conversations(self, limit):
            return super().waiting_conversations(limit)[:-1]

    clock = Clock()
    lagging = build_services(chat.config, Ports(LaggingIndex(), MemoryQueue(), MemoryPusher(), clock=clock, sleep=clock.sleep,
                                                new_id=iter(f"c{i}" for i in range(10)).__next__))
    connect(lagging, "bob", "agent")
    alice = connect(lagging, "alice", "customer")
    conv = lagging.desk.create_conversation(who(lagging, alice))
    assert (conv.status, conv.agent_id) == ("active", "bob")


def test_the_sweep_assigns_what_a_lost_trigger_left_waiting(chat):
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    # An agent came online but the handler died before it ran the queue.
    run_queue, chat.desk.assign_waiting = chat.desk.assign_waiting, lambda limit=25: 0
    connect(chat, "bob", "agent")
    chat.desk.assign_waiting = run_queue
    assert chat.storage.get_conversation(cid).status == "waiting"
    chat.sweeper.sweep()
    assert chat.storage.get_conversation(cid).agent_id == "bob"


def test_over_the_limit_a_retry_of_a_stored_message_is_still_answered():
    chat = make_chat(RATE_CONNECTION_SENDS="2")
    connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    first = send(chat, alice, cid, "m0")
    send(chat, alice, cid, "m1")
    again = send(chat, alice, cid, "m0")
    assert (again["type"], again["seq"], again["duplicate"]) == ("accepted", first["seq"], True)
    assert send(chat, alice, cid, "m2")["code"] == "rate_limited"


def test_rest_writes_are_rate_limited_per_user():
    chat = make_chat(RATE_USER_REQUESTS="3")
    alice = connect(chat, "alice", "customer")
    convs = [chat.desk.create_conversation(who(chat, alice)) for _ in range(3)]
    from chalicelib.errors import RateLimited
    with pytest.raises(RateLimited):
        chat.desk.create_conversation(who(chat, alice))
    with pytest.raises(RateLimited):
        chat.desk.close(who(chat, alice), convs[0].conversation_id)
    assert len(chat.storage.conversations_of("alice", "customer", None, 10, None)[0]) == 3
    eve = connect(chat, "eve", "customer")
    chat.desk.create_conversation(who(chat, eve))  # per user
    chat.clock.advance(10)
    assert chat.desk.close(who(chat, alice), convs[0].conversation_id).status == "closed"


# ------------------------------------------------------------ presence


def test_the_sweep_takes_agents_whose_connections_vanished_offline(chat):
    bob = connect(chat, "bob", "agent", "bob-laptop")
    connect(chat, "bob", "agent", "bob-phone")
    connect(chat, "amy", "agent", "amy-desk")
    # The laptop's socket died without a $disconnect; the phone's record
    # expired by TTL (deleted without the count going down).
    chat.pusher.gone.add("bob-laptop")
    chat.storage._connections.pop("bob-phone")
    assert chat.presence.reconcile_presence() == 0  # too young: may still be in $connect
    chat.clock.advance(31)
    chat.sweeper.sweep()  # the dead socket is pruned (count 2 -> 1) ...
    assert chat.storage.get_connection("bob-laptop") is None
    assert chat.storage.get_agent("bob").connections == 1
    chat.clock.advance(31)
    chat.sweeper.sweep()  # ... and once that has settled, the count follows the records
    bob_now = chat.storage.get_agent("bob")
    assert (bob_now.presence, bob_now.connections) == ("offline", 0)
    assert chat.storage.get_connection("bob-laptop") is None
    amy = chat.storage.get_agent("amy")
    assert (amy.presence, amy.connections) == ("online", 1)  # alive: untouched
    # Offline now, so new conversations go to amy only.
    alice = connect(chat, "alice", "customer")
    assert {chat.desk.create_conversation(who(chat, alice)).agent_id for _ in range(3)} == {"amy"}
    assert bob.connection_id == "bob-laptop"


def test_reconciliation_keeps_an_agent_who_just_connected(chat):
    connect(chat, "bob", "agent", "b1")
    chat.clock.advance(31)
    seen = chat.storage.get_agent("bob")
    connect(chat, "bob", "agent", "b2")  # a connect between the read and the write
    assert chat.storage.set_agent_connections("bob", seen.updated_at, 0, "x") is False
    chat.presence.reconcile_presence()
    assert chat.storage.get_agent("bob").connections == 2


# ---------------------------------------------------------- nothing gets stuck


def events_of(chat: Services, cid: str) -> list[str | None]:
    return [m.event for m in stored(chat, cid) if m.sender_role == "system"]


def test_an_agent_who_goes_away_hands_on_every_active_conversation_within_capacity(chat):
    from chalicelib.models import Principal
    gus = connect(chat, "gus", "agent")
    alice, carl = connect(chat, "alice", "customer"), connect(chat, "carl", "customer")
    first = chat.desk.create_conversation(who(chat, alice)).conversation_id
    second = chat.desk.create_conversation(who(chat, carl)).conversation_id
    send(chat, alice, first, "a1", "where is my order?")
    assert chat.storage.get_agent("gus").active_count == 2
    chat.desk.set_agent_status(Principal(user_id="hal", role="agent"), None, 1)
    hal = connect(chat, "hal", "agent")

    chat.desk.set_agent_status(who(chat, gus), "away", None)

    # Oldest first to the agent with room; the other waits: nobody is over capacity.
    assert (chat.storage.get_conversation(first).status, chat.storage.get_conversation(first).agent_id) == (
        "active", "hal")
    assert (chat.storage.get_conversation(second).status, chat.storage.get_conversation(second).agent_id) == (
        "waiting", None)
    assert events_of(chat, first) == ["assigned", "requeued", "assigned"]
    assert events_of(chat, second) == ["assigned", "requeued"]
    assert (chat.storage.get_agent("gus").active_count, chat.storage.get_agent("hal").active_count) == (0, 1)
    # The customers see it; gus's console is told (previousAgentId) and he may no longer write.
    pump(chat)
    for origin, cid in ((alice, first), (carl, second)):
        moved = [f for f in frames(chat, origin, "message") if f.get("event") == "requeued"]
        assert [(f["conversationId"], f["status"], f["previousAgentId"]) for f in moved] == [
            (cid, "waiting", "gus")]
        assert "gus is no longer available" in moved[0]["body"]
    assert {f["conversationId"] for f in frames(chat, gus, "conversation") if f["event"] == "requeued"} == {
        first, second}
    assert send(chat, gus, first, "g1")["code"] == "forbidden"
    # hal sees the whole history and answers; when he closes, the waiting one is his.
    assert [m["seq"] for m in chat.messaging.list_messages(who(chat, hal), first)["messages"]] == [1, 2, 3, 4]
    assert send(chat, hal, first, "h1")["type"] == "accepted"
    chat.desk.close(who(chat, hal), first)
    assert chat.storage.get_conversation(second).agent_id == "hal"


def test_an_agent_with_no_connection_left_keeps_their_conversations_for_the_grace_only(chat):
    connect(chat, "gus", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    chat.connections.disconnect("gus-conn")
    assert chat.storage.get_agent("gus").presence == "offline"
    chat.sweeper.sweep()
    assert chat.storage.get_conversation(cid).agent_id == "gus"  # a reload reconnects within the grace
    # Back within the grace: nothing moves, however long he then stays.
    gus = connect(chat, "gus", "agent")
    chat.clock.advance(chat.config.agent_gone_grace_seconds + 1)
    chat.sweeper.sweep()
    assert chat.storage.get_conversation(cid).agent_id == "gus"
    # Gone for good: past the grace the sweep puts it back in the queue.
    chat.connections.disconnect(gus.connection_id)
    chat.clock.advance(chat.config.agent_gone_grace_seconds - 1)
    chat.sweeper.sweep()
    assert chat.storage.get_conversation(cid).agent_id == "gus"
    chat.clock.advance(2)
    chat.sweeper.sweep()
    conv = chat.storage.get_conversation(cid)
    assert (conv.status, conv.agent_id, chat.storage.get_agent("gus").active_count) == ("waiting", None, 0)
    assert events_of(chat, cid) == ["assigned", "requeued"]
    chat.sweeper.sweep()
    assert events_of(chat, cid) == ["assigned", "requeued"]  # once
    connect(chat, "hal", "agent")
    assert chat.storage.get_conversation(cid).agent_id == "hal"


def test_the_sweep_requeues_what_a_dead_status_handler_left_with_an_away_agent(chat):
    gus = connect(chat, "gus", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    # The status was written, then the handler died before it moved anything.
    requeue, chat.desk.requeue_agent = chat.desk.requeue_agent, lambda agent_id: 0
    chat.desk.set_agent_status(who(chat, gus), "away", None)
    chat.desk.requeue_agent = requeue
    assert chat.storage.get_conversation(cid).agent_id == "gus"
    chat.clock.advance(chat.config.agent_gone_grace_seconds + 1)
    chat.sweeper.sweep()
    assert chat.storage.get_conversation(cid).status == "waiting"


def test_a_reopened_conversation_goes_back_to_its_agent_when_online_with_room_else_to_the_queue(chat):
    bob = connect(chat, "bob", "agent")
    alice, carl, dora = (connect(chat, u, "customer") for u in ("alice", "carl", "dora"))
    cid = chat.desk.create_conversation(who(chat, alice)).conversation_id
    chat.desk.create_conversation(who(chat, carl))  # bob: 2 active
    carol = connect(chat, "carol", "agent")  # carol: 0 active, the least loaded
    chat.desk.close(who(chat, alice), cid)
    send(chat, alice, cid, "again", "one more thing")
    assert chat.storage.get_conversation(cid).agent_id == "bob"
    assert events_of(chat, cid)[-2:] == ["reopened", "assigned"]
    # bob away: the next reopening goes to the queue, which gives it to carol.
    other = chat.desk.create_conversation(who(chat, dora)).conversation_id
    assert chat.storage.get_conversation(other).agent_id == "carol"
    chat.desk.transfer(who(chat, carol), other, "bob")
    chat.desk.close(who(chat, dora), other)
    chat.desk.set_agent_status(who(chat, bob), "away", None)
    send(chat, dora, other, "back", "me again")
    assert chat.storage.get_conversation(other).agent_id == "carol"
