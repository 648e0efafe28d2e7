"""The services against the in-memory adapters: every rule of the message path."""

import json
import threading

import pytest


from chalicelib.auth import mint_token
from chalicelib.config import Config
from chalicelib.errors import ConnectionGone, Forbidden, NotFound, OnceChatError, Unauthorized
from chalicelib.models import AckFrame, ResumeFrame, SendFrame
from chalicelib.ports import MemoryPusher, MemoryQueue
from chalicelib.services import DeliveryFailed, Origin, Ports, build_services
from chalicelib.storage.memory import MemoryStorage

SECRET = "test-secret-that-is-at-least-32-bytes-long"


class Clock:
    def __init__(self):
        self.t = 1_800_000_000_000
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.t += 1
            return self.t

    def sleep(self, seconds):
        """What the services wait for passes on this clock; nothing sleeps."""
        with self.lock:
            self.t += int(seconds * 1000)


@pytest.fixture
def env():
    # Rate limits are not under test here (the message path is): high enough for the backlogs.
    config = Config.from_env({"STAGE": "test", "JWT_SECRET": SECRET, "RESUME_MAX_MESSAGES": "500",
                              "PAGE_SIZE": "40", "RATE_USER_SENDS": "100000",
                              "RATE_CONNECTION_SENDS": "100000", "REPLIES": "route"})
    storage, queue, pusher = MemoryStorage(), MemoryQueue(), MemoryPusher()
    ids = iter(f"conv{i}" for i in range(1000))
    clock = Clock()
    chat = build_services(config, Ports(storage, queue, pusher, clock=clock, new_id=lambda: next(ids),
                                        sleep=clock.sleep))
    return chat


def connect(chat, user, role, cid=None):
    origin = Origin(cid or f"{user}-conn", "gw.example", "api")
    chat.connections.connect(mint_token(SECRET, user, role), origin)
    return origin


def frame(chat, origin, **f):
    """Handle a frame as every stage does (REPLIES=route): the reply is the route's response, or else the last push."""
    reply = chat.messaging.on_frame(origin, json.dumps(f))
    if reply is not None:
        return reply
    return chat.pusher.frames(origin.connection_id)[-1] if chat.pusher.frames(origin.connection_id) else None


def pump(chat):
    """Run the consumer over everything enqueued so far."""
    return chat.consumer.deliver(d.to_json() for d in chat.queue.drain())


def last_seq(chat, cid):
    return chat.storage.get_conversation(cid).last_seq


@pytest.fixture
def chatting(env):
    """alice (customer) and bob (agent), connected, in one active conversation.

    The assignment is the conversation's first message: the "assigned" system
    message at seq 1, enqueued and delivered like any message. It is delivered
    here, and the frames pushed so far forgotten, so tests see only their own.
    """
    bob = connect(env, "bob", "agent")
    alice = connect(env, "alice", "customer")
    conv = env.desk.create_conversation(env.connections.principal_of(alice.connection_id))
    cid = conv.conversation_id
    assert conv.status == "active" and conv.agent_id == "bob" and conv.last_seq == 1
    system = env.storage.get_message(cid, 1)
    assert (system.sender_id, system.sender_role, system.message_id) == ("system", "system", "system-1")
    assert (system.event, system.status, system.agent_id) == ("assigned", "active", "bob")
    assert [d.message.seq for d in env.queue.items] == [1]
    assert pump(env) == 2
    for who in (alice, bob):
        [msg] = env.pusher.frames(who.connection_id, "message")
        assert (msg["seq"], msg["senderRole"], msg["event"], msg["agentId"]) == (1, "system", "assigned", "bob")
    env.pusher.sent.clear()
    return env, alice, bob, cid


def test_bad_token_is_refused_and_nothing_recorded(env):
    with pytest.raises(Unauthorized):
        env.connections.connect("garbage", Origin("x", "d", "s"))
    with pytest.raises(Unauthorized):
        env.connections.connect(mint_token("other-secret", "u", "customer"), Origin("x", "d", "s"))
    with pytest.raises(Unauthorized):
        env.connections.connect(mint_token(SECRET, "u", "admin"), Origin("x", "d", "s"))
    assert env.storage.get_connection("x") is None


