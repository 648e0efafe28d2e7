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
    now = [1000.0]
    monkeypatch.setattr(moto_patches, "count_clock", lambda: now[0])  # time moves only when the test says
    moto_patches.cache_approximate_counts()
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]

        def visible():
            return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"]["ApproximateNumberOfMessages"]

        assert visible() == "0"
        sqs.send_message(QueueUrl=url, MessageBody="x")
        now[0] += moto_patches.COUNT_TTL_S * 0.9
        assert visible() == "0"  # within the TTL: the cached, approximate count
        now[0] += moto_patches.COUNT_TTL_S * 0.2
        assert visible() == "1"


# --------------------------------------------------------------- index-backed queries
import random

from moto.dynamodb.models.table import Table

_WRAPPED = ((Table, "query"), (Table, "all_items"), (Table, "put_item"), (Table, "delete_item"),
            (DynamoDBBackend, "update_item"))


@pytest.fixture
def indexed(monkeypatch):
    """A messages-like table (hash + range, a sparse GSI, a hash-only GSI, an LSI) and a
    connections-like table (hash only, a GSI), with the index-backed queries installed."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for owner, name in _WRAPPED:
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", moto_patches.transact_write_items)
    moto_patches.index_queries()
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="m", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in
                                  (("c", "S"), ("s", "N"), ("sh", "N"), ("sn", "N"),
                                   ("u", "S"), ("ts", "S"))],
            KeySchema=[{"AttributeName": "c", "KeyType": "HASH"}, {"AttributeName": "s", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[
                {"IndexName": "byPending", "Projection": {"ProjectionType": "INCLUDE",
                                                          "NonKeyAttributes": ["body"]},
                 "KeySchema": [{"AttributeName": "sh", "KeyType": "HASH"},
                               {"AttributeName": "sn", "KeyType": "RANGE"}]},
                {"IndexName": "byUser", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "u", "KeyType": "HASH"}]},
                {"IndexName": "byUserKeys", "Projection": {"ProjectionType": "KEYS_ONLY"},
                 "KeySchema": [{"AttributeName": "u", "KeyType": "HASH"},
                               {"AttributeName": "ts", "KeyType": "RANGE"}]}],
            LocalSecondaryIndexes=[
                {"IndexName": "byAt", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "c", "KeyType": "HASH"},
                               {"AttributeName": "ts", "KeyType": "RANGE"}]}])
        client.create_table(
            TableName="k", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"},
                                  {"AttributeName": "u", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{"IndexName": "byUser", "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "u", "KeyType": "HASH"}]}])
        yield client


def _unpatched_query(monkeypatch, client, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(Table, "query", Table.query.__wrapped__)
        return client.query(**kwargs)


def _strip(response):
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def same_answers(monkeypatch, client, **kwargs):
    """Every page of the query, patched and as moto answers it, is the same; returns the items."""
    items, pages = [], 0
    while True:
        patched = _strip(client.query(**kwargs))
        plain = _strip(_unpatched_query(monkeypatch, client, **kwargs))
        assert patched == plain, kwargs
        items += patched.get("Items", [])
        pages += 1
        if "LastEvaluatedKey" not in patched:
            return items
        kwargs = {**kwargs, "ExclusiveStartKey": patched["LastEvaluatedKey"]}
        assert pages < 1000


def _queries(rng):
    n = lambda v: {"N": str(v)}
    s = lambda v: {"S": v}
    out = []
    for conv in ("c0", "c1", "c2", "nope"):
        out += [{"TableName": "m", "KeyConditionExpression": "c = :c", "ExpressionAttributeValues": {":c": s(conv)}},
                {"TableName": "m", "KeyConditionExpression": "c = :c AND s > :a",
                     "ExpressionAttributeValues": {":c": s(conv), ":a": n(rng.randrange(20))},
                     "ScanIndexForward": False, "Limit": rng.randrange(1, 6)},
                {"TableName": "m", "KeyConditionExpression": "c = :c AND s BETWEEN :a AND :b",
                     "ExpressionAttributeValues": {":c": s(conv), ":a": n(3), ":b": n(14)}, "Limit": 4,
                     "ConsistentRead": True},
                {"TableName": "m", "IndexName": "byAt", "KeyConditionExpression": "c = :c AND begins_with(#a, :p)",
                     "ExpressionAttributeNames": {"#a": "ts"},
                     "ExpressionAttributeValues": {":c": s(conv), ":p": s("t1")}, "Limit": 3}]
    for sh in range(4):
        out += [{"TableName": "m", "IndexName": "byPending",
                     "KeyConditionExpression": "sh = :s AND sn < :t",
                     "ExpressionAttributeValues": {":s": n(sh), ":t": n(rng.randrange(50))},
                     "Limit": rng.randrange(1, 5)},
                {"TableName": "m", "IndexName": "byPending", "KeyConditionExpression": "sh = :s",
                     "ExpressionAttributeValues": {":s": n(sh)}, "ScanIndexForward": False, "Limit": 2},
                {"TableName": "m", "IndexName": "byPending", "KeyConditionExpression": "sh = :s",
                     "ExpressionAttributeValues": {":s": n(sh)}, "Select": "COUNT"}]
    for user in ("u0", "u1", "u2", "u3"):
        out += [{"TableName": "m", "IndexName": "byUser", "KeyConditionExpression": "u = :u",
                     "ExpressionAttributeValues": {":u": s(user)}, "Limit": rng.randrange(1, 7)},
                {"TableName": "m", "IndexName": "byUserKeys", "KeyConditionExpression": "u = :u AND #a >= :a",
                     "ExpressionAttributeNames": {"#a": "ts"},
                     "ExpressionAttributeValues": {":u": s(user), ":a": s("t3")}, "ScanIndexForward": False},
                {"TableName": "m", "IndexName": "byUser", "KeyConditionExpression": "u = :u",
                     "FilterExpression": "attribute_exists(body)", "ProjectionExpression": "c, s, body",
                     "ExpressionAttributeValues": {":u": s(user)}, "Limit": 3},
                {"TableName": "k", "IndexName": "byUser", "KeyConditionExpression": "u = :u",
                     "ExpressionAttributeValues": {":u": s(user)}, "Limit": rng.randrange(1, 4)},
                {"TableName": "k", "KeyConditionExpression": "id = :i",
                     "ExpressionAttributeValues": {":i": s(f"k{rng.randrange(12)}")}}]
    return out


def _random_write(rng, client):
    n = lambda v: {"N": str(v)}
    s = lambda v: {"S": v}
    key = {"c": s(f"c{rng.randrange(3)}"), "s": n(rng.randrange(20))}
    op = rng.randrange(9)
    if op == 0:  # a put with or without the sparse index's keys
        item = dict(key, body=s(f"b{rng.random():.3f}"), ts=s(f"t{rng.randrange(6)}"))
        if rng.random() < 0.6:
            item |= {"sh": n(rng.randrange(4)), "sn": n(rng.randrange(50))}
        if rng.random() < 0.7:
            item["u"] = s(f"u{rng.randrange(4)}")
        client.put_item(TableName="m", Item=item)
    elif op == 1:  # an update that adds or changes the index keys
        client.update_item(TableName="m", Key=key, UpdateExpression="SET sh = :s, sn = :t, u = :u",
                           ExpressionAttributeValues={":s": n(rng.randrange(4)), ":t": n(rng.randrange(50)),
                                                      ":u": s(f"u{rng.randrange(4)}")})
    elif op == 2:  # an update that removes them (the item leaves the sparse index)
        client.update_item(TableName="m", Key=key, UpdateExpression="REMOVE sh, sn")
    elif op == 3:
        client.update_item(TableName="m", Key=key, UpdateExpression="REMOVE u SET ts = :a",
                           ExpressionAttributeValues={":a": s(f"t{rng.randrange(6)}")})
    elif op == 4:
        client.delete_item(TableName="m", Key=key)
    elif op == 5:  # a transaction: a put, an update and a delete on distinct items
        other = {"c": key["c"], "s": n((int(key["s"]["N"]) + 1) % 20)}
        third = {"c": key["c"], "s": n((int(key["s"]["N"]) + 2) % 20)}
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": "m", "Item": dict(key, sh=n(rng.randrange(4)), sn=n(rng.randrange(50)),
                                                     body=s("tx"))}},
            {"Update": {"TableName": "m", "Key": other, "UpdateExpression": "SET u = :u REMOVE sh",
                        "ExpressionAttributeValues": {":u": s(f"u{rng.randrange(4)}")}}},
            {"Delete": {"TableName": "m", "Key": third}},
            {"Put": {"TableName": "k", "Item": {"id": s(f"k{rng.randrange(12)}"), "u": s(f"u{rng.randrange(4)}")}}}])
    elif op == 6:  # a cancelled transaction writes nothing
        with pytest.raises(ClientError):
            client.transact_write_items(TransactItems=[
                {"Put": {"TableName": "m", "Item": dict(key, sh=n(0), sn=n(1))}},
                {"ConditionCheck": {"TableName": "k", "Key": {"id": s("never")},
                                    "ConditionExpression": "attribute_exists(id)"}}])
    elif op == 7:  # batch writes
        client.batch_write_item(RequestItems={"k": [
            {"PutRequest": {"Item": {"id": s(f"k{rng.randrange(12)}"), "u": s(f"u{rng.randrange(4)}")}}},
            {"DeleteRequest": {"Key": {"id": s(f"k{rng.randrange(12)}")}}}]})
    else:  # a conditional put that fails changes nothing
        try:
            client.put_item(TableName="m", Item=dict(key, sh=n(1), sn=n(2)),
                            ConditionExpression="attribute_not_exists(c)")
        except ClientError:
            pass


def _indexes_match_a_rebuild():
    from moto.dynamodb.models import dynamodb_backends

    for table in dynamodb_backends["123456789012"]["us-east-1"].tables.values():
        for name, index in table.__dict__.get(moto_patches._INDEXES, {}).items():
            fresh = moto_patches.HashIndex(table, index.attr)
            assert {b: set(k) for b, k in index.buckets.items()} == {b: set(k) for b, k in fresh.buckets.items()}, name
            assert index.where == fresh.where, name


def test_index_backed_queries_answer_as_moto_does_through_random_writes(indexed, monkeypatch):
    rng = random.Random(4)
    for step in range(400):
        _random_write(rng, indexed)
        if step % 25 == 0 or step >= 390:
            for query in _queries(rng):
                same_answers(monkeypatch, indexed, **query)
            _indexes_match_a_rebuild()


def test_sparse_index_follows_updates_and_deletes(indexed, monkeypatch):
    def pending(sh):
        return same_answers(monkeypatch, indexed, TableName="m", IndexName="byPending",
                            KeyConditionExpression="sh = :s",
                            ExpressionAttributeValues={":s": {"N": str(sh)}})

    key = {"c": {"S": "c0"}, "s": {"N": "1"}}
    assert pending(0) == []  # builds the index on an empty table
    indexed.put_item(TableName="m", Item=dict(key, sh={"N": "0"}, sn={"N": "5"}, body={"S": "x"},
                                              other={"S": "not projected"}))
    assert pending(0) == [dict(key, sh={"N": "0"}, sn={"N": "5"}, body={"S": "x"})]
    indexed.update_item(TableName="m", Key=key, UpdateExpression="SET sh = :s",
                        ExpressionAttributeValues={":s": {"N": "2"}})
    assert pending(0) == [] and len(pending(2)) == 1
    indexed.update_item(TableName="m", Key=key, UpdateExpression="REMOVE sn")
    assert pending(2) == []  # no range key attribute: not in the index
    indexed.update_item(TableName="m", Key=key, UpdateExpression="SET sn = :t",
                        ExpressionAttributeValues={":t": {"N": "9"}})
    assert len(pending(2)) == 1
    indexed.delete_item(TableName="m", Key=key)
    assert pending(2) == []
    indexed.update_item(TableName="m", Key=key, UpdateExpression="SET sh = :s, sn = :t",
                        ExpressionAttributeValues={":s": {"N": "3"}, ":t": {"N": "1"}})  # an upsert
    assert pending(3) == [dict(key, sh={"N": "3"}, sn={"N": "1"})]
    _indexes_match_a_rebuild()


def test_pagination_over_equal_index_range_values(indexed, monkeypatch):
    for i in range(25):  # many items share one GSI range value: pages break ties by the table key
        indexed.put_item(TableName="m", Item={"c": {"S": f"c{i % 3}"}, "s": {"N": str(i)},
                                              "sh": {"N": "1"}, "sn": {"N": str(i % 2)}})
    for forward in (True, False):
        for limit in (1, 2, 7):
            items = same_answers(monkeypatch, indexed, TableName="m", IndexName="byPending",
                                 KeyConditionExpression="sh = :s",
                                 ExpressionAttributeValues={":s": {"N": "1"}},
                                 ScanIndexForward=forward, Limit=limit)
            assert len(items) == 25


def test_queries_fall_back_to_moto_when_no_hash_value_is_given(indexed):
    with pytest.raises(ClientError):  # moto's own validation still answers
        indexed.query(TableName="m", IndexName="missing", KeyConditionExpression="u = :u",
                      ExpressionAttributeValues={":u": {"S": "u0"}})


def test_module_list_is_cached():
    import moto.backends

    moto_patches.cache_module_list()
    first = moto.backends.list_of_moto_modules()
    assert "dynamodb" in first and "sqs" in first
    assert moto.backends.list_of_moto_modules() is first


def test_handler_method_names_are_listed_once_per_class(monkeypatch):
    import inspect

    from moto.core import responses as core_responses
    from moto.dynamodb.responses import DynamoHandler

    monkeypatch.setattr(core_responses, "method_names_from_class", core_responses.method_names_from_class)
    moto_patches.cache_method_names()
    listed = []
    real = inspect.getmembers
    monkeypatch.setattr(inspect, "getmembers", lambda *a, **k: listed.append(a[0]) or real(*a, **k))
    names = core_responses.method_names_from_class(DynamoHandler)
    assert "update_item" in names and "query" in names
    names.append("not_a_method")  # a caller's change stays its own
    assert core_responses.method_names_from_class(DynamoHandler) == names[:-1]
    assert listed.count(DynamoHandler) <= 1


def test_a_fifo_long_poll_waits_instead_of_spinning_while_its_groups_are_in_flight(monkeypatch):
    import time

    from moto.sqs.models import Queue

    monkeypatch.setattr(Queue, "wait_for_messages", Queue.wait_for_messages)  # restored after the test
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto_patches.pace_fifo_long_polls()
    passes = 0
    original = Queue.messages

    def counted(queue):
        nonlocal passes
        passes += 1
        return original.fget(queue)

    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="q.fifo", Attributes={
            "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
        for body in ("one", "two"):
            sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
        first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"]
        assert [m["Body"] for m in first] == ["one"]
        monkeypatch.setattr(Queue, "messages", property(counted))
        started = time.monotonic()
        # "two" is visible, but its group has "one" in flight: nothing to receive.
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []) == []
        assert time.monotonic() - started >= 1.0
        assert passes < 2 * (1 / moto_patches.RECEIVE_RECHECK_S) + 10  # unpatched: a busy loop
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
        started = time.monotonic()
        second = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
        assert [m["Body"] for m in second] == ["two"]
        assert time.monotonic() - started < 4.5  # woken by the delete, not by the end of the 5 s poll


def _item_operations(client):
    """Every item operation the plain JSON writer takes over, on items of every attribute type."""
    client.create_table(TableName="rich", BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"},
                                              {"AttributeName": "s", "AttributeType": "N"}],
                        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"},
                                   {"AttributeName": "s", "KeyType": "RANGE"}])

    def item(n):
        return {"k": {"S": "p"}, "s": {"N": str(n)}, "b": {"B": bytes([0, n, 255])},
                "flag": {"BOOL": n % 2 == 0}, "none": {"NULL": True},
                "list": {"L": [{"S": "x"}, {"N": "1.5"}, {"M": {"deep": {"B": b"\x01"}}}]},
                "map": {"M": {"c#1": {"M": {"userId": {"S": "u"}, "at": {"N": str(n)}}}}},
                "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"\x02", b"\x03"]}}

    out = []
    capacity = {"ReturnConsumedCapacity": "TOTAL"}
    for n in range(1, 4):
        out.append(client.put_item(TableName="rich", Item=item(n), ReturnValues="ALL_OLD", **capacity))
    out.append(client.put_item(TableName="rich", Item=item(1), ReturnValues="ALL_OLD"))
    out.append(client.update_item(TableName="rich", Key={"k": {"S": "p"}, "s": {"N": "2"}},
                                  UpdateExpression="SET #n = :v ADD ns :more",
                                  ExpressionAttributeNames={"#n": "new"},
                                  ExpressionAttributeValues={":v": {"B": b"\x09"}, ":more": {"NS": ["3"]}},
                                  ReturnValues="ALL_NEW", **capacity))
    out.append(client.get_item(TableName="rich", Key={"k": {"S": "p"}, "s": {"N": "1"}}, **capacity))
    out.append(client.get_item(TableName="rich", Key={"k": {"S": "p"}, "s": {"N": "9"}}))
    out.append(client.query(TableName="rich", KeyConditionExpression="k = :p",
                            ExpressionAttributeValues={":p": {"S": "p"}}, Limit=2, **capacity))
    out.append(client.scan(TableName="rich", ProjectionExpression="k, s, b, #m",
                           ExpressionAttributeNames={"#m": "map"}))
    out.append(client.batch_get_item(RequestItems={"rich": {"Keys": [
        {"k": {"S": "p"}, "s": {"N": "1"}}, {"k": {"S": "p"}, "s": {"N": "3"}}]}}))
    out.append(client.batch_write_item(RequestItems={"rich": [{"PutRequest": {"Item": item(4)}}]}))
    out.append(client.transact_get_items(TransactItems=[
        {"Get": {"TableName": "rich", "Key": {"k": {"S": "p"}, "s": {"N": "4"}}}}]))
    out.append(client.transact_write_items(TransactItems=[
        {"Delete": {"TableName": "rich", "Key": {"k": {"S": "p"}, "s": {"N": "4"}}}}]))
    out.append(client.delete_item(TableName="rich", Key={"k": {"S": "p"}, "s": {"N": "3"}},
                                  ReturnValues="ALL_OLD"))
    for response in out:
        response.pop("ResponseMetadata", None)
    return out


def _on_fresh_moto(monkeypatch, operations):
    """``operations(client)`` on a fresh in-process moto DynamoDB: its answers."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        return operations(boto3.client("dynamodb"))


