"""The SQS event source against moto in process: retries, missing queues, FIFO order, long polls, stop."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Queue

from infra.local import moto_patches
from infra.local.cli import build_parser
from infra.local.handlers import LambdaFunction
from infra.local.sqs import MAX_WAIT_TIME_S, SqsPoller, SqsSourceConfig, queue_name_of


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


def start_poller(config: SqsSourceConfig, client_factory: Any = None) -> SqsPoller:
    factory = client_factory or (lambda: boto3.client("sqs", region_name="us-east-1"))
    poller = SqsPoller(factory, config, "us-east-1")
    poller.start()
    return poller


def in_moto_long_poll(poller: SqsPoller) -> bool:
    """True while the poller's thread waits inside moto's ReceiveMessage (moto runs in process here)."""
    frame = sys._current_frames().get(poller._thread.ident)
    while frame is not None:
        if frame.f_code is moto_patches._wait_for_messages.__code__:
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def paced_long_polls(monkeypatch):
    """The embedded moto server's long poll (``pace_fifo_long_polls``), in this process for this test."""
    monkeypatch.setattr(Queue, "wait_for_messages", Queue.wait_for_messages)  # restored after the test
    moto_patches.pace_fifo_long_polls()


def visible_count(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


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


def test_the_long_poll_is_20_s_like_lambda_and_configurable():
    function = LambdaFunction("f", lambda e, c: None)
    assert SqsSourceConfig(function, "q").wait_time_s == MAX_WAIT_TIME_S == 20
    assert SqsSourceConfig(function, "q", wait_time_s=0).wait_time_s == 0
    for wrong in (-1, 21, 1.5):
        with pytest.raises(ValueError, match="from 0 to 20"):
            SqsSourceConfig(function, "q", wait_time_s=wrong)


def test_sqs_wait_time_flag_and_variable(capsys):
    assert build_parser({}).parse_args(["run"]).sqs_wait_time == 20
    assert build_parser({}).parse_args(["run", "--sqs-wait-time", "0"]).sqs_wait_time == 0
    assert build_parser({"ONCECHAT_LOCAL_SQS_WAIT_TIME": "5"}).parse_args(["run"]).sqs_wait_time == 5
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["run", "--sqs-wait-time", "21"])
    assert "--sqs-wait-time: must be a whole number of seconds from 0 to 20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser({"ONCECHAT_LOCAL_SQS_WAIT_TIME": "-1"})
    assert "ONCECHAT_LOCAL_SQS_WAIT_TIME: must be a whole number" in capsys.readouterr().err


def test_a_message_sent_during_a_long_poll_is_handed_over_by_that_poll(sqs, paced_long_polls):
    url = sqs.create_queue(QueueName="idle")["QueueUrl"]
    receives: list[str] = []
    receives_when_invoked: list[int] = []
    handled = threading.Event()

    def handler(event, context):
        receives_when_invoked.append(len(receives))
        handled.set()

    def client() -> Any:
        made = boto3.client("sqs", region_name="us-east-1")
        made.meta.events.register("before-call.sqs.ReceiveMessage", lambda **kw: receives.append("receive"))
        return made

    poller = start_poller(SqsSourceConfig(LambdaFunction("f", handler), "idle"), client)
    try:
        wait_until(lambda: in_moto_long_poll(poller))  # mid-wait in its 20 s receive
        sqs.send_message(QueueUrl=url, MessageBody="wake up")
        # Well before the 20 s poll would end: the added message wakes it.
        assert handled.wait(MAX_WAIT_TIME_S / 2)
        assert receives_when_invoked == [1]  # handed over by the receive that was waiting
        wait_until(lambda: visible_count(sqs, url) == 0)
    finally:
        poller.stop()
        sqs.send_message(QueueUrl=url, MessageBody="ends the pending poll")
        wait_until(lambda: not poller.is_alive())


def test_stop_does_not_wait_for_a_pending_long_poll_and_loses_nothing(sqs, paced_long_polls):
    url = sqs.create_queue(QueueName="empty", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    invoked: list[Any] = []
    poller = start_poller(SqsSourceConfig(LambdaFunction("f", lambda e, c: invoked.append(e)), "empty"))
    wait_until(lambda: in_moto_long_poll(poller))
    poller.stop(timeout_s=3 * MAX_WAIT_TIME_S)  # a stop() that waited for the receive would outlast it
    # stop() returned while the 20 s receive is still pending in moto.
    assert poller.is_alive() and poller.waiting and in_moto_long_poll(poller)

    sqs.send_message(QueueUrl=url, MessageBody="after stop")
    # The pending receive takes the message; the stopped poller must not
    # invoke the function, and makes the message visible again at once
    # rather than after the queue's 600 s visibility timeout.
    wait_until(lambda: not poller.is_alive())
    assert invoked == []
    left = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"]
    assert [m["Body"] for m in left] == ["after stop"]
    assert left[0]["Attributes"]["ApproximateReceiveCount"] == "2"  # the poller's receive, then ours


def test_stop_waits_for_an_invocation_in_progress(sqs):
    url = sqs.create_queue(QueueName="busy")["QueueUrl"]
    entered, release = threading.Event(), threading.Event()

    def handler(event, context):
        entered.set()
        assert release.wait(60)

    poller = start_poller(SqsSourceConfig(LambdaFunction("f", handler), "busy"))
    stopper = threading.Thread(target=poller.stop)
    try:
        sqs.send_message(QueueUrl=url, MessageBody="work")
        assert entered.wait(60)
        stopper.start()
        wait_until(lambda: poller._stop.is_set())
        stopper.join(0.5)  # time enough for a stop() that would not wait to return
        assert stopper.is_alive() and poller.is_alive()  # stop() is waiting for the invocation
        release.set()
        stopper.join(60)
        assert not stopper.is_alive()
        assert not poller.is_alive()  # it ended after the invocation, without another receive
        # The batch was processed and deleted as usual.
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
    finally:
        release.set()
        poller.stop()
