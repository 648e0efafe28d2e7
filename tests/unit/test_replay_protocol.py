"""The replay machine of a resume (chalicelib/core/replay.py), driven by hand."""

from chalicelib import core
from chalicelib.core import replay as rp
from chalicelib.models import Conversation, MessageRecord

NOW = 1_800_000_000_000


def conv(last_seq, reserved_at=NOW):
    return Conversation(conversation_id="c1", customer_id="alice", agent_id="bob", status="active",
                        created_at="t", updated_at="t", last_seq=last_seq, reserved_at=reserved_at)


def msg(seq, age_ms=0):
    return MessageRecord(conversation_id="c1", seq=seq, message_id=f"m{seq}", sender_id="alice",
                         sender_role="customer", body="x", sent_at=core.iso_ms(NOW - age_ms))


def machine(c, after=0, budget=100, wait_ms=0, page_size=10):
    return rp.ReplayProtocol(c, after, budget, NOW, grace_seconds=30, page_size=page_size, hole_wait_ms=wait_ms)


def emitted(m, command, pages):
    """Drive to Done, answering reads from ``pages`` (a list per ReadPage); return the emitted seqs."""
    out = []
    while not isinstance(command, rp.Done):
        if isinstance(command, rp.ReadPage):
            command = m.advance(rp.Page(tuple(x for x in pages.pop(0) if x.seq > command.after)))
        elif isinstance(command, rp.Emit):
            out.append((command.message.seq, bool(command.message.void)))
            command = m.advance(rp.Emitted())
        elif isinstance(command, rp.Void):
            command = m.advance(rp.Voided(core.void_message("c1", command.seq, NOW // 1000)))
        elif isinstance(command, rp.Wait):
            out.append("wait")
            command = m.advance(rp.Waited())
    return out, command


def test_in_order_then_the_young_hole_stops_the_replay():
    m = machine(conv(4))
    out, done = emitted(m, m.start(), [[msg(1), msg(2), msg(4)]])
    assert out == [(1, False), (2, False)] and done.position == 2  # seq 3 is still being stored


def test_an_old_hole_is_voided_and_replayed():
    m = machine(conv(3, reserved_at=NOW - 60_000))
    out, done = emitted(m, m.start(), [[msg(1, 60_000), msg(3, 60_000)]])
    assert out == [(1, False), (2, True), (3, False)] and done.position == 3


def test_a_young_hole_is_waited_for_a_bounded_moment_and_read_again():
    m = machine(conv(3), wait_ms=100)
    # Filled after the first wait: the replay goes on, no second resume needed.
    out, done = emitted(m, m.start(), [[msg(1), msg(3)], [msg(2), msg(3)]])
    assert out == [(1, False), "wait", (2, False), (3, False)] and done.position == 3
    # Never filled: four waits of 25 ms, then it stops short.
    m = machine(conv(3), wait_ms=100)
    out, done = emitted(m, m.start(), [[msg(1), msg(3)]] * 5)
    assert out == [(1, False), "wait", "wait", "wait", "wait"] and done.position == 1


def test_the_budget_and_pages_bound_the_replay():
    m = machine(conv(5), budget=3, page_size=2)
    out, done = emitted(m, m.start(), [[msg(1), msg(2)], [msg(3), msg(4)]])
    assert out == [(1, False), (2, False), (3, False)] and (done.position, done.budget) == (3, 0)
