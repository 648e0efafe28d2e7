"""The two outbound ports besides storage: the delivery queue and the push channel.

Each has an AWS adapter (SQS FIFO, API Gateway Management API through
Chalice's ``app.websocket_api``) and an in-memory one for the core tests.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.core import deduplication_id
from chalicelib.errors import ConnectionGone, OnceChatError
from chalicelib.models import ConnectionRecord, MessageRecord

if TYPE_CHECKING:  # stubs only: Lambda has no stub packages at run time
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef


@dataclass(frozen=True)
class Delivery:
    """What travels through the queue: a stored message, the connection it came from,
    and, when the enqueuer knew them, the users to push it to.

    ``recipients`` are the conversation's participants when the message was
    committed (the send authorised the sender against them), so the
    consumer need not read the conversation again for every message. A
    participant who joins later (a transfer) gets the message by resume.
    None (a retried send, which only knows the message) means: read them.
    """

    message: MessageRecord
    origin_connection_id: str | None
    recipients: tuple[str, ...] | None = None
    #: The sending handler pushed the message to every connection it found
    #: (its fast path) but those in ``retry``: the consumer pushes to those
    #: only, and reads nothing. A connection opened since then resumes on
    #: its own (the message was stored before the fast path read).
    fast: bool = False
    retry: tuple[ConnectionRecord, ...] = ()

    def to_json(self) -> str:
        """The SQS message body."""
        body: dict[str, Any] = {"v": 1, "message": self.message.wire(),
                                "origin": self.origin_connection_id}
        if self.recipients is not None:
            body["to"] = list(self.recipients)
        if self.fast:
            body["fast"] = True
            body["retry"] = [conn.wire() for conn in self.retry]
        return json.dumps(body)

    @classmethod
    def from_json(cls, body: str) -> Delivery:
        """Parse an SQS message body written by ``to_json``."""
        data = json.loads(body)
        to = data.get("to")
        return cls(MessageRecord.model_validate(data["message"]), data.get("origin"),
                   tuple(to) if isinstance(to, list) else None, data.get("fast") is True,
                   tuple(ConnectionRecord.model_validate(c) for c in data.get("retry") or ()))


class DeliveryQueue(Protocol):
    """Where stored messages go to be pushed to recipients."""

    def enqueue(self, delivery: Delivery) -> None:
        """Enqueue a delivery (FIFO per conversation); raise on failure."""

    def enqueue_many(self, deliveries: list[Delivery]) -> None:
        """Enqueue deliveries in as few requests as the queue allows; raise if any failed."""


class Pusher(Protocol):
    """Sends a frame to one WebSocket connection."""

    def push(self, connection_id: str, domain_name: str, stage: str, data: str) -> None:
        """Post ``data``; raise ConnectionGone on 410 (the frame may still have arrived)."""

    def alive(self, connection_id: str, domain_name: str, stage: str) -> bool:
        """False only when the gateway says the connection is gone (410); True otherwise."""


class SqsDeliveryQueue:
    """SQS FIFO: group = conversation, deduplication id = the message's identity."""

    def __init__(self, queue_name: str, client: SQSClient | None = None) -> None:
        self._queue_name = queue_name
        self._client = client
        self._url: str | None = None
        self._lock = threading.Lock()

    def _resolve(self) -> tuple[SQSClient, str]:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client("sqs")
            if self._url is None:
                self._url = self._client.get_queue_url(QueueName=self._queue_name)["QueueUrl"]
            return self._client, self._url

    def enqueue(self, delivery: Delivery) -> None:
        client, url = self._resolve()
        msg = delivery.message
        try:
            client.send_message(
                QueueUrl=url,
                MessageBody=delivery.to_json(),
                MessageGroupId=msg.conversation_id,
                MessageDeduplicationId=deduplication_id(msg.conversation_id, msg.seq),
            )
        except Exception as exc:  # botocore errors: wrapped once, callers catch one type
            raise OnceChatError(f"enqueue failed: {exc}") from exc

    def enqueue_many(self, deliveries: list[Delivery]) -> None:
        client, url = self._resolve()
        failed = 0
        for start in range(0, len(deliveries), 10):  # SendMessageBatch takes 10 entries
            entries: list[SendMessageBatchRequestEntryTypeDef] = [{
                "Id": str(i),
                "MessageBody": d.to_json(),
                "MessageGroupId": d.message.conversation_id,
                "MessageDeduplicationId": deduplication_id(d.message.conversation_id, d.message.seq),
            } for i, d in enumerate(deliveries[start:start + 10])]
            try:
                answer = client.send_message_batch(QueueUrl=url, Entries=entries)
            except Exception as exc:
                raise OnceChatError(f"enqueue failed: {exc}") from exc
            failed += len(answer.get("Failed") or [])
        if failed:
            raise OnceChatError(f"enqueue failed for {failed} message(s)")


class ChalicePusher:
    """Pushes through ``app.websocket_api`` (the API Gateway Management API).

    Chalice keeps the first endpoint it is configured with; WebSocket
    handlers configure it from the event, the SQS consumer from the
    domain and stage recorded with each connection at ``$connect``.
    """

    def __init__(self, websocket_api: Any) -> None:
        self._api = websocket_api

    def push(self, connection_id: str, domain_name: str, stage: str, data: str) -> None:
        from chalice.app import WebsocketDisconnectedError

        self._api.configure(domain_name, stage)
        try:
            self._api.send(connection_id, data)
        except WebsocketDisconnectedError as exc:
            raise ConnectionGone(connection_id) from exc

    def alive(self, connection_id: str, domain_name: str, stage: str) -> bool:
        from chalice.app import WebsocketDisconnectedError

        self._api.configure(domain_name, stage)
        try:
            self._api.info(connection_id)
        except WebsocketDisconnectedError:
            return False
        except Exception:  # unknown: never take a connection for gone on a guess
            return True
        return True


@dataclass
class MemoryQueue:
    """An in-memory delivery queue (records what was enqueued)."""

    items: list[Delivery] = field(default_factory=list)
    fail_next: int = 0

    def enqueue(self, delivery: Delivery) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OnceChatError("enqueue failed (injected)")
        self.items.append(delivery)

    def enqueue_many(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.enqueue(delivery)

    def drain(self) -> list[Delivery]:
        """Take everything enqueued so far."""
        out, self.items = self.items, []
        return out


@dataclass
class MemoryPusher:
    """An in-memory push channel: frames per connection; listed connections answer 410."""

    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)

    def push(self, connection_id: str, domain_name: str, stage: str, data: str) -> None:
        if connection_id in self.gone:
            raise ConnectionGone(connection_id)
        if connection_id in self.failing:
            raise OnceChatError(f"push to {connection_id} failed")
        self.sent.setdefault(connection_id, []).append(json.loads(data))

    def alive(self, connection_id: str, domain_name: str, stage: str) -> bool:
        return connection_id not in self.gone

    def frames(self, connection_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        """Frames pushed to a connection, optionally of one type."""
        frames = self.sent.get(connection_id, [])
        return [f for f in frames if type_ is None or f.get("type") == type_]
