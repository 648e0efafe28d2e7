"""The Storage contract of the customer-service domain, against every implementation.

Lifecycle transitions (one conditional transaction each), agent presence
and capacity, conversation listings, history both ways, read cursors,
rate-limit buckets and keyed conversation creation. The races run with real
threads (``concurrent_storage``: memory, and DynamoDB behind a serialized
moto server).
"""

from __future__ import annotations

import pytest

from chalicelib import core
from chalicelib.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    DuplicateRequest,
    Forbidden,
    NotFound,
    StaleConversation,
)
from chalicelib.models import Principal
from chalicelib.storage.base import Storage

from .records import NOW_EPOCH, T0, at, conversation, message, store
from .test_concurrency import run_together

T_MS = core.epoch_ms(T0) + 3_600_000  # an hour after T0: later than every record's times
ALICE = Principal(user_id="cust1", role="customer")
BOB = Principal(user_id="bob", role="agent")


def online(storage: Storage, agent_id: str, capacity: int | None = None) -> None:
    storage.agent_connected(agent_id, T0)
    if capacity is not None:
        storage.set_agent_status(agent_id, None, capacity, T0)


def assign(storage: Storage, conversation_id: str, agent_id: str) -> core.Transition:
    conv = storage.get_conversation(conversation_id)
    assert conv is not None
    transition = core.plan_assign(conv, agent_id, T_MS)
    storage.apply_transition(transition, NOW_EPOCH)
    return transition


def load(storage: Storage, agent_id: str) -> int:
    agent = storage.get_agent(agent_id)
    assert agent is not None
    return agent.active_count


# ------------------------------------------------------------------ transitions


