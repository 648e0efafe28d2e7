"""The SQS event source against moto in process: retries, missing queues, FIFO order."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local.handlers import LambdaFunction
from infra.local.sqs import SqsPoller, SqsSourceConfig, queue_name_of


@pytest.fixture
def sqs(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def start_poller(config: SqsSourceConfig) -> SqsPoller:
    poller = SqsPoller(lambda: boto3.client("sqs", region_name="us-east-1"), config, "us-east-1")
    poller.start()
    return poller


def wait_until(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_queue_name_from_name_or_arn():
    assert queue_name_of("jobs", None) == "jobs"
    assert queue_name_of(None, "arn:aws:sqs:us-east-1:123456789012:jobs.fifo") == "jobs.fifo"


def test_retry_delay_makes_a_failed_batch_visible_again_at_once(sqs):
    url = sqs.create_queue(QueueName="slow", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    attempts: list[str] = []

    def handler(event, context):
        record = event["Records"][0]
        attempts.append(record["attributes"]["ApproximateReceiveCount"])
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    poller = start_poller(SqsSourceConfig(LambdaFunction("f", handler), "slow", retry_delay_s=0))
    try:
        sqs.send_message(QueueUrl=url, MessageBody="hello")
        wait_until(lambda: len(attempts) == 2, timeout_s=25)  # before the 30 s visibility timeout
    finally:
        poller.stop()
    assert attempts == ["1", "2"]
    wait_until(lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessages"] == "0")


def test_poller_waits_for_a_queue_created_later(sqs, caplog):
    seen = threading.Event()
    poller = start_poller(SqsSourceConfig(LambdaFunction("f", lambda e, c: seen.set()), "late"))
    try:
        wait_until(lambda: "queue late of f is not available" in caplog.text)
        url = sqs.create_queue(QueueName="late")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="finally")
        assert seen.wait(60)
    finally:
        poller.stop()


def test_fifo_order_is_kept_per_group(sqs):
    url = sqs.create_queue(
        QueueName="ordered.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )["QueueUrl"]
    received: list[tuple[str, int]] = []
    done = threading.Event()

    def handler(event, context):
        for record in event["Records"]:
            body = json.loads(record["body"])
            assert record["attributes"]["MessageGroupId"] == body["group"]
            assert record["attributes"]["SequenceNumber"]
            received.append((body["group"], body["n"]))
        if len(received) == 20:
            done.set()

    for n in range(10):
        for group in ("a", "b"):
            # moto sets SequenceNumber only for an explicit deduplication id.
            sqs.send_message(
                QueueUrl=url,
                MessageBody=json.dumps({"group": group, "n": n}),
                MessageGroupId=group,
                MessageDeduplicationId=f"{group}-{n}",
            )
    poller = start_poller(SqsSourceConfig(LambdaFunction("f", handler), "ordered.fifo", batch_size=3))
    try:
        assert done.wait(60)
    finally:
        poller.stop()
    for group in ("a", "b"):
        assert [n for g, n in received if g == group] == list(range(10))
