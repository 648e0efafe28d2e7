"""The local cloud's TransactWriteItems for moto: all or nothing, without copying tables."""

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from infra.local import moto_patches


@pytest.fixture
def ddb(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", moto_patches.transact_write_items)
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
        yield client


def put(key, **extra):
    item = {"k": {"S": key}} | {n: {"N": str(v)} for n, v in extra.items()}
    return {"Put": {"TableName": "t", "Item": item, "ConditionExpression": "attribute_not_exists(k)"}}


def keys(ddb):
    return sorted(i["k"]["S"] for i in ddb.scan(TableName="t")["Items"])


def test_all_writes_happen_when_every_condition_holds(ddb):
    ddb.transact_write_items(TransactItems=[put("a"), put("b")])
    assert keys(ddb) == ["a", "b"]


def test_a_failed_condition_writes_nothing_and_names_the_item(ddb):
    ddb.transact_write_items(TransactItems=[put("b")])
    with pytest.raises(ClientError) as info:
        ddb.transact_write_items(TransactItems=[put("a"), put("b")])
    reasons = [r["Code"] for r in info.value.response["CancellationReasons"]]
    assert reasons == ["None", "ConditionalCheckFailed"]
    assert keys(ddb) == ["b"]


def test_a_write_that_fails_after_others_is_undone(ddb):
    ddb.put_item(TableName="t", Item={"k": {"S": "c"}, "n": {"N": "1"}})
    bad_update = {"Update": {"TableName": "t", "Key": {"k": {"S": "c"}},
                             "UpdateExpression": "SET n = n + :missing",
                             "ExpressionAttributeValues": {":other": {"N": "1"}}}}
    change_c = {"Update": {"TableName": "t", "Key": {"k": {"S": "a"}},
                           "UpdateExpression": "SET n = :one",
                           "ExpressionAttributeValues": {":one": {"N": "1"}}}}
    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=[put("b"), change_c, bad_update])
    assert keys(ddb) == ["c"]  # b and a were written first and are undone
    assert ddb.get_item(TableName="t", Key={"k": {"S": "c"}})["Item"]["n"] == {"N": "1"}


def test_two_operations_on_one_item_are_refused(ddb):
    with pytest.raises(ClientError) as info:
        ddb.transact_write_items(TransactItems=[put("a"), put("a")])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert keys(ddb) == []


def test_approximate_counts_are_cached_briefly(monkeypatch):
    from moto.sqs.models import Queue

    for name in moto_patches._COUNTS:
        monkeypatch.setattr(Queue, name, getattr(Queue, name))  # restored after the test
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto_patches.cache_approximate_counts()
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]

        def visible():
            return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"]["ApproximateNumberOfMessages"]

        assert visible() == "0"
        sqs.send_message(QueueUrl=url, MessageBody="x")
        assert visible() == "0"  # within the TTL: the cached, approximate count
        import time

        time.sleep(moto_patches.COUNT_TTL_S + 0.1)
        assert visible() == "1"