def test_send_is_accepted_stored_and_pushed_at_once_with_nothing_queued(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)  # the system message(s) before it
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hello")
    assert acc["type"] == "accepted" and acc["seq"] == s + 1 and acc["duplicate"] is False
    assert acc["sentAt"].endswith("Z")
    assert chat.storage.get_message(cid, s + 1).body == "hello"
    assert [f["seq"] for f in chat.pusher.frames(bob.connection_id, "message")] == [s + 1]
    assert chat.queue.items == []  # the fast path reached every connection


def test_a_failed_push_is_queued_for_that_connection_only(chatting):
    chat, alice, bob, cid = chatting
    laptop = connect(chat, "bob", "agent", "bob-laptop")
    chat.pusher.failing.add(laptop.connection_id)
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hello")
    [queued] = chat.queue.items
    assert queued.fast and [c.connection_id for c in queued.retry] == [laptop.connection_id]
    chat.pusher.failing.discard(laptop.connection_id)
    pump(chat)
    assert [f["seq"] for f in chat.pusher.frames(laptop.connection_id, "message")] == [acc["seq"]]
    assert [f["seq"] for f in chat.pusher.frames(bob.connection_id, "message")] == [acc["seq"]]


def test_duplicate_send_same_seq_and_reenqueued(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    first = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hello")
    again = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hello")
    assert again["seq"] == first["seq"] == s + 1 and again["sentAt"] == first["sentAt"]
    assert again["duplicate"] is True
    assert chat.storage.get_conversation(cid).last_seq == s + 1
    # the duplicate enqueues the same message (the first may have died before pushing)
    assert [d.message.seq for d in chat.queue.items] == [s + 1]


def test_commit_then_enqueue_failure_is_repaired_by_retry(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    chat.pusher.failing.add(bob.connection_id)  # the fast push fails: it must be queued
    chat.queue.fail_next = 1  # and the queue fails too
    err = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert err["type"] == "error" and err["code"] == "internal" and err["messageId"] == "m1"
    assert chat.queue.items == [] and chat.storage.get_conversation(cid).last_seq == s + 1
    chat.pusher.failing.discard(bob.connection_id)
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert acc["seq"] == s + 1 and acc["duplicate"] is True
    assert len(chat.queue.items) == 1  # the retry enqueued it
    pump(chat)
    assert [f["seq"] for f in chat.pusher.frames(bob.connection_id, "message")] == [s + 1]


def test_a_retry_stores_a_claimed_message_whose_sender_died_before_storing(chatting, monkeypatch):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    real_put = chat.storage.put_message
    monkeypatch.setattr(chat.storage, "put_message", lambda *a: (_ for _ in ()).throw(RuntimeError("died")))
    err = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert err["code"] == "internal"
    assert chat.storage.get_idempotency("alice", cid, "m1", 0).seq == s + 1  # claimed, not stored
    assert chat.storage.get_message(cid, s + 1) is None
    monkeypatch.setattr(chat.storage, "put_message", real_put)
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert (acc["type"], acc["seq"], acc["duplicate"]) == ("accepted", s + 1, False)  # its first
    assert chat.storage.get_message(cid, s + 1).body == "x"
    again = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert (again["seq"], again["duplicate"]) == (s + 1, True)
    # the retry (answered by another container) reserved a seq before it knew: made void
    assert last_seq(chat, cid) == s + 2 and chat.storage.get_message(cid, s + 2).void
    pump(chat)
    pushed = chat.pusher.frames(bob.connection_id, "message")
    # (the second retry delivered it again: a copy the client drops by seq)
    assert {(f["seq"], f.get("void", False)) for f in pushed} == {(s + 1, False), (s + 2, True)}


def test_a_claim_on_a_voided_seq_moves_to_a_new_seq(chatting, monkeypatch):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    real_put = chat.storage.put_message
    monkeypatch.setattr(chat.storage, "put_message", lambda *a: (_ for _ in ()).throw(RuntimeError("died")))
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    monkeypatch.setattr(chat.storage, "put_message", real_put)
    chat.storage.fill_hole(cid, s + 1, 0)  # a reader found it empty past the grace
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    # s+2: reserved by the retry before it knew (void); s+3: where the claim moved
    assert (acc["type"], acc["seq"], acc["duplicate"]) == ("accepted", s + 3, False)
    assert chat.storage.get_message(cid, s + 1).void and chat.storage.get_message(cid, s + 2).void
    assert chat.storage.get_message(cid, s + 3).message_id == "m1"
    assert chat.storage.get_idempotency("alice", cid, "m1", 0).seq == s + 3
    again = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    assert (again["seq"], again["duplicate"]) == (s + 3, True)
    assert [f["seq"] for f in chat.pusher.frames(bob.connection_id, "message")] == [s + 3]


def test_same_message_id_other_body_conflicts(chatting):
    chat, alice, bob, cid = chatting
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    err = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="y")
    assert err["code"] == "conflict" and err["messageId"] == "m1"


def test_message_ids_are_per_sender(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    a = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    b = frame(chat, bob, action="send", conversationId=cid, messageId="m1", body="y")
    assert (a["seq"], b["seq"]) == (s + 1, s + 2) and b["duplicate"] is False


def test_concurrent_senders_get_gapless_distinct_seqs(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    results, lock = [], threading.Lock()

    def worker(who, n):
        p = chat.connections.principal_of(who.connection_id)
        for i in range(n):
            f = SendFrame(action="send", conversation_id=cid, message_id=f"{p.user_id}-{i}", body="b")
            acc = chat.messaging.send(p, who, f)
            with lock:
                results.append((acc["messageId"], acc["seq"]))

    threads = [threading.Thread(target=worker, args=(w, 30)) for w in (alice, bob, alice, bob)]
    # two threads per user reuse messageIds: racing duplicates must map to one seq
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(results) == 120  # every send was answered
    seq_of = dict(results)
    assert len(seq_of) == 60 and len(set(seq_of.values())) == 60
    assert all(seq_of[mid] == seq for mid, seq in results)  # a duplicate got the first seq
    # Every reserved seq holds the message answered with it, or is void (the
    # seq a losing duplicate reserved): none is empty, none holds two.
    last = chat.storage.get_conversation(cid).last_seq
    stored = chat.storage.messages_after(cid, s, 1000)
    assert [m.seq for m in stored] == list(range(s + 1, last + 1))
    assert {m.message_id: m.seq for m in stored if not m.void} == seq_of


def test_delivery_reaches_everyone_but_origin(chatting):
    chat, alice, bob, cid = chatting
    alice2 = connect(chat, "alice", "customer", "alice-phone")
    s = last_seq(chat, cid)
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    # pushed at once by the sender's handler (its fast path); the queued
    # delivery then has nothing left to push
    assert [f["body"] for f in chat.pusher.frames(bob.connection_id, "message")] == ["hi"]
    assert pump(chat) == 0
    assert [f["seq"] for f in chat.pusher.frames(alice2.connection_id, "message")] == [s + 1]
    assert chat.pusher.frames(alice.connection_id, "message") == []
    msg = chat.pusher.frames(bob.connection_id, "message")[0]
    assert set(msg) == {"type", "conversationId", "seq", "messageId", "senderId", "senderRole",
                        "body", "sentAt"}
    assert msg["senderId"] == "alice" and msg["senderRole"] == "customer"


def test_gone_connection_is_pruned_without_failing(chatting):
    chat, alice, bob, cid = chatting
    chat.pusher.gone.add(bob.connection_id)
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    chat.clock.t += 31_000  # long after bob's $connect
    pump(chat)
    assert chat.storage.get_connection(bob.connection_id) is None
    assert chat.storage.get_agent("bob").connections == 0
    assert chat.storage.get_agent("bob").presence == "offline"


def test_other_push_failure_fails_batch_after_trying_all(chatting):
    chat, alice, bob, cid = chatting
    alice2 = connect(chat, "alice", "customer", "alice-phone")
    chat.pusher.failing.add(bob.connection_id)
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    batch = [d.to_json() for d in chat.queue.drain()]
    with pytest.raises(DeliveryFailed):
        chat.consumer.deliver(batch)
    assert len(chat.pusher.frames(alice2.connection_id, "message")) == 1
    chat.pusher.failing.clear()
    chat.consumer.deliver(batch)  # the redelivery
    assert len(chat.pusher.frames(bob.connection_id, "message")) == 1


def test_a_redelivered_batch_pushes_again_and_reads_no_conversation(chatting):
    """SQS redelivery repeats the push (the client drops it by seq); the queued
    delivery names its recipients, so the consumer reads only their connections."""
    chat, alice, bob, cid = chatting
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    batch = [d.to_json() for d in chat.queue.drain()]
    reads = []
    real = chat.storage.get_conversation
    chat.storage.get_conversation = lambda c: reads.append(c) or real(c)
    chat.pusher.failing.add(bob.connection_id)
    frame(chat, alice, action="send", conversationId=cid, messageId="m2", body="again")
    chat.pusher.failing.discard(bob.connection_id)
    batch = [d.to_json() for d in chat.queue.drain()]  # the fast push to bob failed
    chat.consumer.deliver(batch)
    chat.consumer.deliver(batch)  # SQS redelivered it
    assert [f["body"] for f in chat.pusher.frames(bob.connection_id, "message")] == ["hi", "again", "again"]
    assert reads == []


def test_ack_only_moves_forward(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    for i in range(5):
        frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}", body="x")
    frame(chat, bob, action="ack", conversationId=cid, seq=s + 4)
    frame(chat, bob, action="ack", conversationId=cid, seq=s + 2)
    assert chat.storage.get_participant("bob", cid).ack_seq == s + 4
    err = frame(chat, bob, action="ack", conversationId=cid, seq=s + 9)  # beyond the last
    assert err["code"] == "bad_request"
    assert chat.storage.get_participant("bob", cid).ack_seq == s + 4


def test_resume_replays_a_long_backlog_in_order(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    for i in range(1200):
        acc = chat.messaging.send(chat.connections.principal_of(alice.connection_id), alice,
                        SendFrame(action="send", conversation_id=cid, message_id=f"m{i}", body=str(i)))
        assert acc["seq"] == s + i + 1
    fresh = connect(chat, "bob", "agent", "bob-laptop")
    frame(chat, fresh, action="resume", cursors={cid: s + 100})
    frames = chat.pusher.frames(fresh.connection_id)
    msgs = [f["seq"] for f in frames if f["type"] == "message"]
    assert msgs == list(range(s + 101, s + 601))  # capped at RESUME_MAX_MESSAGES=500
    assert frames[-1] == {"type": "resumed", "conversations": {cid: s + 1200}}
    frame(chat, fresh, action="resume", cursors={cid: s + 600})
    frame(chat, fresh, action="resume", cursors={cid: s + 1100})
    msgs = [f["seq"] for f in chat.pusher.frames(fresh.connection_id, "message")]
    assert msgs == list(range(s + 101, s + 1201))


def test_resume_uses_stored_cursor_for_unlisted(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    for i in range(6):
        frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}", body="x")
    frame(chat, bob, action="ack", conversationId=cid, seq=s + 4)
    fresh = connect(chat, "bob", "agent", "bob-new")
    frame(chat, fresh, action="resume", cursors={})
    assert [f["seq"] for f in chat.pusher.frames(fresh.connection_id, "message")] == [s + 5, s + 6]


def test_only_participants(chatting):
    chat, alice, bob, cid = chatting
    eve = connect(chat, "eve", "customer")
    carol = connect(chat, "carol", "agent")
    for who in (eve, carol):
        assert frame(chat, who, action="send", conversationId=cid, messageId="m", body="x")["code"] == "forbidden"
        assert frame(chat, who, action="ack", conversationId=cid, seq=0)["code"] == "forbidden"
        assert frame(chat, who, action="resume", cursors={cid: 0})["code"] == "forbidden"
        with pytest.raises(Forbidden):
            chat.messaging.list_messages(chat.connections.principal_of(who.connection_id), cid, 0, 10)
    assert frame(chat, eve, action="send", conversationId="nope", messageId="m", body="x")["code"] == "not_found"


def test_unknown_connection_and_garbage_get_error_frames(chatting):
    chat, alice, bob, cid = chatting
    stranger = Origin("ghost", "d", "s")
    assert frame(chat, stranger, action="ack", conversationId=cid, seq=0)["code"] == "unauthorized"
    assert frame(chat, alice, **{"{": "x"})["code"] == "bad_request"
    assert chat.messaging.on_frame(alice, "{{{")["code"] == "bad_request"
    # and the connection keeps working
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="ok", body="x")
    assert acc["type"] == "accepted"


def test_waiting_conversation_goes_to_least_loaded_agent_on_connect(env):
    alice = connect(env, "alice", "customer")
    c1 = env.desk.create_conversation(env.connections.principal_of(alice.connection_id))
    c2 = env.desk.create_conversation(env.connections.principal_of(alice.connection_id))
    assert c1.status == "waiting" and c1.agent_id is None
    connect(env, "bob", "agent")
    assert env.storage.get_conversation(c1.conversation_id).agent_id == "bob"
    assert env.storage.get_conversation(c2.conversation_id).agent_id == "bob"
    connect(env, "zed", "agent")
    c3 = env.desk.create_conversation(env.connections.principal_of(alice.connection_id))
    assert c3.agent_id == "zed"  # fewest active conversations


def test_agent_cannot_create_conversation(env):
    bob = connect(env, "bob", "agent")
    with pytest.raises(Forbidden):
        env.desk.create_conversation(env.connections.principal_of(bob.connection_id))


def test_list_messages_pages(chatting):
    chat, alice, bob, cid = chatting
    s = last_seq(chat, cid)
    for i in range(7):
        frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}", body=str(i))
    who = chat.connections.principal_of(bob.connection_id)
    page = chat.messaging.list_messages(who, cid, 0, 1)  # history starts with the assignment
    [first] = page["messages"]
    assert (first["seq"], first["senderRole"], first["event"]) == (1, "system", "assigned")
    assert page["next"] == 1 and page["prev"] is None
    page = chat.messaging.list_messages(who, cid, s, 3)
    assert [m["seq"] for m in page["messages"]] == [s + 1, s + 2, s + 3] and page["next"] == s + 3
    assert [m["body"] for m in page["messages"]] == ["0", "1", "2"]
    page = chat.messaging.list_messages(who, cid, s + 6, 3)
    assert [m["seq"] for m in page["messages"]] == [s + 7] and page["next"] is None
    with pytest.raises(NotFound):
        chat.messaging.list_messages(who, "missing", 0, 3)


def test_disconnect_forgets_connection_and_agent_presence(chatting):
    chat, alice, bob, cid = chatting
    chat.connections.disconnect(bob.connection_id)
    chat.connections.disconnect(bob.connection_id)  # $disconnect may repeat after a 410 prune
    assert chat.storage.get_agent("bob").connections == 0
    assert chat.storage.get_agent("bob").presence == "offline"


def test_reply_to_vanished_origin_is_not_an_error(chatting):
    chat, alice, bob, cid = chatting
    chat.pusher.gone.add(alice.connection_id)
    s = last_seq(chat, cid)
    chat.messaging.on_frame(alice, '{"action":"send","conversationId":"%s","messageId":"m","body":"x"}' % cid)
    assert chat.storage.get_conversation(cid).last_seq == s + 1


def test_resume_ack_frames_validate(chatting):
    chat, alice, bob, cid = chatting
    assert AckFrame(action="ack", conversation_id=cid, seq=0).seq == 0
    assert ResumeFrame(action="resume").cursors == {}
    assert ConnectionGone("x").connection_id == "x"


def test_sweeper_enqueues_a_message_whose_sender_never_returned(chatting, monkeypatch):
    chat, alice, bob, cid = chatting
    chat.sweeper.sweep()  # the first sweep sets the watermark
    acked = frame(chat, alice, action="send", conversationId=cid, messageId="m0", body="seen")
    for who in (alice, bob):
        frame(chat, who, action="ack", conversationId=cid, seq=acked["seq"])
    real = chat.fanout.deliver_now
    monkeypatch.setattr(chat.fanout, "deliver_now", lambda *a: (_ for _ in ()).throw(RuntimeError("died")))
    err = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="lost?")
    assert err["code"] == "internal"  # the handler "dies" between commit and push
    monkeypatch.setattr(chat.fanout, "deliver_now", real)
    assert chat.sweeper.sweep() == 0  # within the grace period a retry is still expected
    chat.clock.t += (chat.config.sweep_grace_seconds + 1) * 1000
    # m0 and the "assigned" event, acked by both: not enqueued again;
    # m1, never pushed nor acked: enqueued, to both (one delivery)
    assert chat.sweeper.sweep() == 1
    [swept] = chat.queue.items
    assert swept.message.message_id == "m1" and set(swept.recipients) == {"alice", "bob"}
    assert chat.sweeper.sweep() == 0  # the watermark moved past it: swept once
    pump(chat)
    assert [f["body"] for f in chat.pusher.frames(bob.connection_id, "message")] == ["seen", "lost?"]


def test_the_sweeper_skips_recipients_without_a_connection(chatting):
    chat, alice, bob, cid = chatting
    chat.sweeper.sweep()
    chat.pusher.failing.add(bob.connection_id)
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="x")
    chat.queue.drain()  # the failed push was queued; then both left
    chat.connections.disconnect(alice.connection_id)
    chat.connections.disconnect(bob.connection_id)
    chat.clock.t += (chat.config.sweep_grace_seconds + 1) * 1000
    assert chat.sweeper.sweep() == 0 and chat.queue.items == []  # both resume when they come back