def test_item_results_written_as_plain_json_parse_as_the_serializer_writes_them(monkeypatch):
    from moto.dynamodb.responses import DynamoResult

    generic = _on_fresh_moto(monkeypatch, _item_operations)
    monkeypatch.setattr(DynamoResult, "execute_result", DynamoResult.execute_result)  # undone after
    moto_patches.plain_json_item_results()
    assert getattr(DynamoResult.execute_result, moto_patches._PATCHED)
    plain = _on_fresh_moto(monkeypatch, _item_operations)
    assert plain == generic
    assert generic[3]["Attributes"]["b"] == {"B": bytes([0, 1, 255])}  # bytes survive both ways
    assert generic[4]["Attributes"]["new"] == {"B": b"\x09"}
    assert "Item" not in generic[6]  # an absent member stays absent
    assert "LastEvaluatedKey" in generic[7] and len(generic[7]["Items"]) == 2


def _conditional_operations(client):
    """Conditional writes and updates whose answers depend on the values, repeated; errors included."""
    client.create_table(TableName="conds", BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
    out = []

    def attempt(call, **kwargs):
        try:
            answer = call(TableName="conds", **kwargs)
            answer.pop("ResponseMetadata", None)
            out.append(answer)
        except ClientError as err:
            out.append((err.response["Error"]["Code"], err.response["Error"]["Message"],
                        err.response.get("Item")))
        except ValueError as err:  # moto's parser error, raised as is under mock_aws
            out.append(("ValueError", str(err)))

    reserve = {"UpdateExpression": "SET n = n + :one, stamp = :now",
               "ConditionExpression": "attribute_exists(k) AND #s <> :closed AND #h = :who",
               "ExpressionAttributeNames": {"#s": "status", "#h": "owner"},
               "ReturnValues": "ALL_NEW", "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
    for _ in range(2):  # the second round answers from the kept parses
        attempt(client.put_item, Item={"k": {"S": "c"}, "n": {"N": "0"}, "status": {"S": "open"},
                                       "owner": {"S": "ann"}},
                ConditionExpression="attribute_not_exists(k)")
        for who, now in (("ann", "1"), ("bob", "2"), ("ann", "3")):
            attempt(client.update_item, Key={"k": {"S": "c"}}, **reserve,
                    ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": now},
                                               ":closed": {"S": "closed"}, ":who": {"S": who}})
        attempt(client.update_item, Key={"k": {"S": "c"}}, UpdateExpression="SET n = :v",
                ExpressionAttributeValues={":v": {"N": "1"}, ":unused": {"N": "2"}})
        attempt(client.update_item, Key={"k": {"S": "c"}}, UpdateExpression="SET n = :v",
                ConditionExpression="n <", ExpressionAttributeValues={":v": {"N": "1"}})
        attempt(client.put_item, Item={"k": {"S": "c"}, "n": {"N": "9"}},
                ConditionExpression="n < :limit", ExpressionAttributeValues={":limit": {"N": "5"}})
        attempt(client.delete_item, Key={"k": {"S": "c"}}, ConditionExpression="n > :limit",
                ExpressionAttributeValues={":limit": {"N": "5"}})
    return out


def test_kept_expression_parses_answer_as_moto_does(monkeypatch):
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    stock = _on_fresh_moto(monkeypatch, _conditional_operations)
    monkeypatch.setattr(ConditionExpressionParser, "parse", ConditionExpressionParser.parse)  # undone after
    monkeypatch.setattr(UpdateExpressionParser, "make", UpdateExpressionParser.__dict__["make"])
    parses = []
    real = ConditionExpressionParser._lex_condition_expression
    monkeypatch.setattr(ConditionExpressionParser, "_lex_condition_expression",
                        lambda self: parses.append(self.condition_expression) or real(self))
    moto_patches.cache_expression_parses()
    moto_patches.cache_expression_parses()  # idempotent
    kept = _on_fresh_moto(monkeypatch, _conditional_operations)
    assert kept == stock
    assert stock[1]["Attributes"]["n"] == {"N": "1"} and stock[1]["Attributes"]["stamp"] == {"N": "1"}
    assert stock[2][0] == "ConditionalCheckFailedException"  # bob does not hold it: ann's parse not reused
    assert stock[3]["Attributes"]["n"] == {"N": "2"} and stock[3]["Attributes"]["stamp"] == {"N": "3"}
    assert stock[4][0] == "ValidationException" and stock[5][0] == "ValueError"
    assert stock[6] == stock[7] == {}  # n < :limit, then n > :limit after the put
    assert stock[8:] == stock[:8]  # the second round answers as the first
    assert stock[12] == stock[4] and stock[13] == stock[5]  # a bad request fails again
    # Each distinct (expression, names, values) was lexed once, the invalid one every time.
    assert parses.count("n <") == 2
    assert parses.count("attribute_exists(k) AND #s <> :closed AND #h = :who") == 3
    assert parses.count("n < :limit") == 1
