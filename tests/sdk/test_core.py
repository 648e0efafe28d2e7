"""The SDK's pure parts without sockets: the seq rule, the outbox schedule, acks, backoff, the stores."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.auth import mint_token
from client.core import AckTracker, Backoff, Inbox, Message, Outbox, PendingSend, token_claims, validate_send
from client.errors import ProtocolError, StoreError
from client.store import MemoryStore, SqliteStore


def msg(seq: int, cid: str = "c") -> Message:
    return Message(cid, seq, f"m{seq}", "u", "customer", f"body {seq}", "2026-01-01T00:00:00.000Z")


# ----------------------------------------------------------------------- inbox

def test_inbox_follows_the_protocol_example():
    """docs/protocol.md's table: last = 4; 5, 5, 7, replay 6 7, live 7."""
    inbox = Inbox({"c": 4})
    assert [m.seq for m in inbox.receive(msg(5))] == [5]
    assert inbox.receive(msg(5)) == []
    assert inbox.receive(msg(7)) == [] and inbox.behind() == {"c": 5}
    assert [m.seq for m in inbox.receive(msg(6))] == [6, 7]
    assert inbox.receive(msg(7)) == [] and inbox.behind() == {}
    assert inbox.last == {"c": 7}


def test_inbox_is_behind_when_resumed_reports_more():
    inbox = Inbox()
    inbox.note_latest({"c": 3, "d": 0})
    assert inbox.behind() == {"c": 0}
    assert inbox.cursors() == {"c": 0, "d": 0}
    inbox.forget("c")
    assert inbox.cursors() == {"d": 0}


def test_inbox_conversations_are_independent():
    inbox = Inbox()
    assert [m.seq for m in inbox.receive(msg(1, "a"))] == [1]
    assert inbox.receive(msg(2, "b")) == []
    assert inbox.behind() == {"b": 0}
    assert [m.seq for m in inbox.receive(msg(2, "a"))] == [2]


@st.composite
def deliveries(draw):
    """n messages, delivered with duplicates, reordering and losses (each seq 0..3 times)."""
    n = draw(st.integers(1, 40))
    copies = [s for s in range(1, n + 1) for _ in range(draw(st.integers(0, 3)))]
    order = draw(st.permutations(copies))
    resume_points = draw(st.sets(st.integers(0, max(0, len(order)))))
    return n, list(order), resume_points


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_inbox_property_each_seq_exactly_once_in_order(case):
    """Any live delivery pattern plus resumes (replays from last + 1) gives 1..n once, in order."""
    n, order, resume_points = case
    inbox = Inbox()
    seen: list[int] = []

    def resume():  # the server replays everything after the cursor, in order
        for s in range(inbox.cursors().get("c", 0) + 1, n + 1):
            seen.extend(m.seq for m in inbox.receive(msg(s)))
        inbox.note_latest({"c": n})

    for i, seq in enumerate(order):
        if i in resume_points:
            resume()
        seen.extend(m.seq for m in inbox.receive(msg(seq)))
        assert seen == list(range(1, len(seen) + 1))  # always a gapless prefix, never a duplicate
    if inbox.behind() or len(seen) < n:
        resume()  # what the SDK does whenever behind() is not empty
    assert seen == list(range(1, n + 1))
    assert inbox.behind() == {}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.data())
def test_inbox_property_own_messages_fill_gaps(n, data):
    """Own accepted messages (never pushed back) and others' pushes interleave: still 1..n once."""
    own = data.draw(st.sets(st.integers(1, n)))
    others = [s for s in range(1, n + 1) if s not in own]
    events = data.draw(st.permutations([("own", s) for s in own] + [("push", s) for s in others] * 2))
    inbox, seen = Inbox(), []
    for _, seq in events:
        seen.extend(m.seq for m in inbox.receive(msg(seq)))
    assert seen == list(range(1, n + 1))


# ---------------------------------------------------------------------- outbox

def entry(mid: str, cid: str = "c") -> PendingSend:
    return PendingSend(cid, mid, f"body {mid}")


def test_outbox_sends_once_then_resends_after_timeout():
    box = Outbox(send_timeout=5)
    box.add(entry("a"), now=0)
    assert [e.message_id for e in box.due(0)] == ["a"]
    box.mark_sent("a", 0)
    assert box.due(4.9) == [] and box.next_deadline() == 5
    assert [e.message_id for e in box.due(5)] == ["a"]  # no answer in time: same messageId again
    box.mark_sent("a", 5)
    assert box.accepted("a").attempts == 2
    assert len(box) == 0 and box.next_deadline() is None


def test_outbox_retry_after_internal_error_waits_for_the_delay():
    box = Outbox()
    box.add(entry("a"), now=0)
    box.mark_sent("a", 0)
    box.retry_after("a", now=1, delay=2)
    assert box.due(2.9) == [] and box.next_deadline() == 3
    assert [e.message_id for e in box.due(3)] == ["a"]


def test_outbox_new_connection_makes_in_flight_due_and_keeps_retry_delays():
    box = Outbox()
    for mid in "abc":
        box.add(entry(mid), now=0)
    box.mark_sent("a", 0)
    box.mark_sent("b", 0)
    box.retry_after("b", now=0, delay=10)
    box.connection_changed(now=1)
    assert [e.message_id for e in box.due(1)] == ["a", "c"]


def test_outbox_shorten_deadlines_after_an_anonymous_error():
    box = Outbox(send_timeout=5)
    box.add(entry("a"), now=0)
    box.mark_sent("a", 0)
    box.shorten_deadlines(now=1, timeout=0.5)
    assert [e.message_id for e in box.due(1.5)] == ["a"]


