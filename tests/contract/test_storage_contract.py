"""The Storage contract (chalicelib/storage/base.py), run against every implementation.

The ``storage`` fixture yields MemoryStorage and DynamoStorage (moto in-process,
tables from infra/template.yaml), so the in-memory store the core tests use
behaves exactly like DynamoDB.
"""

from __future__ import annotations

import pytest

from chalicelib import core
from chalicelib.errors import (
    AgentUnavailable,
    Conflict,
    DuplicateMessage,
    NotFound,
    ReservationRefused,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.models import Conversation
from chalicelib.storage.base import Storage

from .records import (
    NOW_EPOCH,
    T0,
    at,
    connection,
    conversation,
    idem_for,
    message,
    participant,
    reserve,
    store,
    store_message,
)


def append(storage: Storage, seq: int, conversation_id: str = "c1", **kwargs: object) -> None:
    """Reserve seq ``seq`` (the next one) and store message ``seq`` there."""
    store(storage, message(seq, conversation_id, **kwargs))  # type: ignore[arg-type]


def online_agent(storage: Storage, agent_id: str) -> None:
    storage.agent_connected(agent_id, T0)


def assign(storage: Storage, conv: Conversation | str, agent_id: str, minute: int) -> None:
    """Assign a conversation (as read, or read now by id) at ``at(minute)``: apply_transition(plan_assign)."""
    if isinstance(conv, str):
        read = storage.get_conversation(conv)
        assert read is not None
        conv = read
    storage.apply_transition(core.plan_assign(conv, agent_id, core.epoch_ms(at(minute))), NOW_EPOCH)


# ---------------------------------------------------------------- connections


def test_put_then_get_connection_round_trips_every_field(storage: Storage) -> None:
    conn = connection("conn-1")
    storage.put_connection(conn)
    assert storage.get_connection("conn-1") == conn


def test_put_connection_overwrites_a_record_with_the_same_id(storage: Storage) -> None:
    storage.put_connection(connection("conn-1", "alice"))
    storage.put_connection(connection("conn-1", "bob"))
    got = storage.get_connection("conn-1")
    assert got is not None and got.user_id == "bob"


def test_get_unknown_connection_is_none(storage: Storage) -> None:
    assert storage.get_connection("nope") is None


def test_delete_connection_returns_the_removed_record_once(storage: Storage) -> None:
    conn = connection("conn-1")
    storage.put_connection(conn)
    assert storage.delete_connection("conn-1") == conn
    assert storage.delete_connection("conn-1") is None
    assert storage.get_connection("conn-1") is None


def test_delete_unknown_connection_is_none(storage: Storage) -> None:
    assert storage.delete_connection("nope") is None


def test_connections_of_lists_every_connection_of_that_user_only(storage: Storage) -> None:
    storage.put_connection(connection("a1", "alice"))
    storage.put_connection(connection("a2", "alice"))
    storage.put_connection(connection("b1", "bob"))
    assert sorted(c.connection_id for c in storage.connections_of("alice")) == ["a1", "a2"]
    assert [c.connection_id for c in storage.connections_of("bob")] == ["b1"]
    assert storage.connections_of("carol") == []


def test_connections_of_forgets_deleted_connections(storage: Storage) -> None:
    storage.put_connection(connection("a1", "alice"))
    storage.put_connection(connection("a2", "alice"))
    storage.delete_connection("a1")
    assert [c.connection_id for c in storage.connections_of("alice")] == ["a2"]
    storage.delete_connection("a2", "alice")
    assert storage.connections_of("alice") == []
    assert storage.delete_connection("a2", "alice") is None  # gone already: nothing, no error


def test_connections_of_users_reads_several_users_at_once(storage: Storage) -> None:
    storage.put_connection(connection("a1", "alice"))
    storage.put_connection(connection("b1", "bob"))
    storage.put_connection(connection("b2", "bob"))
    got = storage.connections_of_users(["bob", "carol", "alice"])
    assert {u: [c for c in cs] for u, cs in got.items()} == {
        "bob": [connection("b1", "bob"), connection("b2", "bob")], "carol": [],
        "alice": [connection("a1", "alice")]}


# --------------------------------------------------------------------- agents


def test_first_agent_connection_creates_an_online_agent_with_no_load(storage: Storage) -> None:
    agent = storage.agent_connected("ag1", T0)
    assert (agent.agent_id, agent.presence, agent.connections, agent.active_count) == ("ag1", "online", 1, 0)
    assert agent.updated_at == T0
    assert storage.get_agent("ag1") == agent


def test_agent_connected_counts_each_connection(storage: Storage) -> None:
    storage.agent_connected("ag1", T0)
    agent = storage.agent_connected("ag1", at(1))
    assert (agent.connections, agent.presence, agent.updated_at) == (2, "online", at(1))


def test_agent_stays_online_while_a_connection_remains(storage: Storage) -> None:
    storage.agent_connected("ag1", T0)
    storage.agent_connected("ag1", T0)
    agent = storage.agent_disconnected("ag1", at(1))
    assert agent is not None
    assert (agent.connections, agent.presence) == (1, "online")


def test_agent_goes_offline_when_its_last_connection_closes(storage: Storage) -> None:
    storage.agent_connected("ag1", T0)
    agent = storage.agent_disconnected("ag1", at(1))
    assert agent is not None
    assert (agent.connections, agent.presence, agent.updated_at) == (0, "offline", at(1))
    assert storage.get_agent("ag1") == agent


def test_agent_connection_count_never_goes_below_zero(storage: Storage) -> None:
    storage.agent_connected("ag1", T0)
    storage.agent_disconnected("ag1", T0)
    # A second $disconnect (or a 410 clean-up racing it) for the same connection.
    agent = storage.agent_disconnected("ag1", at(2))
    assert agent is not None
    assert (agent.connections, agent.presence) == (0, "offline")
    reconnected = storage.agent_connected("ag1", at(3))
    assert (reconnected.connections, reconnected.presence) == (1, "online")


def test_disconnect_of_unknown_agent_is_none_and_creates_nothing(storage: Storage) -> None:
    assert storage.agent_disconnected("ghost", T0) is None
    assert storage.get_agent("ghost") is None


def test_get_unknown_agent_is_none(storage: Storage) -> None:
    assert storage.get_agent("ghost") is None


def test_online_agents_lists_fewest_active_first_then_by_id(storage: Storage) -> None:
    for agent_id in ("ag-c", "ag-b", "ag-a", "ag-off"):
        online_agent(storage, agent_id)
    storage.agent_disconnected("ag-off", T0)
    for n, agent_id in enumerate(["ag-a", "ag-a", "ag-c"]):
        storage.create_conversation(conversation(f"c{n}", created_at=at(n)))
        assign(storage, f"c{n}", agent_id, 10)
    # loads: ag-b 0, ag-c 1, ag-a 2; ag-off is offline
    assert [(a.agent_id, a.active_count) for a in storage.online_agents()] == [
        ("ag-b", 0),
        ("ag-c", 1),
        ("ag-a", 2),
    ]


def test_online_agents_breaks_load_ties_by_id(storage: Storage) -> None:
    for agent_id in ("ag-3", "ag-1", "ag-2"):
        online_agent(storage, agent_id)
    assert [a.agent_id for a in storage.online_agents()] == ["ag-1", "ag-2", "ag-3"]


def test_online_agents_is_empty_when_nobody_is_online(storage: Storage) -> None:
    assert storage.online_agents() == []


# -------------------------------------------------------------- conversations


def test_create_conversation_stores_it_and_makes_the_customer_a_participant(storage: Storage) -> None:
    conv = conversation("c1", "cust1")
    storage.create_conversation(conv)
    assert storage.get_conversation("c1") == conv
    member = storage.get_participant("cust1", "c1")
    assert member is not None
    assert (member.role, member.ack_seq, member.joined_at) == ("customer", 0, T0)


def test_create_conversation_twice_conflicts_and_keeps_the_first(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"))
    with pytest.raises(Conflict):
        storage.create_conversation(conversation("c1", "cust2", created_at=at(5)))
    got = storage.get_conversation("c1")
    assert got is not None and got.customer_id == "cust1"
    assert storage.get_participant("cust2", "c1") is None


def test_get_unknown_conversation_is_none(storage: Storage) -> None:
    assert storage.get_conversation("nope") is None


def test_waiting_conversations_come_oldest_first_up_to_the_limit(storage: Storage) -> None:
    for conversation_id, minute in (("c-new", 30), ("c-old", 10), ("c-mid", 20)):
        storage.create_conversation(conversation(conversation_id, created_at=at(minute)))
    assert [c.conversation_id for c in storage.waiting_conversations(10)] == ["c-old", "c-mid", "c-new"]
    assert [c.conversation_id for c in storage.waiting_conversations(2)] == ["c-old", "c-mid"]
    assert storage.waiting_conversations(0) == []


def test_waiting_conversations_created_at_the_same_time_are_ordered_by_id(storage: Storage) -> None:
    for conversation_id in ("c-b", "c-d", "c-a", "c-c"):
        storage.create_conversation(conversation(conversation_id, created_at=at(1)))
    storage.create_conversation(conversation("c-0", created_at=at(0)))
    assert [c.conversation_id for c in storage.waiting_conversations(3)] == ["c-0", "c-a", "c-b"]


def test_waiting_conversations_leave_out_active_and_closed_ones(storage: Storage) -> None:
    online_agent(storage, "ag1")
    storage.create_conversation(conversation("c-wait", created_at=at(3)))
    storage.create_conversation(conversation("c-active", created_at=at(1)))
    storage.create_conversation(conversation("c-closed", status="closed", created_at=at(2)))
    assign(storage, "c-active", "ag1", 4)
    assert [c.conversation_id for c in storage.waiting_conversations(10)] == ["c-wait"]


def test_assign_activates_the_conversation_counts_load_and_adds_the_agent(storage: Storage) -> None:
    online_agent(storage, "ag1")
    storage.create_conversation(conversation("c1"))
    assign(storage, "c1", "ag1", 5)
    conv = storage.get_conversation("c1")
    assert conv is not None
    assert (conv.status, conv.agent_id, conv.updated_at, conv.last_seq) == ("active", "ag1", at(5), 1)
    agent = storage.get_agent("ag1")
    assert agent is not None and agent.active_count == 1 and agent.presence == "online"
    member = storage.get_participant("ag1", "c1")
    assert member is not None and (member.role, member.ack_seq) == ("agent", 0)
    # the step is recorded as the "assigned" system message at seq 1; the sweeper finds the conversation
    system = storage.get_message("c1", 1)
    assert system is not None
    assert (system.sender_id, system.sender_role, system.message_id) == ("system", "system", "system-1")
    assert (system.event, system.status, system.agent_id, system.sent_at) == ("assigned", "active", "ag1", at(5))
    assert storage.active_conversations(NOW_EPOCH) == ["c1"]


def test_assign_twice_fails_the_second_and_counts_the_load_once(storage: Storage) -> None:
    online_agent(storage, "ag1")
    online_agent(storage, "ag2")
    storage.create_conversation(conversation("c1"))
    waiting = storage.get_conversation("c1")
    assert waiting is not None
    assign(storage, waiting, "ag1", 1)
    # a second assignment planned from the same (now stale) read is refused
    for agent_id, minute in (("ag2", 2), ("ag1", 3)):
        with pytest.raises(StaleConversation):
            assign(storage, waiting, agent_id, minute)
    # planned from a fresh read, it is refused before any write
    with pytest.raises(Conflict):
        assign(storage, "c1", "ag2", 4)
    conv = storage.get_conversation("c1")
    assert conv is not None and conv.agent_id == "ag1" and conv.updated_at == at(1) and conv.last_seq == 1
    assert [(a.agent_id, a.active_count) for a in storage.online_agents()] == [("ag2", 0), ("ag1", 1)]
    assert storage.get_participant("ag2", "c1") is None
    assert [m.seq for m in storage.messages_after("c1", 0, 10)] == [1]


def test_assign_to_an_offline_agent_fails_and_writes_nothing(storage: Storage) -> None:
    storage.agent_connected("ag1", T0)
    before = storage.agent_disconnected("ag1", T0)
    storage.create_conversation(conversation("c1"))
    with pytest.raises(AgentUnavailable) as raised:
        assign(storage, "c1", "ag1", 1)
    assert raised.value.agent_id == "ag1"
    assert storage.get_conversation("c1") == conversation("c1")
    assert storage.get_agent("ag1") == before
    assert storage.get_participant("ag1", "c1") is None
    assert storage.get_message("c1", 1) is None
    assert storage.active_conversations(0) == []


def test_assign_to_an_unknown_agent_fails_and_writes_nothing(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    with pytest.raises(AgentUnavailable) as raised:
        assign(storage, "c1", "ghost", 1)
    assert raised.value.agent_id == "ghost"
    assert storage.get_conversation("c1") == conversation("c1")
    assert storage.get_agent("ghost") is None
    assert storage.get_participant("ghost", "c1") is None
    assert storage.get_message("c1", 1) is None
    assert storage.active_conversations(0) == []


def test_assign_to_an_agent_at_capacity_fails_and_writes_nothing(storage: Storage) -> None:
    online_agent(storage, "ag1")
    full = storage.set_agent_status("ag1", None, 1, T0)
    assert full.capacity == 1
    storage.create_conversation(conversation("c1", created_at=at(0)))
    storage.create_conversation(conversation("c2", created_at=at(1)))
    assign(storage, "c1", "ag1", 2)
    loaded = storage.get_agent("ag1")
    assert loaded is not None and loaded.active_count == 1
    with pytest.raises(AgentUnavailable):
        assign(storage, "c2", "ag1", 3)
    assert storage.get_conversation("c2") == conversation("c2", created_at=at(1))
    assert storage.get_agent("ag1") == loaded
    assert storage.get_message("c2", 1) is None


def test_assign_unknown_conversation_fails_and_writes_nothing(storage: Storage) -> None:
    agent = storage.agent_connected("ag1", T0)
    with pytest.raises(NotFound):
        assign(storage, conversation("nope"), "ag1", 1)
    assert storage.get_conversation("nope") is None
    assert storage.get_agent("ag1") == agent
    assert storage.get_participant("ag1", "nope") is None
    assert storage.get_message("nope", 1) is None
    assert storage.active_conversations(0) == []


def test_assign_keeps_the_cursor_of_an_agent_already_participating(storage: Storage) -> None:
    online_agent(storage, "ag1")
    storage.create_conversation(conversation("c1"))
    storage.add_participant(participant("ag1", "c1", role="agent", ack_seq=3))
    assign(storage, "c1", "ag1", 1)
    member = storage.get_participant("ag1", "c1")
    assert member is not None and (member.ack_seq, member.joined_at) == (3, T0)


# ------------------------------------------------------------------- messages


def test_reserve_moves_the_counter_and_store_records_message_and_idempotency(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    assert reserve(storage, "c1") == 1
    conv = storage.get_conversation("c1")
    assert conv is not None and (conv.last_seq, conv.reserved_at) == (1, NOW_EPOCH * 1000)
    assert storage.get_message("c1", 1) is None  # reserved, not yet stored
    msg = message(1, body="first")
    idem = idem_for(msg)
    store_message(storage, msg, idem, NOW_EPOCH)
    assert storage.get_message("c1", 1) == msg
    assert storage.get_idempotency("cust1", "c1", "m1", NOW_EPOCH) == idem


def test_reservations_number_messages_one_two_three(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    for seq in (1, 2, 3):
        append(storage, seq)
    assert [m.seq for m in storage.messages_after("c1", 0, 10)] == [1, 2, 3]
    assert [m.message_id for m in storage.messages_after("c1", 0, 10)] == ["m1", "m2", "m3"]


def test_reserve_is_refused_for_a_closed_an_unknown_or_another_users_conversation(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", status="closed"))
    storage.create_conversation(conversation("c2"))
    for cid, who, role, status in (("c1", "cust1", "customer", "closed"),
                                   ("c2", "cust2", "customer", "waiting"),
                                   ("c2", "cust1", "agent", "waiting"),  # the id, not the role
                                   ("ghost", "cust1", "customer", None)):
        with pytest.raises(ReservationRefused) as refused:
            reserve(storage, cid, who, role=role)  # type: ignore[arg-type]
        got = refused.value.conversation
        assert (got.status if got else None) == status, (cid, who, role)
        assert got is None or got.last_seq == 0  # nothing reserved
    assert storage.get_conversation("ghost") is None


def test_an_assigned_agent_reserves_and_a_transferred_away_one_does_not(storage: Storage) -> None:
    online_agent(storage, "ag1")
    online_agent(storage, "ag2")
    storage.create_conversation(conversation("c1"))
    assign(storage, "c1", "ag1", 1)  # the "assigned" system message is seq 1
    append(storage, 2, sender_id="ag1")
    with pytest.raises(ReservationRefused):
        reserve(storage, "c1", "ag2", role="agent")
    conv = storage.get_conversation("c1")
    assert conv is not None and (conv.status, conv.last_seq) == ("active", 2)
    assert [m.sender_role for m in storage.messages_after("c1", 0, 10)] == ["system", "customer"]


def test_a_duplicate_claim_raises_with_the_first_record_and_writes_nothing(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    first = message(1, message_id="m-dup")
    store(storage, first)
    assert reserve(storage, "c1") == 2  # the retry reserved seq 2 before it knew
    again = message(2, message_id="m-dup", body="resent")
    with pytest.raises(DuplicateMessage) as dup:
        store_message(storage, again, idem_for(again), NOW_EPOCH)
    assert dup.value.existing in (None, idem_for(first))  # the backend may return it
    assert storage.get_message("c1", 2) is None
    assert storage.get_idempotency("cust1", "c1", "m-dup", NOW_EPOCH) == idem_for(first)


def test_fill_hole_voids_an_empty_seq_once_and_never_overwrites(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    append(storage, 1)
    assert reserve(storage, "c1") == 2
    void = storage.fill_hole("c1", 2, NOW_EPOCH)
    assert (void.seq, void.void, void.sender_role, void.body) == (2, True, "system", "")
    assert storage.get_message("c1", 2) == void
    assert storage.fill_hole("c1", 2, NOW_EPOCH + 5) == void  # idempotent
    assert storage.fill_hole("c1", 1, NOW_EPOCH) == message(1)  # a message stays
    late = message(2, message_id="m-late")
    storage.claim_message_id(idem_for(late), NOW_EPOCH)
    with pytest.raises(SequenceConflict) as taken:  # its send outlived the grace: reserve again
        storage.put_message(late)
    assert taken.value.existing in (None, void)  # the backend may return what holds the slot
    assert storage.get_message("c1", 2) == void
    assert [m.seq for m in storage.messages_after("c1", 0, 10)] == [1, 2]


def test_a_claim_comes_first_and_names_its_seq(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    assert reserve(storage, "c1") == 1
    msg = message(1, body="first")
    storage.claim_message_id(idem_for(msg), NOW_EPOCH)
    assert storage.get_idempotency("cust1", "c1", "m1", NOW_EPOCH) == idem_for(msg)
    assert storage.get_message("c1", 1) is None  # claimed, not yet stored
    storage.put_message(msg)
    assert storage.get_message("c1", 1) == msg


def test_a_twin_put_of_the_same_claim_finds_the_message(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    reserve(storage, "c1")
    msg = message(1)
    storage.claim_message_id(idem_for(msg), NOW_EPOCH)
    storage.put_message(msg)
    with pytest.raises(SequenceConflict) as taken:
        storage.put_message(msg)
    assert taken.value.existing in (None, msg)
    assert storage.messages_after("c1", 0, 10) == [msg]


def test_move_claim_moves_only_from_the_seq_it_names(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    reserve(storage, "c1")
    first = message(1, message_id="m-moved")
    storage.claim_message_id(idem_for(first), NOW_EPOCH)
    storage.fill_hole("c1", 1, NOW_EPOCH)
    reserve(storage, "c1")
    moved = message(2, message_id="m-moved")
    assert storage.move_claim(idem_for(moved), 1)
    assert storage.get_idempotency("cust1", "c1", "m-moved", NOW_EPOCH) == idem_for(moved)
    reserve(storage, "c1")
    racer = message(3, message_id="m-moved")
    assert not storage.move_claim(idem_for(racer), 1)  # another send moved it first
    assert storage.get_idempotency("cust1", "c1", "m-moved", NOW_EPOCH) == idem_for(moved)
    assert not storage.move_claim(idem_for(message(3, message_id="m-never")), 1)  # no claim at all
    assert storage.get_idempotency("cust1", "c1", "m-never", NOW_EPOCH) is None


def test_participants_and_conversations_at_read_what_exists(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    storage.create_conversation(conversation("c2", customer_id="cust2"))
    storage.add_participant(participant("ag1", "c1", role="agent", ack_seq=3))
    got = {(p.user_id, p.conversation_id): p.ack_seq
           for p in storage.participants_at([("ag1", "c1"), ("ag1", "c2"), ("ag1", "c1")])}
    assert got == {("ag1", "c1"): 3}
    assert sorted(c.conversation_id for c in storage.conversations_at(["c2", "ghost", "c1"])) == ["c1", "c2"]


def test_same_message_id_from_another_sender_is_not_a_duplicate(storage: Storage) -> None:
    online_agent(storage, "ag1")
    storage.create_conversation(conversation("c1"))
    assign(storage, "c1", "ag1", 1)
    append(storage, 2, message_id="same")
    append(storage, 3, message_id="same", sender_id="ag1")
    assert [m.sender_id for m in storage.messages_after("c1", 1, 10)] == ["cust1", "ag1"]


def test_expired_idempotency_record_is_reused(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    old = message(1, message_id="m-old")
    store(storage, old, idem_for(old, expires_at=NOW_EPOCH - 1), NOW_EPOCH - 100)
    assert storage.get_idempotency("cust1", "c1", "m-old", NOW_EPOCH) is None
    new = message(2, message_id="m-old", body="again, a day later")
    store(storage, new)
    assert storage.get_idempotency("cust1", "c1", "m-old", NOW_EPOCH) == idem_for(new)
    assert storage.get_message("c1", 2) == new


def test_idempotency_record_is_valid_through_its_expiry_second(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    msg = message(1)
    store(storage, msg, idem_for(msg, expires_at=NOW_EPOCH))
    assert storage.get_idempotency("cust1", "c1", "m1", NOW_EPOCH) == idem_for(msg, expires_at=NOW_EPOCH)
    assert storage.get_idempotency("cust1", "c1", "m1", NOW_EPOCH + 1) is None
    reserve(storage, "c1")
    again = message(2, message_id="m1")
    with pytest.raises(DuplicateMessage):
        store_message(storage, again, idem_for(again), NOW_EPOCH)


def test_get_unknown_idempotency_record_is_none(storage: Storage) -> None:
    assert storage.get_idempotency("cust1", "c1", "nope", NOW_EPOCH) is None


def test_get_unknown_message_is_none(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    assert storage.get_message("c1", 1) is None
    assert storage.get_message("nope", 1) is None


def test_messages_after_starts_after_the_cursor_in_ascending_order(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    storage.create_conversation(conversation("c2"))
    for seq in range(1, 6):
        append(storage, seq)
    append(storage, 1, "c2")
    assert [m.seq for m in storage.messages_after("c1", 2, 10)] == [3, 4, 5]
    assert [m.seq for m in storage.messages_after("c1", 2, 2)] == [3, 4]
    assert storage.messages_after("c1", 5, 10) == []
    assert storage.messages_after("c1", 2, 0) == []
    assert [m.conversation_id for m in storage.messages_after("c2", 0, 10)] == ["c2"]


def test_messages_after_of_unknown_conversation_is_empty(storage: Storage) -> None:
    assert storage.messages_after("nope", 0, 10) == []


def test_messages_after_returns_the_limit_from_a_long_conversation(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    for seq in range(1, 251):
        append(storage, seq)
    page = storage.messages_after("c1", 0, 100)
    assert [m.seq for m in page] == list(range(1, 101))
    assert [m.seq for m in storage.messages_after("c1", 200, 100)] == list(range(201, 251))
    assert [m.seq for m in storage.messages_after("c1", 0, 1000)] == list(range(1, 251))


def test_messages_after_reads_past_a_one_megabyte_page(storage: Storage) -> None:
    # 100 messages of 15 KB are 1.5 MB: DynamoDB (and moto) stop a Query page
    # at 1 MB, so the implementation must follow LastEvaluatedKey.
    storage.create_conversation(conversation("c1"))
    body = "x" * 15_000
    for seq in range(1, 101):
        append(storage, seq, body=body)
    got = storage.messages_after("c1", 0, 100)
    assert [m.seq for m in got] == list(range(1, 101))
    assert all(m.body == body for m in got)


# ------------------------------------------------------ participants & cursors


def test_add_participant_then_get_it(storage: Storage) -> None:
    member = participant("ag1", "c1", role="agent")
    storage.add_participant(member)
    assert storage.get_participant("ag1", "c1") == member


def test_add_participant_keeps_an_existing_membership_and_its_cursor(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"))
    assert storage.advance_ack("cust1", "c1", 7)
    storage.add_participant(participant("cust1", "c1", role="agent", ack_seq=0))
    member = storage.get_participant("cust1", "c1")
    assert member is not None and (member.role, member.ack_seq) == ("customer", 7)


def test_get_unknown_participant_is_none(storage: Storage) -> None:
    assert storage.get_participant("nobody", "c1") is None


def test_participants_of_user_lists_every_membership_of_that_user_only(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"))
    storage.create_conversation(conversation("c2", "cust1"))
    storage.create_conversation(conversation("c3", "cust2"))
    assert sorted(p.conversation_id for p in storage.participants_of_user("cust1")) == ["c1", "c2"]
    assert [p.conversation_id for p in storage.participants_of_user("cust2")] == ["c3"]
    assert storage.participants_of_user("nobody") == []


def test_advance_ack_moves_the_cursor_forward_only(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"))
    assert storage.advance_ack("cust1", "c1", 3) is True
    assert storage.advance_ack("cust1", "c1", 2) is False
    assert storage.advance_ack("cust1", "c1", 3) is False
    assert storage.advance_ack("cust1", "c1", 5) is True
    member = storage.get_participant("cust1", "c1")
    assert member is not None and member.ack_seq == 5


def test_advance_ack_of_a_non_participant_is_false_and_creates_nothing(storage: Storage) -> None:
    assert storage.advance_ack("nobody", "c1", 3) is False
    assert storage.get_participant("nobody", "c1") is None
    assert storage.participants_of_user("nobody") == []


def test_advance_ack_to_zero_never_moves(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"))
    assert storage.advance_ack("cust1", "c1", 0) is False



# ------------------------------------------------------------ pending / sweeper


def _append_at(storage: Storage, seq: int, conversation_id: str, epoch: int) -> None:
    msg = message(seq, conversation_id, message_id=f"{conversation_id}-{seq}")  # type: ignore[arg-type]
    store(storage, msg, now_epoch=epoch)


def test_conversations_are_listed_by_their_latest_seq(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    storage.create_conversation(conversation("c2"))
    storage.create_conversation(conversation("c3"))  # never takes a seq
    assert storage.active_conversations(0) == []
    reserve(storage, "c1", now_ms=NOW_EPOCH * 1000)
    reserve(storage, "c2", now_ms=(NOW_EPOCH + 65) * 1000)
    assert storage.active_conversations(NOW_EPOCH) == ["c1", "c2"]
    reserve(storage, "c1", now_ms=(NOW_EPOCH + 130) * 1000)  # c1 moves on
    assert storage.active_conversations(NOW_EPOCH + 120) == ["c1"]
    assert storage.active_conversations(NOW_EPOCH) == ["c1", "c2"]
    assert storage.active_conversations(NOW_EPOCH + 180) == []


def test_the_sweep_mark_only_moves_forward(storage: Storage) -> None:
    assert storage.get_sweep_mark() is None
    storage.set_sweep_mark(NOW_EPOCH)
    storage.set_sweep_mark(NOW_EPOCH - 5)
    assert storage.get_sweep_mark() == NOW_EPOCH
    storage.set_sweep_mark(NOW_EPOCH + 60)
    assert storage.get_sweep_mark() == NOW_EPOCH + 60


def test_a_failed_append_stores_nothing(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    _append_at(storage, 1, "c1", NOW_EPOCH)
    msg = message(1, "c1")
    with pytest.raises((DuplicateMessage, SequenceConflict)):
        store_message(storage, msg, idem_for(msg), NOW_EPOCH)
    assert [m.seq for m in storage.messages_after("c1", 0, 10)] == [1]