def test_a_connected_participant_that_never_acks_costs_the_sweeper_one_page(chatting, monkeypatch):
    chat, alice, bob, cid = chatting
    chat.sweeper.sweep()  # the watermark
    for i in range(chat.config.page_size + 20):  # a backlog never acked, older than the window
        frame(chat, alice, action="send", conversationId=cid, messageId=f"old{i}", body="x")
    chat.clock.t += (chat.config.sweep_grace_seconds + 1) * 1000
    chat.sweeper.sweep()
    chat.queue.drain()
    chat.clock.t += 600 * 1000  # ten minutes pass; then one new message, whose push dies
    monkeypatch.setattr(chat.fanout, "deliver_now", lambda *a: None)
    new = frame(chat, alice, action="send", conversationId=cid, messageId="new", body="y")
    monkeypatch.undo()
    chat.clock.t += (chat.config.sweep_grace_seconds + 1) * 1000
    pages = []
    real = chat.storage.messages_before
    monkeypatch.setattr(chat.storage, "messages_before",
                        lambda *a: pages.append(a) or real(*a))
    assert chat.sweeper.sweep() == 1
    [swept] = chat.queue.drain()
    # neither acked anything: the new message goes to both, the backlog is left alone
    assert (swept.message.seq, swept.recipients) == (new["seq"], ("alice", "bob"))
    assert len(pages) == 1  # the window's message, then the first older one ends the read


