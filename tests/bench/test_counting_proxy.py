"""The counting proxy counts AWS requests and DynamoDB capacity units exactly.

Requests go through the proxy (``bench.proxy``) to a real moto server, the
way the benchmark's apps reach it; the expected counts come from the item
sizes chosen here and DynamoDB's rules.
"""

import json
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError

from bench import proxy as counting
from infra.local.aws import MotoServer
from infra.local.launcher import free_port

# An item of exactly 1,500 bytes: 1,500 / 1 KB -> 2 WRU standard, 4 transactional; 1 RRU strong.
NAME_BYTES = len("pk") + len("owner") + len("pad")


def item(key, owner=None, total=1500):
    base = {"pk": {"S": key}}
    if owner is not None:
        base["owner"] = {"S": owner}
    used = sum(len(k) for k in base) + sum(len(v["S"]) for v in base.values()) + len("pad")
    base["pad"] = {"S": "x" * (total - used)}
    return base


@pytest.fixture(scope="module")
def endpoints():
    moto = MotoServer("127.0.0.1", free_port())
    moto.start()
    server = counting.serve("127.0.0.1", free_port(), moto.endpoint)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield moto.endpoint, url
    finally:
        server.shutdown()
        moto.stop()


def client(service, url):
    return boto3.session.Session().client(service, endpoint_url=url, region_name="us-east-1",
                                          aws_access_key_id="testing", aws_secret_access_key="testing")


def stats(url, reset=False):
    req = urllib.request.Request(url + "/_bench/stats", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def rows(snapshot, operation):
    return [r for r in snapshot["requests"] if r["operation"] == operation]


def total(snapshot, operation, field):
    return sum(r.get(field, 0) for r in rows(snapshot, operation))


@pytest.fixture(scope="module")
def table(endpoints):
    moto_url, _ = endpoints
    client("dynamodb", moto_url).create_table(
        TableName="things", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "owner", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": "byOwner", "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}])
    return "things"


def test_the_test_item_has_the_intended_size():
    from bench.capacity import item_size
    assert item_size(item("k1")) == 1500
    assert item_size(item("k1", owner="o1")) == 1500


def test_put_items_give_the_known_count_and_write_units(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    stats(url, reset=True)
    for i in range(5):
        db.put_item(TableName=table, Item=item(f"p{i}"))
    for i in range(3):  # into the sparse index too: one index write each
        db.put_item(TableName=table, Item=item(f"g{i}", owner="o1"))
    snap = stats(url)
    assert total(snap, "PutItem", "requests") == 8
    assert total(snap, "PutItem", "wru") == 8 * 2
    assert total(snap, "PutItem", "index_writes") == 3
    assert total(snap, "PutItem", "index_wru") == 3 * 2
    assert [(w["index"], w["kind"], w["writes"]) for w in snap["index_writes"]] == [("things.byOwner", "enter", 3)]


def test_a_failed_condition_still_costs_the_existing_item(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    db.put_item(TableName=table, Item=item("c1"))
    stats(url, reset=True)
    with pytest.raises(ClientError):
        db.put_item(TableName=table, Item=item("c1", total=100), ConditionExpression="attribute_not_exists(pk)")
    snap = stats(url)
    assert total(snap, "PutItem", "requests") == 1
    assert total(snap, "PutItem", "condition_failed") == 1
    assert total(snap, "PutItem", "wru") == 2  # the 1,500-byte item that is there
    assert total(snap, "PutItem", "index_writes") == 0


def test_an_update_is_charged_on_the_larger_version_and_rewrites_the_index(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    db.put_item(TableName=table, Item=item("u1", owner="o1"))
    stats(url, reset=True)
    db.update_item(TableName=table, Key={"pk": {"S": "u1"}}, UpdateExpression="SET n = :n",
                   ExpressionAttributeValues={":n": {"N": "1"}})
    db.update_item(TableName=table, Key={"pk": {"S": "u1"}}, UpdateExpression="SET #o = :o",
                   ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":o": {"S": "o2"}})
    snap = stats(url)
    assert total(snap, "UpdateItem", "wru") == 2 + 2
    kinds = sorted((w["kind"], w["writes"]) for w in snap["index_writes"])
    assert kinds == [("rekey", 2), ("update", 1)]


def test_transactions_cost_two_units_per_kb_per_item_and_count_cancellations(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    stats(url, reset=True)
    db.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": item("t1")}},
                                           {"Put": {"TableName": table, "Item": item("t2")}}])
    with pytest.raises(ClientError):
        db.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": item("t3")}},
            {"Put": {"TableName": table, "Item": item("t1"), "ConditionExpression": "attribute_not_exists(pk)"}}])
    snap = stats(url)
    assert total(snap, "TransactWriteItems", "requests") == 2
    assert total(snap, "TransactWriteItems", "cancelled_requests") == 1
    # committed: 2 items x 4; cancelled: t3 absent (2), t1 present 1,500 bytes (4)
    assert total(snap, "TransactWriteItems", "wru") == 8 + 2 + 4
    assert db.get_item(TableName=table, Key={"pk": {"S": "t3"}}).get("Item") is None


