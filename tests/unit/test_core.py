"""The pure core: frame validation, decisions, recipients, resume cursors. No AWS."""

import json

import pytest

from chalicelib import core
from chalicelib.errors import BadRequest, Conflict, ConversationClosed, Forbidden, PayloadTooLarge
from chalicelib.models import (
    ConnectionRecord,
    Conversation,
    Participant,
    Principal,
    SendFrame,
)

NOW = 1_800_000_000_123
ALICE = Principal(user_id="alice", role="customer")
BOB = Principal(user_id="bob", role="agent")
EVE = Principal(user_id="eve", role="customer")


def conv(**kw):
    base = dict(conversation_id="c1", customer_id="alice", agent_id="bob", status="active",
                created_at="t", updated_at="t", last_seq=4)
    return Conversation(**(base | kw))


def send(body="hi", mid="m1"):
    return SendFrame(action="send", conversation_id="c1", message_id=mid, body=body)


class TestParse:
    def test_valid_send(self):
        f = core.parse_client_frame(json.dumps(
            {"action": "send", "conversationId": "c1", "messageId": "a_B-9", "body": "hé"}), 16384)
        assert isinstance(f, SendFrame) and f.message_id == "a_B-9" and f.body == "hé"

    @pytest.mark.parametrize("raw", ["", "not json", "[1,2]", "42", '"send"'])
    def test_not_an_object_is_bad_request(self, raw):
        with pytest.raises(BadRequest):
            core.parse_client_frame(raw, 100)

    def test_unknown_action(self):
        with pytest.raises(BadRequest, match="unknown action"):
            core.parse_client_frame('{"action":"dance"}', 100)

    @pytest.mark.parametrize("frame", [
        {"action": "send", "conversationId": "c1", "messageId": "", "body": "x"},
        {"action": "send", "conversationId": "c1", "messageId": "a" * 65, "body": "x"},
        {"action": "send", "conversationId": "c1", "messageId": "has space", "body": "x"},
        {"action": "send", "conversationId": "c1", "messageId": "m", "body": ""},
        {"action": "send", "conversationId": "c1", "messageId": "m", "body": 5},
        {"action": "send", "conversationId": 7, "messageId": "m", "body": "x"},
        {"action": "send", "messageId": "m", "body": "x"},
        {"action": "ack", "conversationId": "c1", "seq": "3"},
        {"action": "ack", "conversationId": "c1", "seq": -1},
        {"action": "ack", "conversationId": "c1", "seq": True},
        {"action": "ack", "conversationId": "c1", "seq": 1.5},
        {"action": "resume", "cursors": {"c1": "x"}},
        {"action": "resume", "cursors": [1]},
    ])
    def test_wrong_fields_are_bad_request(self, frame):
        with pytest.raises(BadRequest):
            core.parse_client_frame(json.dumps(frame), 100)

    def test_error_carries_message_id(self):
        with pytest.raises(BadRequest) as info:
            core.parse_client_frame('{"action":"send","conversationId":"c1","messageId":"m7"}', 100)
        assert info.value.message_id == "m7"

    def test_body_limit_counts_utf8_bytes(self):
        ok = {"action": "send", "conversationId": "c1", "messageId": "m", "body": "é" * 50}
        assert core.parse_client_frame(json.dumps(ok), 100).body == "é" * 50
        big = ok | {"body": "é" * 51}
        with pytest.raises(PayloadTooLarge) as info:
            core.parse_client_frame(json.dumps(big), 100)
        assert info.value.message_id == "m" and info.value.code == "payload_too_large"

    def test_resume_without_cursors_is_allowed(self):
        assert core.parse_client_frame('{"action":"resume"}', 100).cursors == {}


class TestDecideSend:
    def test_new_message_takes_next_seq(self):
        d = core.decide_send(ALICE, conv(), send(), None, NOW, 60)
        assert isinstance(d, core.Append)
        assert d.message.seq == 5 and d.expected_last_seq == 4
        assert d.message.sent_at == core.iso_ms(NOW) and d.message.sender_role == "customer"
        assert d.idem.seq == 5 and d.idem.expires_at == NOW // 1000 + 60

    def test_retry_with_same_body_replays(self):
        first = core.decide_send(ALICE, conv(), send(), None, NOW, 60)
        again = core.decide_send(ALICE, conv(last_seq=9), send(), first.idem, NOW + 5, 60)
        assert isinstance(again, core.Replay) and again.idem.seq == 5

    def test_same_id_other_body_conflicts(self):
        first = core.decide_send(ALICE, conv(), send(), None, NOW, 60)
        with pytest.raises(Conflict) as info:
            core.decide_send(ALICE, conv(), send(body="other"), first.idem, NOW, 60)
        assert info.value.message_id == "m1"

    def test_non_participant_is_forbidden(self):
        with pytest.raises(Forbidden):
            core.decide_send(EVE, conv(), send(), None, NOW, 60)
        with pytest.raises(Forbidden):
            core.decide_send(Principal(user_id="carol", role="agent"), conv(), send(), None, NOW, 60)

    def test_customer_id_does_not_grant_agent_role(self):
        # an agent whose id equals the customer's is still not the assigned agent
        with pytest.raises(Forbidden):
            core.decide_send(Principal(user_id="alice", role="agent"), conv(), send(), None, NOW, 60)

    def test_closed_refuses_new_but_replays_old(self):
        first = core.decide_send(ALICE, conv(), send(), None, NOW, 60)
        with pytest.raises(ConversationClosed):
            core.decide_send(ALICE, conv(status="closed"), send(mid="m2"), None, NOW, 60)
        assert isinstance(core.decide_send(ALICE, conv(status="closed"), send(), first.idem, NOW, 60),
                          core.Replay)


def test_iso_ms_is_utc_with_milliseconds():
    assert core.iso_ms(1_700_000_000_007) == "2023-11-14T22:13:20.007Z"


def test_dedup_id_is_stable_and_distinct():
    a = core.deduplication_id("c1", 1)
    assert a == core.deduplication_id("c1", 1) and len(a) <= 128
    assert a != core.deduplication_id("c1", 2) and a != core.deduplication_id("c11", 1)


def test_delivery_targets_are_every_recipient_connection_but_the_origin():
    def cn(cid, user):
        return ConnectionRecord(connection_id=cid, user_id=user, role="customer", connected_at="t",
                                domain_name="d", stage="s", expires_at=0)
    conns = {"alice": [cn("a1", "alice"), cn("a2", "alice")], "bob": [cn("b1", "bob")],
             "carol": [cn("c1", "carol")]}
    got = core.delivery_targets(["alice", "bob"], conns, "a1")
    assert [c.connection_id for c in got] == ["a2", "b1"]
    assert [c.connection_id for c in core.delivery_targets(["bob"], conns, None)] == ["b1"]


def test_resume_cursors_prefer_client_then_stored():
    ps = [Participant(user_id="u", conversation_id=c, role="customer", ack_seq=n, joined_at="t")
          for c, n in (("c1", 3), ("c2", 7))]
    assert core.resume_cursors({"c1": 1}, ps) == {"c1": 1, "c2": 7}


def test_frames():
    assert core.error_frame(Conflict("x", message_id="m")) == {
        "type": "error", "code": "conflict", "message": "x", "messageId": "m"}
    assert "messageId" not in core.error_frame(BadRequest("x"))
    assert core.resumed_frame({"c": 3}) == {"type": "resumed", "conversations": {"c": 3}}
