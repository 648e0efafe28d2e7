"""The pure core: frame validation, authorization, recipients, frames. No AWS.

The protocols' state machines have their own tests (test_send_protocol.py,
test_lifecycle_protocol.py, test_replay_protocol.py) and the interleaving
check (tests/property/test_interleavings.py).
"""

import json

import pytest

from chalicelib import core
from chalicelib.errors import BadRequest, Conflict, PayloadTooLarge
from chalicelib.models import (
    ConnectionRecord,
    Conversation,
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


def test_frames():
    assert core.error_frame(Conflict("x", message_id="m")) == {
        "type": "error", "code": "conflict", "message": "x", "messageId": "m"}
    assert "messageId" not in core.error_frame(BadRequest("x"))
    assert core.resumed_frame({"c": 3}) == {"type": "resumed", "conversations": {"c": 3}}
