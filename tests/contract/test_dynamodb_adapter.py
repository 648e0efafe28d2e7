"""What only the DynamoDB adapter has: its items, its client, its error wrapping and retries.

The behaviour shared with every Storage is in test_storage_contract.py.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import core
from chalicelib.errors import (
    DuplicateMessage,
    DuplicateRequest,
    NotFound,
    OnceChatError,
    ReservationRefused,
    SequenceConflict,
    StaleConversation,
)
from chalicelib.models import Principal
from chalicelib.storage.dynamodb import DynamoStorage

from .cloud import config_for
from .conftest import STAGE
from .records import FAR_FUTURE, NOW_EPOCH, T0, conversation, idem_for, message, store_message

pytestmark = pytest.mark.usefixtures("moto_aws")


@pytest.fixture
def ddb(boto_session: boto3.session.Session) -> Any:
    return boto_session.client("dynamodb")


@pytest.fixture
def store(ddb: Any) -> DynamoStorage:
    return DynamoStorage(config_for(STAGE), ddb)


def test_builds_its_own_client_from_the_default_session_on_first_use() -> None:
    store = DynamoStorage(config_for(STAGE))
    store.create_conversation(conversation("c1"))
    assert store.get_conversation("c1") == conversation("c1")


def store_via(storage: DynamoStorage, msg: Any) -> None:
    storage.reserve_seq(msg.conversation_id, Principal(user_id=msg.sender_id, role="customer"),
                        NOW_EPOCH * 1000)
    store_message(storage, msg, idem_for(msg), NOW_EPOCH)


def test_unassigned_conversation_has_no_agent_id_attribute(store: DynamoStorage, ddb: Any) -> None:
    # agentId is the key of GSI byAgent: a NULL there would be rejected.
    store.create_conversation(conversation("c1"))
    item = ddb.get_item(TableName=config_for(STAGE).conversations_table, Key={"conversationId": {"S": "c1"}})
    assert "agentId" not in item["Item"]
    assert item["Item"]["lastSeq"] == {"N": "0"}
    assert item["Item"]["status"] == {"S": "waiting"}


def test_items_carry_camel_case_names_numbers_and_the_idempotency_key(store: DynamoStorage, ddb: Any) -> None:
    config = config_for(STAGE)
    store.create_conversation(conversation("c1"))
    msg = message(1)
    store_via(store, msg)
    stored = ddb.get_item(
        TableName=config.messages_table, Key={"conversationId": {"S": "c1"}, "seq": {"N": "1"}}
    )["Item"]
    fields = {"conversationId", "seq", "messageId", "senderId", "senderRole", "body", "sentAt"}
    assert set(stored) == fields  # no index entry per message
    idem = ddb.get_item(TableName=config.idempotency_table, Key={"idemKey": {"S": "cust1#c1#m1"}})["Item"]
    assert idem["expiresAt"]["N"] == str(idem_for(msg).expires_at)
    assert idem["seq"] == {"N": "1"}


def test_agents_get_an_active_count_so_they_appear_in_the_presence_index(store: DynamoStorage, ddb: Any) -> None:
    store.agent_connected("ag1", T0)
    item = ddb.get_item(TableName=config_for(STAGE).agents_table, Key={"agentId": {"S": "ag1"}})["Item"]
    assert item["activeCount"] == {"N": "0"}
    assert item["connections"] == {"N": "1"}


def test_backend_errors_are_wrapped_once_into_oncechat_error(ddb: Any) -> None:
    store = DynamoStorage(config_for("no-such-stack"), ddb)
    with pytest.raises(OnceChatError) as caught:
        store.get_connection("conn-1")
    assert isinstance(caught.value.__cause__, ClientError)
    msg = message(1)
    with pytest.raises(OnceChatError) as caught:
        store_message(store, msg, idem_for(msg), NOW_EPOCH)
    assert isinstance(caught.value.__cause__, ClientError)
    assert type(caught.value) is OnceChatError


def test_a_refused_reservation_returns_the_conversation_without_a_read(store: DynamoStorage, ddb: Any) -> None:
    store.create_conversation(conversation("c1", status="closed"))
    calls = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(ddb, name)

        def get_item(self, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return ddb.get_item(**kwargs)

    spied = DynamoStorage(config_for(STAGE), Spy())
    with pytest.raises(ReservationRefused) as refused:
        spied.reserve_seq("c1", Principal(user_id="cust1", role="customer"), 0)
    assert refused.value.conversation.status == "closed"
    assert calls == []  # ReturnValuesOnConditionCheckFailure=ALL_OLD answered it


def test_moto_reports_cancellation_reasons_per_item(store: DynamoStorage, ddb: Any) -> None:
    # The lifecycle transactions rely on these (one reason per item, in order).
    config = config_for(STAGE)
    store.create_conversation(conversation("c1"))
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(
            TransactItems=[
                {"ConditionCheck": {
                    "TableName": config.conversations_table,
                    "Key": {"conversationId": {"S": "c1"}},
                    "ConditionExpression": "attribute_exists(conversationId)",
                }},
                {"Put": {
                    "TableName": config.conversations_table,
                    "Item": {"conversationId": {"S": "c2"}},
                    "ConditionExpression": "attribute_exists(conversationId)",
                }},
            ]
        )
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    codes = [r["Code"] for r in caught.value.response["CancellationReasons"]]
    assert codes == ["None", "ConditionalCheckFailed"]


class _Conflicting:
    """A client whose first ``conflicts`` transactions are cancelled by a concurrent transaction.

    Real DynamoDB does this when two transactions touch one item at once;
    moto never does, so it is injected here.
    """

    def __init__(self, client: Any, conflicts: int) -> None:
        self._client = client
        self.conflicts = conflicts
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.conflicts:
            n = len(kwargs["TransactItems"])
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": [{"Code": "TransactionConflict"}] + [{"Code": "None"}] * (n - 1),
                },
                "TransactWriteItems",
            )
        return self._client.transact_write_items(**kwargs)


def test_a_transaction_conflict_is_retried_and_then_commits(ddb: Any) -> None:
    client = _Conflicting(ddb, conflicts=2)
    store = DynamoStorage(config_for(STAGE), client)
    store.create_conversation(conversation("c1"))  # third call: commits
    msg = message(1)
    assert client.calls == 3
    store_via(store, msg)  # plain conditional writes: no transaction
    assert client.calls == 3
    assert store.get_message("c1", 1) == msg


def test_a_lasting_transaction_conflict_is_reported_as_sequence_conflict(ddb: Any) -> None:
    store = DynamoStorage(config_for(STAGE), ddb)
    store.create_conversation(conversation("c1"))
    conflicted = DynamoStorage(config_for(STAGE), _Conflicting(ddb, conflicts=100))
    # a lifecycle step that keeps conflicting is a signal to re-read, and writes nothing
    store.agent_connected("ag1", T0)
    waiting = store.get_conversation("c1")
    assert waiting is not None
    with pytest.raises(StaleConversation):
        conflicted.apply_transition(core.plan_assign(waiting, "ag1", core.epoch_ms(T0)), NOW_EPOCH)
    assert store.get_conversation("c1") == waiting
    assert store.get_message("c1", 1) is None
    agent = store.get_agent("ag1")
    assert agent is not None and agent.active_count == 0
    assert store.get_participant("ag1", "c1") is None


class _Reads:
    """A client that records every read (GetItem, BatchGetItem, Query, Scan) and passes all calls on."""

    READS = ("get_item", "batch_get_item", "query", "scan")

    def __init__(self, client: Any) -> None:
        self._client = client
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.READS:
            return attr

        def read(**kwargs: Any) -> Any:
            self.reads.append(name)
            return attr(**kwargs)
        return read


# Refused writes, each answered from the item DynamoDB returned with the refusal
# (ReturnValuesOnConditionCheckFailure=ALL_OLD), on the state seeded below.


def _fill_hole_on_a_stored_message(store: DynamoStorage) -> None:
    assert store.fill_hole("c1", 1, NOW_EPOCH) == message(1)


def _duplicate_claim(store: DynamoStorage) -> None:
    with pytest.raises(DuplicateMessage) as refused:
        store.claim_message_id(idem_for(message(1)), NOW_EPOCH)
    assert refused.value.existing == idem_for(message(1))


def _taken_slot(store: DynamoStorage) -> None:
    with pytest.raises(SequenceConflict) as refused:
        store.put_message(message(1, message_id="other"))
    assert refused.value.existing == message(1)


def _repeated_request_key(store: DynamoStorage) -> None:
    with pytest.raises(DuplicateRequest) as refused:
        store.create_conversation(conversation("c2"), request_key="k1", expires_at=FAR_FUTURE,
                                  now_epoch=NOW_EPOCH)
    assert refused.value.existing_id == "c0"


def _transition_of_a_missing_conversation(store: DynamoStorage) -> None:
    with pytest.raises(NotFound):
        store.apply_transition(core.plan_assign(conversation("nope"), "ag1", core.epoch_ms(T0)), NOW_EPOCH)


def _transition_of_a_moved_conversation(store: DynamoStorage) -> None:
    with pytest.raises(StaleConversation):
        store.apply_transition(core.plan_assign(conversation("c1"), "ag1", core.epoch_ms(T0)), NOW_EPOCH)


def _disconnect_of_an_unknown_agent(store: DynamoStorage) -> None:
    assert store.agent_disconnected("nobody", T0) is None


def _disconnect_at_zero_connections(store: DynamoStorage) -> None:
    agent = store.agent_disconnected("ag0", T0)
    assert agent is not None and agent.connections == 0 and agent.presence == "offline"


REFUSALS = [_fill_hole_on_a_stored_message, _duplicate_claim, _taken_slot, _repeated_request_key,
            _transition_of_a_missing_conversation, _transition_of_a_moved_conversation,
            _disconnect_of_an_unknown_agent, _disconnect_at_zero_connections]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda f: f.__name__.lstrip("_"))
def test_a_refused_write_is_answered_from_the_returned_item_without_a_read(
        refusal: Any, store: DynamoStorage, ddb: Any) -> None:
    store.create_conversation(conversation("c0"), request_key="k1", expires_at=FAR_FUTURE, now_epoch=NOW_EPOCH)
    store.create_conversation(conversation("c1"))
    store_via(store, message(1))  # c1 moved on: lastSeq 1
    store.agent_connected("ag1", T0)
    store.agent_connected("ag0", T0)
    store.set_agent_connections("ag0", store.get_agent("ag0").updated_at, 0, T0)
    spy = _Reads(ddb)
    refusal(DynamoStorage(config_for(STAGE), spy))
    assert spy.reads == []