def test_the_unswept_count_keeps_a_conversation_that_stays_busy_while_sweeps_fail(chatting):
    chat, alice, bob, cid = chatting
    chat.sweeper.sweep()  # the watermark
    bound = chat.config.sweep_grace_seconds + 120
    assert chat.sweeper.unswept_before(chat.clock() // 1000 - bound, 100) == []
    chat.queue.fail_next = 10**6  # SQS down from now on: every sweep fails
    for i in range(6):  # a message a minute: the conversation's activity keeps moving on
        chat.clock.t += 60_000
        frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}", body="x")
        with pytest.raises(OnceChatError):
            chat.sweeper.sweep()
    assert chat.sweeper.unswept_before(chat.clock() // 1000 - bound, 100) == [cid]


def test_each_window_is_swept_once_and_a_failed_sweep_is_repeated(chatting):
    chat, alice, bob, cid = chatting
    chat.sweeper.sweep()  # the first sweep sets the watermark
    sent = []
    for i in range(3):
        sent.append(frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}",
                          body="x")["seq"])
        chat.clock.t += 20_000
    chat.queue.drain()
    chat.clock.t += chat.config.sweep_grace_seconds * 1000
    chat.queue.fail_next = 1
    with pytest.raises(OnceChatError):
        chat.sweeper.sweep()  # SQS down: the watermark stays
    swept = chat.sweeper.sweep()  # the window also holds the conversation's "assigned" event
    again = [d.message.seq for d in chat.queue.drain()]
    assert swept == len(again) and again[-3:] == sent
    chat.clock.t += 3600 * 1000
    assert chat.sweeper.sweep() == 0
    assert chat.queue.drain() == []


