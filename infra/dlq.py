"""List and redrive the delivery dead-letter queue: ``python -m infra.dlq list|redrive``.

Deliveries land in the DLQ after the queue's ``maxReceiveCount`` failed
receives (a poison message, or a recipient endpoint failing for minutes).
Nothing there is lost: every message is also stored in DynamoDB and
clients can resume it; redriving puts the deliveries back on the queue so
live recipients get them without resuming.

Redrive sends each message back to the delivery queue in its original
message group, in the order received (FIFO per conversation), with a new
deduplication id (SQS would drop a reused id for 5 minutes), and deletes it
from the DLQ only after the send succeeded. It works against AWS, the local
cloud or LocalStack: boto3 reads ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3


def queue_names(stage: str) -> tuple[str, str]:
    """The delivery queue and its DLQ of a stage (as infra/template.yaml names them)."""
    return f"oncechat-{stage}-delivery.fifo", f"oncechat-{stage}-delivery-dlq.fifo"


def _receive(sqs: Any, url: str, visibility: int, limit: int) -> Iterator[dict[str, Any]]:
    seen = 0
    empty = 0
    while seen < limit and empty < 2:  # moto and SQS may return fewer than are there: ask twice
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, limit - seen),
                                  VisibilityTimeout=visibility, WaitTimeSeconds=1,
                                  AttributeNames=["All"])
        messages = got.get("Messages", [])
        empty = 0 if messages else empty + 1
        for m in messages:
            seen += 1
            yield m


def list_dlq(sqs: Any, dlq_url: str, limit: int) -> list[dict[str, Any]]:
    """What is in the DLQ (received with visibility 0, so it stays there)."""
    out = []
    for m in _receive(sqs, dlq_url, 0, limit):
        attrs = m.get("Attributes", {})
        try:
            body: Any = json.loads(m["Body"])
            message = body.get("message", {}) if isinstance(body, dict) else {}
        except ValueError:
            message = {}
        out.append({
            "messageId": m["MessageId"],
            "group": attrs.get("MessageGroupId"),
            "receiveCount": int(attrs.get("ApproximateReceiveCount", "0")),
            "conversationId": message.get("conversationId"),
            "seq": message.get("seq"),
            "body": m["Body"] if not message else None,
        })
        if len({o["messageId"] for o in out}) < len(out):  # visibility 0: we came round again
            out.pop()
            break
    return out


def redrive(sqs: Any, dlq_url: str, queue_url: str, limit: int) -> int:
    """Move up to ``limit`` messages from the DLQ back to the delivery queue; return how many."""
    moved = 0
    for m in _receive(sqs, dlq_url, 60, limit):
        attrs = m.get("Attributes", {})
        sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=m["Body"],
            MessageGroupId=attrs.get("MessageGroupId", "redrive"),
            MessageDeduplicationId=f"redrive-{uuid.uuid4().hex}",
        )
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=m["ReceiptHandle"])
        moved += 1
    return moved


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m infra.dlq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "redrive"))
    parser.add_argument("--stage", default="local")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--region", default=None)
    args = parser.parse_args(argv)
    sqs = boto3.session.Session(region_name=args.region).client("sqs")
    queue, dlq = queue_names(args.stage)
    dlq_url = sqs.get_queue_url(QueueName=dlq)["QueueUrl"]
    if args.command == "list":
        items = list_dlq(sqs, dlq_url, args.limit)
        for item in items:
            print(json.dumps(item))
        print(f"{len(items)} message(s) in {dlq}", file=sys.stderr)
    else:
        queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        print(f"redrove {redrive(sqs, dlq_url, queue_url, args.limit)} message(s) from {dlq} to {queue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