def test_outbox_ordered_keeps_one_in_flight_per_conversation():
    box = Outbox(ordered=True)
    box.add(entry("a1", "a"), 0)
    box.add(entry("a2", "a"), 0)
    box.add(entry("b1", "b"), 0)
    assert [e.message_id for e in box.due(0)] == ["a1", "b1"]
    box.mark_sent("a1", 0)
    box.mark_sent("b1", 0)
    assert box.due(1) == []
    box.accepted("a1")
    assert [e.message_id for e in box.due(1)] == ["a2"]


def test_outbox_refuses_a_pending_message_id():
    box = Outbox()
    box.add(entry("a"))
    with pytest.raises(ValueError):
        box.add(entry("a"))
    assert box.reject("a") is not None and box.reject("a") is None


# ------------------------------------------------------------------- acks, backoff

def test_acks_after_every_n_or_after_the_delay():
    acks = AckTracker(every=3, delay=1.0)
    acks.processed("c", 1, now=0)
    acks.processed("c", 2, now=0.1)
    assert acks.due(0.2) == {} and acks.next_deadline() == 1.0
    acks.processed("c", 3, now=0.2)
    assert acks.due(0.2) == {"c": 3}
    acks.sent({"c": 3})
    acks.processed("c", 3, now=0.3)  # already acked: nothing new
    acks.processed("c", 4, now=0.5)
    assert acks.due(1.4) == {} and acks.due(1.5) == {"c": 4}
    assert acks.pending() == {"c": 4}


def test_backoff_is_full_jitter_under_a_cap():
    b = Backoff(base=0.5, cap=4, max_attempts=3, rng=random.Random(7))
    assert [b.ceiling(a) for a in range(5)] == [0.5, 1, 2, 4, 4]
    for a in range(100):
        assert 0 <= b.delay(a) <= b.ceiling(a)
    assert len({round(b.delay(3), 6) for _ in range(20)}) > 1  # jitter, not a fixed delay
    assert not b.exhausted(2) and b.exhausted(3)
    assert not Backoff().exhausted(10**6)


# ------------------------------------------------------------------ misc pure

def test_validate_send_mirrors_the_server_limits():
    assert validate_send("hi", "ok_id-1") is None
    assert validate_send("hi", "bad id")[0] == "bad_request"
    assert validate_send("", "ok")[0] == "bad_request"
    assert validate_send("é" * 8193, "ok")[0] == "payload_too_large"


def test_token_claims_reads_sub_and_role_without_the_secret():
    claims = token_claims(mint_token("some-secret-that-is-long-enough-0123", "alice", "agent"))
    assert (claims["sub"], claims["role"]) == ("alice", "agent")
    with pytest.raises(ProtocolError):
        token_claims("not-a-jwt")


def test_message_from_frame_refuses_missing_fields():
    with pytest.raises(ProtocolError):
        Message.from_frame({"type": "message", "conversationId": "c", "seq": 1})


# ---------------------------------------------------------------------- stores

@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_round_trip(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    store.bind_user("alice")
    for mid in ("m2", "m1", "m3"):
        store.put_outbox(entry(mid))
    store.put_outbox(entry("m1"))  # idempotent
    store.delete_outbox("m3")
    store.save_cursor("c", 5)
    store.save_cursor("c", 3)  # never backwards
    store.save_cursor("d", 1)
    store.delete_cursor("d")
    assert [e.message_id for e in store.load_outbox()] == ["m2", "m1"]
    assert store.load_cursors() == {"c": 5}
    with pytest.raises(StoreError):
        store.bind_user("bob")
    store.close()


def test_sqlite_store_survives_reopening(tmp_path):
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    first.bind_user("alice")
    first.put_outbox(entry("m1"))
    first.save_cursor("c", 9)
    first.close()
    again = SqliteStore(path)
    again.bind_user("alice")
    assert [(e.conversation_id, e.message_id, e.body) for e in again.load_outbox()] == [("c", "m1", "body m1")]
    assert again.load_cursors() == {"c": 9}
    with pytest.raises(StoreError):
        again.bind_user("mallory")


def test_unanswered_sends_back_off_instead_of_flooding_a_slow_server() -> None:
    from client.core import Outbox, PendingSend

    box = Outbox(send_timeout=5.0)
    box.add(PendingSend("c", "m1", "hi"), now=0.0)
    resent_at = []
    now = 0.0
    while len(resent_at) < 6:
        if [e.message_id for e in box.due(now)] == ["m1"]:
            resent_at.append(now)
            box.mark_sent("m1", now)
        now += 1.0
    gaps = [b - a for a, b in itertools.pairwise(resent_at)]
    assert gaps == [5.0, 10.0, 20.0, 40.0, 40.0]


def test_a_paused_conversation_keeps_its_cursor_and_is_followed_again_by_a_message():
    inbox = Inbox({"c": 0, "d": 0})
    assert [m.seq for m in inbox.receive(msg(1)) + inbox.receive(msg(2))] == [1, 2]
    inbox.receive(msg(4))  # buffered behind a gap
    inbox.pause("c")  # transferred away
    assert inbox.cursors() == {"d": 0} and "c" not in inbox.behind()
    # Transferred back: the next message follows it again from its old cursor;
    # seqs the app already has are never released twice.
    assert inbox.receive(msg(2)) == []
    assert inbox.cursors() == {"c": 2, "d": 0}
    assert inbox.behind() == {}  # the old buffer went with the pause
    assert [m.seq for m in inbox.receive(msg(3))] == [3]
    inbox.pause("d")
    inbox.track("d")
    assert inbox.cursors() == {"c": 3, "d": 0}