def test_assign_activates_stores_the_system_message_counts_load_and_adds_the_agent(
        storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    transition = assign(storage, "c1", "bob")
    conv = storage.get_conversation("c1")
    assert conv is not None
    assert (conv.status, conv.agent_id, conv.last_seq) == ("active", "bob", 1)
    stored = storage.get_message("c1", 1)
    assert stored == transition.message
    assert (stored.sender_role, stored.event, stored.agent_id) == ("system", "assigned", "bob")
    assert load(storage, "bob") == 1
    membership = storage.get_participant("bob", "c1")
    assert membership is not None and membership.ack_seq == 0
    # The conversation is active, so the sweeper covers the event.
    assert storage.active_conversations(NOW_EPOCH) == ["c1"]


def test_the_same_transition_twice_applies_once(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    online(storage, "carol")
    conv = storage.get_conversation("c1")
    assert conv is not None
    storage.apply_transition(core.plan_assign(conv, "bob", T_MS), NOW_EPOCH)
    with pytest.raises(StaleConversation):
        storage.apply_transition(core.plan_assign(conv, "carol", T_MS), NOW_EPOCH)
    after = storage.get_conversation("c1")
    assert after is not None and (after.agent_id, after.last_seq) == ("bob", 1)
    assert (load(storage, "bob"), load(storage, "carol")) == (1, 0)
    assert storage.get_message("c1", 2) is None


def test_a_message_appended_after_the_read_makes_the_transition_stale(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    conv = storage.get_conversation("c1")
    assert conv is not None
    store(storage, message(1))
    with pytest.raises(StaleConversation):
        storage.apply_transition(core.plan_assign(conv, "bob", T_MS), NOW_EPOCH)
    assert load(storage, "bob") == 0
    assert storage.get_message("c1", 1) == message(1)


@pytest.mark.parametrize("why", ["full", "offline", "away", "unknown"])
def test_assign_to_an_agent_without_room_writes_nothing(storage: Storage, why: str) -> None:
    storage.create_conversation(conversation("c1"))
    storage.create_conversation(conversation("c0", created_at=at(0)))
    if why == "full":
        online(storage, "bob", capacity=1)
        assign(storage, "c0", "bob")
    elif why == "offline":
        online(storage, "bob")
        storage.agent_disconnected("bob", T0)
    elif why == "away":
        online(storage, "bob")
        storage.set_agent_status("bob", "away", None, T0)
    with pytest.raises(AgentUnavailable) as raised:
        assign(storage, "c1", "bob")
    assert raised.value.agent_id == "bob"
    conv = storage.get_conversation("c1")
    assert conv is not None and (conv.status, conv.agent_id, conv.last_seq) == ("waiting", None, 0)
    assert storage.get_message("c1", 1) is None
    assert storage.get_participant("bob", "c1") is None
    if why != "unknown":
        assert load(storage, "bob") == (1 if why == "full" else 0)


def test_transition_of_an_unknown_conversation_is_not_found(storage: Storage) -> None:
    online(storage, "bob")
    with pytest.raises(NotFound):
        storage.apply_transition(core.plan_assign(conversation("ghost"), "bob", T_MS), NOW_EPOCH)
    assert load(storage, "bob") == 0


def test_transfer_moves_the_load_and_the_membership(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    online(storage, "carol")
    assign(storage, "c1", "bob")
    conv = storage.get_conversation("c1")
    assert conv is not None
    transition = core.plan_transfer(BOB, conv, "carol", T_MS)
    storage.apply_transition(transition, NOW_EPOCH)
    after = storage.get_conversation("c1")
    assert after is not None and (after.status, after.agent_id, after.last_seq) == ("active", "carol", 2)
    assert (load(storage, "bob"), load(storage, "carol")) == (0, 1)
    assert storage.get_participant("carol", "c1") is not None
    stored = storage.get_message("c1", 2)
    assert stored is not None and (stored.event, stored.previous_agent_id, stored.agent_id) == (
        "transferred", "bob", "carol")


def test_close_frees_the_agent_and_reopen_requeues_at_the_reopening_time(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", created_at=at(0)))
    storage.create_conversation(conversation("c2", created_at=at(5)))
    online(storage, "bob")
    assign(storage, "c1", "bob")
    conv = storage.get_conversation("c1")
    assert conv is not None
    storage.apply_transition(core.plan_close(ALICE, conv, T_MS), NOW_EPOCH)
    closed = storage.get_conversation("c1")
    assert closed is not None
    assert (closed.status, closed.agent_id, closed.closed_at) == ("closed", "bob", core.iso_ms(T_MS))
    assert load(storage, "bob") == 0
    assert [c.conversation_id for c in storage.waiting_conversations(10)] == ["c2"]

    storage.apply_transition(core.plan_reopen(ALICE, closed, T_MS + 1000, 3600), NOW_EPOCH)
    reopened = storage.get_conversation("c1")
    assert reopened is not None
    assert (reopened.status, reopened.agent_id, reopened.closed_at, reopened.last_seq) == (
        "waiting", None, None, 3)
    assert reopened.queued_at == core.iso_ms(T_MS + 1000)
    # Queued behind c2, which has waited since before the reopening.
    assert [c.conversation_id for c in storage.waiting_conversations(10)] == ["c2", "c1"]
    events = [storage.get_message("c1", s).event for s in (1, 2, 3)]  # type: ignore[union-attr]
    assert events == ["assigned", "closed", "reopened"]


# ------------------------------------------------------------------ agents


def test_set_agent_status_creates_keeps_unnamed_fields_and_connect_keeps_away(storage: Storage) -> None:
    created = storage.set_agent_status("dora", "away", None, T0)
    assert (created.presence, created.capacity, created.active_count, created.connections) == (
        "away", 5, 0, 0)
    changed = storage.set_agent_status("dora", None, 2, at(1))
    assert (changed.presence, changed.capacity) == ("away", 2)
    connected = storage.agent_connected("dora", at(2))
    assert (connected.presence, connected.connections, connected.capacity) == ("away", 1, 2)
    assert storage.online_agents() == []
    back = storage.set_agent_status("dora", "online", None, at(3))
    assert back.presence == "online" and back.connections == 1
    assert [a.agent_id for a in storage.online_agents()] == ["dora"]
    assert storage.agent_disconnected("dora", at(4)).presence == "offline"  # type: ignore[union-attr]


def test_a_new_agent_connecting_is_online_with_the_default_capacity(storage: Storage) -> None:
    agent = storage.agent_connected("erin", T0)
    assert (agent.presence, agent.capacity, agent.active_count) == ("online", 5, 0)


def test_list_agents_lists_every_agent_by_id(storage: Storage) -> None:
    for name in ("zed", "amy", "kim"):
        online(storage, name)
    storage.agent_disconnected("kim", T0)
    listed = storage.list_agents()
    assert [(a.agent_id, a.presence) for a in listed] == [
        ("amy", "online"), ("kim", "offline"), ("zed", "online")]


# ---------------------------------------------------------- listing & history


def test_conversations_of_a_customer_newest_first_filtered_and_paged(storage: Storage) -> None:
    for i in range(7):
        storage.create_conversation(conversation(f"c{i}", "cust1", created_at=at(i)))
    storage.create_conversation(conversation("other", "cust2", created_at=at(3)))
    online(storage, "bob", capacity=10)
    for cid in ("c1", "c4"):
        assign(storage, cid, "bob")

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page, cursor = storage.conversations_of("cust1", "customer", None, 3, cursor)
        assert len(page) <= 3
        seen += [c.conversation_id for c in page]
        if cursor is None:
            break
    assert seen == [f"c{i}" for i in range(6, -1, -1)]

    active, more = storage.conversations_of("cust1", "customer", "active", 10, None)
    assert [c.conversation_id for c in active] == ["c4", "c1"] and more is None
    first, cursor = storage.conversations_of("cust1", "customer", "waiting", 2, None)
    assert [c.conversation_id for c in first] == ["c6", "c5"] and cursor is not None
    rest, end = storage.conversations_of("cust1", "customer", "waiting", 10, cursor)
    assert [c.conversation_id for c in rest] == ["c3", "c2", "c0"] and end is None

    agents, _ = storage.conversations_of("bob", "agent", None, 10, None)
    assert [c.conversation_id for c in agents] == ["c4", "c1"]
    assert storage.conversations_of("nobody", "customer", None, 10, None) == ([], None)


def test_a_cursor_the_storage_did_not_make_is_a_bad_request(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    with pytest.raises(BadRequest):
        storage.conversations_of("cust1", "customer", None, 10, "not-a-cursor")


def test_messages_before_returns_the_latest_ones_below_in_ascending_order(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    for seq in range(1, 11):
        store(storage, message(seq))
    assert [m.seq for m in storage.messages_before("c1", 11, 3)] == [8, 9, 10]
    assert [m.seq for m in storage.messages_before("c1", 4, 10)] == [1, 2, 3]
    assert storage.messages_before("c1", 1, 10) == []
    assert storage.messages_before("nope", 5, 10) == []


def test_participants_of_a_conversation_and_the_read_cursor(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    assign(storage, "c1", "bob")
    assert [p.user_id for p in storage.participants_of_conversation("c1")] == ["bob", "cust1"]
    assert storage.advance_read("cust1", "c1", 1) is True
    assert storage.advance_read("cust1", "c1", 1) is False
    assert storage.advance_read("cust1", "c1", 0) is False
    assert storage.advance_read("stranger", "c1", 1) is False
    member = storage.get_participant("cust1", "c1")
    assert member is not None and (member.read_seq, member.ack_seq) == (1, 0)
    assert storage.get_participant("stranger", "c1") is None


# ----------------------------------------------------------- limits & keys


def test_take_tokens_counts_every_bucket_or_none(storage: Storage) -> None:
    buckets = [("user#a#w1", 3), ("conn#x#w1", 2)]
    assert [storage.take_tokens(buckets, NOW_EPOCH) for _ in range(3)] == [True, True, False]
    # The refused call counted nothing: the user bucket still has room for one.
    assert storage.take_tokens([("user#a#w1", 3), ("conn#y#w1", 2)], NOW_EPOCH) is True
    assert storage.take_tokens([("user#a#w1", 3)], NOW_EPOCH) is False
    assert storage.take_tokens([("user#a#w2", 3)], NOW_EPOCH) is True  # the next window


def test_create_with_a_request_key_is_done_once_per_customer_and_key(storage: Storage) -> None:
    storage.create_conversation(conversation("c1", "cust1"), "key-1", NOW_EPOCH + 60, NOW_EPOCH)
    with pytest.raises(DuplicateRequest) as dup:
        storage.create_conversation(conversation("c2", "cust1"), "key-1", NOW_EPOCH + 60, NOW_EPOCH)
    assert dup.value.existing_id == "c1"
    assert storage.get_conversation("c2") is None
    storage.create_conversation(conversation("c3", "cust2"), "key-1", NOW_EPOCH + 60, NOW_EPOCH)
    # After the retention window the key is free again.
    storage.create_conversation(conversation("c4", "cust1"), "key-1", NOW_EPOCH + 200, NOW_EPOCH + 61)
    assert storage.get_conversation("c4") is not None


# -------------------------------------------------------------------- races


def test_racing_assignments_never_exceed_capacity_or_assign_twice(concurrent_storage: Storage) -> None:
    storage = concurrent_storage
    for i in range(6):
        storage.create_conversation(conversation(f"c{i}", created_at=at(i)))
    online(storage, "bob", capacity=2)
    online(storage, "carol", capacity=1)

    def dispatcher(worker: int) -> list[str]:
        won = []
        for i in range(6):
            for agent in ("bob", "carol"):
                conv = storage.get_conversation(f"c{(i + worker) % 6}")
                assert conv is not None
                if conv.status != "waiting":
                    break
                try:
                    storage.apply_transition(core.plan_assign(conv, agent, T_MS), NOW_EPOCH)
                except (StaleConversation, AgentUnavailable):
                    continue
                won.append(conv.conversation_id)
                break
        return won

    won = [cid for lst in run_together(6, dispatcher) for cid in lst]  # type: ignore[union-attr]
    assert len(won) == len(set(won)) == 3
    assert (load(storage, "bob"), load(storage, "carol")) == (2, 1)
    assigned = [storage.get_conversation(f"c{i}") for i in range(6)]
    assert sorted(c.conversation_id for c in assigned if c and c.status == "active") == sorted(won)
    for cid in won:
        assert [m.seq for m in storage.messages_after(cid, 0, 10)] == [1]


def test_racing_close_and_transfer_form_one_legal_history(concurrent_storage: Storage) -> None:
    """Racing closes (customer) and transfers (bob to carol): the steps that apply form one legal history.

    Every step conditions on the conversation it read, so two steps planned
    on the same read never both apply. A close planned after the transfer
    applied is legal (the customer may close a transferred conversation), so
    the possible histories are: closed; transferred; transferred then closed.
    Never two transfers, never a step after the close, never a gap in seq.
    """
    storage = concurrent_storage
    storage.create_conversation(conversation("c1"))
    online(storage, "bob")
    online(storage, "carol")
    assign(storage, "c1", "bob")

    def act(worker: int) -> str | None:
        conv = storage.get_conversation("c1")
        assert conv is not None
        try:  # planning refuses what is illegal by now (already closed or moved)
            plan = (core.plan_close(ALICE, conv, T_MS) if worker % 2 else
                    core.plan_transfer(BOB, conv, "carol", T_MS))
            storage.apply_transition(plan, NOW_EPOCH)
        except (StaleConversation, AgentUnavailable, Conflict, Forbidden):
            return None
        return plan.message.event

    applied = [o for o in run_together(8, act) if o is not None]
    conv = storage.get_conversation("c1")
    assert conv is not None
    # The stored system messages after the assignment (seq 1) are the history, gapless.
    history = [m.event for m in storage.messages_after("c1", 1, 10)]
    assert history in (["closed"], ["transferred"], ["transferred", "closed"]), history
    assert sorted(applied) == sorted(history)
    assert conv.last_seq == 1 + len(history)
    if history[-1] == "closed":
        assert (conv.status, load(storage, "bob"), load(storage, "carol")) == ("closed", 0, 0)
    else:
        assert (conv.status, conv.agent_id, load(storage, "bob"), load(storage, "carol")) == ("active", "carol", 0, 1)
    if history == ["transferred", "closed"]:
        assert conv.agent_id == "carol"  # closed by the customer after the transfer


def test_a_message_with_a_retention_round_trips_its_expiry(storage: Storage) -> None:
    storage.create_conversation(conversation("c1"))
    m = message(1).model_copy(update={"expires_at": NOW_EPOCH + 86400})
    store(storage, m)
    assert storage.get_message("c1", 1) == m
    assert storage.messages_after("c1", 0, 10)[0].expires_at == NOW_EPOCH + 86400


def test_set_agent_connections_corrects_the_count_only_if_unchanged(storage: Storage) -> None:
    storage.agent_connected("bob", at(1))
    seen = storage.agent_connected("bob", at(2))
    assert seen.connections == 2
    assert storage.set_agent_connections("bob", at(1), 0, at(3)) is False  # stale read
    assert storage.set_agent_connections("bob", seen.updated_at, 1, at(3)) is True
    agent = storage.get_agent("bob")
    assert agent is not None and (agent.connections, agent.presence) == (1, "online")
    assert storage.set_agent_connections("bob", at(3), 0, at(4)) is True
    agent = storage.get_agent("bob")
    assert agent is not None and (agent.connections, agent.presence) == (0, "offline")
    assert storage.set_agent_connections("ghost", at(3), 0, at(4)) is False
