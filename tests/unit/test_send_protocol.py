"""The send protocol's state machine (chalicelib/core/send.py), driven by hand: outcomes in, commands out.

These are the decisions production runs (``Messaging.send`` drives this
machine); the interleaving check (tests/property/test_interleavings.py)
runs it against the in-memory store under every interleaving.
"""

import pytest

from chalicelib import core
from chalicelib.core import send as sp
from chalicelib.errors import Conflict, ConversationClosed, Forbidden, NotFound, OnceChatError, RateLimited
from chalicelib.models import Conversation, Principal, SendFrame

NOW = 1_800_000_000_123
ALICE = Principal(user_id="alice", role="customer")
EVE = Principal(user_id="eve", role="customer")


def conv(**kw):
    base = dict(conversation_id="c1", customer_id="alice", agent_id="bob", status="active",
                created_at="t", updated_at="t", last_seq=5)
    return Conversation(**(base | kw))


def frame(body="hi", mid="m1"):
    return SendFrame(action="send", conversation_id="c1", message_id=mid, body=body)


def machine(who=ALICE, body="hi", **kw):
    return sp.SendProtocol(who, frame(body), NOW, idempotency_ttl_seconds=60, retention_seconds=0,
                           reopen_window_seconds=600, max_attempts=kw.pop("max_attempts", 8), **kw)


def claim_at(seq, body="hi"):
    return core.new_message(ALICE, "c1", frame(body), seq, NOW - 1000, 60).idem


def test_a_new_message_reserves_claims_stores_and_is_pushed_now():
    m = machine()
    assert m.start() == sp.Reserve("c1")
    claim = m.advance(sp.Reserved(conv()))
    assert isinstance(claim, sp.Claim) and claim.idem.seq == 5 and claim.idem.expires_at == NOW // 1000 + 60
    store = m.advance(sp.Claimed())
    assert isinstance(store, sp.Store) and store.message.seq == 5 and store.recipients == ("alice", "bob")
    done = m.advance(sp.Stored())
    assert isinstance(done, sp.Accept) and done.fast and not done.duplicate
    assert done.frame()["seq"] == 5 and done.frame()["duplicate"] is False