def test_reads_cost_four_kb_units_halved_when_eventually_consistent(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    for i in range(4):
        db.put_item(TableName=table, Item=item(f"q{i}", owner="reader"))
    stats(url, reset=True)
    db.get_item(TableName=table, Key={"pk": {"S": "q0"}}, ConsistentRead=True)
    db.get_item(TableName=table, Key={"pk": {"S": "q0"}})
    db.get_item(TableName=table, Key={"pk": {"S": "q0"}}, ProjectionExpression="pk")  # still the whole item
    db.get_item(TableName=table, Key={"pk": {"S": "missing"}}, ConsistentRead=True)
    # 4 x 1,500 bytes = 6,000 bytes -> 2 units, halved on the (eventually consistent) index
    db.query(TableName=table, IndexName="byOwner", KeyConditionExpression="#o = :o",
             ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":o": {"S": "reader"}})
    # a filter that drops everything still pays for what was read
    db.query(TableName=table, IndexName="byOwner", KeyConditionExpression="#o = :o",
             FilterExpression="pk = :none", ExpressionAttributeNames={"#o": "owner"},
             ExpressionAttributeValues={":o": {"S": "reader"}, ":none": {"S": "nothing"}})
    snap = stats(url)
    assert total(snap, "GetItem", "requests") == 4
    assert total(snap, "GetItem", "rru") == 1 + 0.5 + 0.5 + 1
    assert total(snap, "Query", "rru") == 1 + 1


def test_sqs_requests_are_counted_by_action_and_untagged_polls_are_event_source(endpoints):
    _, url = endpoints
    sqs = client("sqs", url)
    queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    stats(url, reset=True)
    for i in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=f"m{i}")
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                       for i, m in enumerate(got)])
    snap = stats(url)
    assert total(snap, "SendMessage", "requests") == 3
    assert {r["phase"] for r in rows(snap, "SendMessage")} == {"untagged"}
    assert {r["phase"] for r in rows(snap, "ReceiveMessage")} == {"event-source"}
    assert total(snap, "ReceiveMessage", "messages") == len(got)
    assert total(snap, "DeleteMessageBatch", "requests") == 1


def test_the_phase_header_splits_requests_and_is_not_forwarded(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)

    def tag(request, **kwargs):
        request.headers[counting.PHASE_HEADER] = "message:send"

    db.meta.events.register("before-send.dynamodb.GetItem", tag)
    stats(url, reset=True)
    db.get_item(TableName=table, Key={"pk": {"S": "p0"}}, ConsistentRead=True)
    snap = stats(url)
    assert [(r["operation"], r["phase"]) for r in snap["requests"]] == [("GetItem", "message:send")]


def test_each_request_reports_its_time_in_the_proxy_apart_from_its_time_in_aws(endpoints, table):
    _, url = endpoints
    db = client("dynamodb", url)
    background = {"on": False}

    def tag(request, **kwargs):
        request.headers[counting.PHASE_HEADER] = "message:send"
        if background["on"]:
            request.headers[counting.BACKGROUND_HEADER] = "1"

    db.meta.events.register("before-send.dynamodb.*", tag)
    stats(url, reset=True)
    db.put_item(TableName=table, Item=item("timed"))  # a write: accounting reads around it
    background["on"] = True  # as a handler's own thread would
    db.get_item(TableName=table, Key={"pk": {"S": "timed"}})
    snap = stats(url)
    [put] = rows(snap, "PutItem")
    [get] = rows(snap, "GetItem")
    assert put["overhead_ms"] > 0 and put["upstream_ms"] > 0
    assert "background_overhead_ms" not in put
    # the handler was not waiting for it: kept apart, never subtracted
    assert get["background_overhead_ms"] > 0 and get["background_upstream_ms"] > 0
    assert "overhead_ms" not in get
    assert counting.make_handler(counting.Proxy(url)).disable_nagle_algorithm  # TCP_NODELAY


def test_errors_sent_count_pushed_errors_and_errors_answered_by_the_route():
    from bench.perf import errors_sent

    cloud = {"push_types": {"message": 5.0, "error:rate_limited": 2.0, "gateway error": 1.0},
             "route_response_types": {"accepted": 9.0, "error:rate_limited": 3.0, "error:not_found": 1.0}}
    assert errors_sent(cloud) == {"error:not_found": 1, "error:rate_limited": 5, "gateway error": 1}
    assert errors_sent({"push_types": {"accepted": 1.0}}) == {}  # an older report: no route responses