def test_a_batch_reads_each_conversations_audience_once(chatting, monkeypatch):
    chat, alice, bob, cid = chatting
    monkeypatch.setattr(chat.fanout, "push_now", lambda *args: None)  # no fast path: the consumer does it all
    for i in range(4):
        frame(chat, alice, action="send", conversationId=cid, messageId=f"m{i}", body=str(i))
    chat.pusher.gone.add(bob.connection_id)
    chat.clock.t += 31_000
    calls = []
    real = chat.storage.connections_of_users
    monkeypatch.setattr(chat.storage, "connections_of_users", lambda us: calls.append(sorted(us)) or real(us))
    attempts = []
    real_push = chat.pusher.push
    monkeypatch.setattr(chat.pusher, "push", lambda c, *a: attempts.append(c) or real_push(c, *a))
    pump(chat)
    assert calls == [["alice", "bob"]]  # one read of both participants for the 4 messages
    assert attempts.count(bob.connection_id) == 1  # found gone once, not pushed to again
    assert chat.storage.get_connection(bob.connection_id) is None


def test_a_410_during_connect_does_not_prune_the_new_connection(chatting):
    """API Gateway answers 410 while $connect runs; the record it just wrote must survive."""
    chat, alice, bob, cid = chatting
    laptop = connect(chat, "bob", "agent", "bob-laptop")  # its $connect has "not returned" yet
    chat.pusher.gone.add(laptop.connection_id)
    frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    pump(chat)
    assert chat.storage.get_connection(laptop.connection_id) is not None
    chat.pusher.gone.discard(laptop.connection_id)
    assert frame(chat, laptop, action="resume", cursors={cid: 0})["type"] == "resumed"
    replayed = chat.pusher.frames(laptop.connection_id, "message")
    assert [(f["seq"], f["senderRole"]) for f in replayed] == [(1, "system"), (2, "customer")]