def test_a_lost_claim_voids_its_own_seq_then_answers_from_the_winner():
    m = machine()
    m.start()
    m.advance(sp.Reserved(conv(last_seq=7)))
    first = claim_at(5)
    void = m.advance(sp.ClaimTaken(first))
    assert void == sp.Void(conv(last_seq=7), 7)  # the seq it reserved, never the winner's
    read = m.advance(sp.Voided(core.void_message("c1", 7, NOW // 1000)))
    assert read == sp.ReadSlot("c1", 5)
    stored = core.claimed_message(ALICE, frame(), first)
    done = m.advance(sp.Found(stored))
    assert isinstance(done, sp.Accept) and done.duplicate and not done.fast  # re-delivered through the queue
    assert done.message.seq == 5


def test_a_claim_lost_without_the_winner_looks_it_up():
    m = machine()
    m.start()
    m.advance(sp.Reserved(conv()))
    assert isinstance(m.advance(sp.ClaimTaken(None)), sp.Void)
    assert m.advance(sp.Voided(core.void_message("c1", 5, 0))) == sp.Lookup()
    assert m.advance(sp.Found(claim_at(3))) == sp.ReadSlot("c1", 3)


def test_an_empty_claimed_slot_is_filled_with_the_same_message():
    m = machine(cached=claim_at(4))
    assert m.start() == sp.ReadSlot("c1", 4)
    store = m.advance(sp.Found(None))
    assert isinstance(store, sp.Store) and store.message.seq == 4 and store.recipients is None
    done = m.advance(sp.Stored())
    assert isinstance(done, sp.Accept) and not done.duplicate and not done.fast


def test_a_void_claimed_slot_moves_the_claim_to_a_new_seq():
    m = machine(cached=claim_at(4))
    m.start()
    assert m.advance(sp.Found(core.void_message("c1", 4, 0))) == sp.Reserve("c1")
    move = m.advance(sp.Reserved(conv(last_seq=9)))
    assert isinstance(move, sp.MoveClaim) and move.from_seq == 4 and move.idem.seq == 9
    store = m.advance(sp.Moved(True))
    assert isinstance(store, sp.Store) and store.message.seq == 9
    assert isinstance(m.advance(sp.Stored()), sp.Accept)


def test_a_claim_moved_by_a_twin_voids_the_new_seq_and_settles_the_moved_claim():
    m = machine(cached=claim_at(4))
    m.start()
    m.advance(sp.Found(core.void_message("c1", 4, 0)))
    m.advance(sp.Reserved(conv(last_seq=9)))
    assert m.advance(sp.Moved(False)) == sp.Void(conv(last_seq=9), 9)
    assert m.advance(sp.Voided(core.void_message("c1", 9, 0))) == sp.Lookup()
    assert m.advance(sp.Found(claim_at(8))) == sp.ReadSlot("c1", 8)


def test_a_retry_with_another_body_conflicts_without_writing():
    m = machine(body="other", cached=claim_at(4))
    done = m.start()
    assert isinstance(done, sp.Fail) and isinstance(done.error, Conflict) and done.error.message_id == "m1"


@pytest.mark.parametrize("who,stood,error", [
    (ALICE, None, NotFound),
    (EVE, conv(), Forbidden),
    (Principal(user_id="alice", role="agent"), conv(), Forbidden),  # a customer's id is not the agent
])
def test_a_refused_reservation_says_why(who, stood, error):
    m = machine(who=who)
    m.start()
    done = m.advance(sp.Refused(stood))
    assert isinstance(done, sp.Fail) and isinstance(done.error, error)


def test_a_closed_conversation_answers_a_retry_and_reopens_for_a_new_message():
    closed = conv(status="closed", closed_at=core.iso_ms(NOW - 1000))
    retry = machine()
    retry.start()
    assert retry.advance(sp.Refused(closed)) == sp.Lookup()
    assert retry.advance(sp.Found(claim_at(3))) == sp.ReadSlot("c1", 3)

    new = machine()
    new.start()
    new.advance(sp.Refused(closed))
    reopen = new.advance(sp.Found(None))
    assert isinstance(reopen, sp.Reopen) and reopen.transition.after.status == "waiting"
    assert new.advance(sp.Reopened(True)) == sp.Reserve("c1")
    new.advance(sp.Reserved(conv(status="waiting", agent_id=None, last_seq=7)))
    new.advance(sp.Claimed())
    done = new.advance(sp.Stored())
    assert isinstance(done, sp.Accept) and done.reopened


def test_past_the_reopen_window_a_closed_conversation_stays_closed():
    closed = conv(status="closed", closed_at=core.iso_ms(NOW - 601_000))
    m = machine()
    m.start()
    m.advance(sp.Refused(closed))
    done = m.advance(sp.Found(None))
    assert isinstance(done, sp.Fail) and isinstance(done.error, ConversationClosed)


def test_over_the_limit_only_a_retry_is_answered():
    limited = RateLimited("too many", message_id="m1")
    new = machine(limited=limited)
    assert new.start() == sp.Lookup()
    assert new.advance(sp.Found(None)) == sp.Fail(limited)
    retry = machine(limited=limited)
    retry.start()
    assert retry.advance(sp.Found(claim_at(2))) == sp.ReadSlot("c1", 2)


def test_a_send_that_keeps_losing_gives_up_with_internal_and_nothing_accepted():
    m = machine(max_attempts=2)
    m.start()
    m.advance(sp.Refused(conv()))  # refused although a participant (the conversation moved)
    assert m.advance(sp.Found(None)) == sp.Reserve("c1")
    m.advance(sp.Refused(conv()))
    done = m.advance(sp.Found(None))
    assert isinstance(done, sp.Fail) and type(done.error) is OnceChatError and done.error.message_id == "m1"


def test_an_outcome_out_of_turn_is_a_driver_bug():
    m = machine()
    m.start()
    with pytest.raises(core.ProtocolError):
        m.advance(sp.Stored())