def test_an_ack_within_the_seen_counter_reads_no_conversation(chatting):
    chat, alice, bob, cid = chatting
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    reads = []
    real = chat.storage.get_conversation
    chat.storage.get_conversation = lambda c: reads.append(c) or real(c)
    frame(chat, bob, action="ack", conversationId=cid, seq=acc["seq"])
    assert reads == [] and chat.storage.get_participant("bob", cid).ack_seq == acc["seq"]
    err = frame(chat, bob, action="ack", conversationId=cid, seq=acc["seq"] + 1)
    assert err["code"] == "bad_request" and reads == [cid]  # unknown: read, and refused


def test_a_burst_of_sends_reserves_once_each(chatting):
    """Racing sends never retry: one reservation and one store per message."""
    chat, alice, bob, cid = chatting
    calls = {"reserve_seq": 0, "claim_message_id": 0, "put_message": 0}
    for name in calls:
        real = getattr(chat.storage, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        setattr(chat.storage, name, counted)
    p = chat.connections.principal_of(alice.connection_id)
    threads = [threading.Thread(target=lambda i=i: chat.messaging.send(p, alice, SendFrame(
        action="send", conversation_id=cid, message_id=f"b{i}", body="x"))) for i in range(40)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == {"reserve_seq": 40, "claim_message_id": 40, "put_message": 40}


def test_the_fast_path_pushes_at_once_and_the_consumer_retries_only_what_failed(chatting):
    chat, alice, bob, cid = chatting
    bob2 = connect(chat, "bob", "agent", "bob-tablet")
    chat.pusher.failing.add(bob2.connection_id)
    acc = frame(chat, alice, action="send", conversationId=cid, messageId="m1", body="hi")
    assert [f["seq"] for f in chat.pusher.frames(bob.connection_id, "message")] == [acc["seq"]]
    [queued] = chat.queue.items
    assert queued.fast and [c.connection_id for c in queued.retry] == [bob2.connection_id]
    chat.pusher.failing.discard(bob2.connection_id)
    reads = []
    real = chat.storage.connections_of_users
    chat.storage.connections_of_users = lambda users: reads.append(users) or real(users)
    assert pump(chat) == 1  # the tablet only, and nothing read
    assert reads == []
    assert [f["seq"] for f in chat.pusher.frames(bob2.connection_id, "message")] == [acc["seq"]]
    assert len(chat.pusher.frames(bob.connection_id, "message")) == 1


def test_a_resume_stopped_by_a_seq_still_being_stored_says_the_client_is_behind(chatting):
    """A later seq may have been pushed to a connection the client lost: `resumed`
    must name the latest seq, so the client resumes again once the hole is filled."""
    chat, alice, bob, cid = chatting
    p = chat.connections.principal_of(alice.connection_id)
    held = chat.storage.reserve_seq(cid, p, chat.clock()).last_seq  # a send still storing
    later = frame(chat, alice, action="send", conversationId=cid, messageId="m2", body="later")
    assert later["seq"] == held + 1
    fresh = connect(chat, "bob", "agent", "bob-new")
    frame(chat, fresh, action="resume", cursors={cid: held - 1})
    assert [f["seq"] for f in chat.pusher.frames(fresh.connection_id, "message")] == []
    assert chat.pusher.frames(fresh.connection_id, "resumed")[-1]["conversations"] == {cid: held + 1}
    chat.clock.t += (chat.config.sweep_grace_seconds + 1) * 1000  # that send died
    frame(chat, fresh, action="resume", cursors={cid: held - 1})
    replayed = chat.pusher.frames(fresh.connection_id, "message")
    assert [(f["seq"], f.get("void", False)) for f in replayed] == [(held, True), (held + 1, False)]


def test_replies_are_the_routes_response_when_the_route_is_two_way(chatting):
    """REPLIES=route, as every deployed stage runs: nothing is pushed to the sender's connection."""
    chat, alice, bob, cid = chatting
    assert chat.config.reply_by_route
    pushed = len(chat.pusher.frames(alice.connection_id))
    reply = chat.messaging.on_frame(alice, json.dumps({"action": "send", "conversationId": cid, "messageId": "r1",
                                                       "body": "hi"}))
    assert reply is not None and reply["type"] == "accepted" and reply["messageId"] == "r1"
    assert chat.messaging.on_frame(alice, "{{{")["code"] == "bad_request"
    again = chat.messaging.on_frame(alice, json.dumps({"action": "send", "conversationId": cid, "messageId": "r1",
                                                       "body": "hi"}))
    assert again["seq"] == reply["seq"] and again["duplicate"] is True
    assert chat.messaging.on_frame(alice, json.dumps({"action": "typing", "conversationId": cid})) is None
    assert len(chat.pusher.frames(alice.connection_id)) == pushed  # nothing pushed to the sender
    assert [f["messageId"] for f in chat.pusher.frames(bob.connection_id) if f["type"] == "message"][-1] == "r1"


def test_replies_are_pushed_when_the_route_is_one_way():
    """REPLIES=push (a stack without a route response): the same replies arrive as pushes."""
    config = Config.from_env({"STAGE": "test", "JWT_SECRET": SECRET, "REPLIES": "push"})
    ids = iter(f"conv{i}" for i in range(10))
    clock = Clock()
    chat = build_services(config, Ports(MemoryStorage(), MemoryQueue(), MemoryPusher(), clock=clock, sleep=clock.sleep,
                                        new_id=lambda: next(ids)))
    connect(chat, "bob", "agent")
    alice = connect(chat, "alice", "customer")
    cid = chat.desk.create_conversation(chat.connections.principal_of(alice.connection_id)).conversation_id
    sent = {"action": "send", "conversationId": cid, "messageId": "p1", "body": "hi"}
    assert chat.messaging.on_frame(alice, json.dumps(sent)) is None
    assert chat.messaging.on_frame(alice, json.dumps(sent)) is None
    assert chat.messaging.on_frame(alice, "{{{") is None
    accepted = chat.pusher.frames(alice.connection_id, "accepted")
    assert [(a["messageId"], a["seq"], a["duplicate"]) for a in accepted] == [("p1", 2, False), ("p1", 2, True)]
    assert chat.pusher.frames(alice.connection_id, "error")[-1]["code"] == "bad_request"
