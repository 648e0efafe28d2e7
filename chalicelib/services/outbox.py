"""The outbox: the delivery queue for what a push could not deliver."""

from __future__ import annotations

import logging

from chalicelib.errors import OnceChatError
from chalicelib.models import Conversation, MessageRecord
from chalicelib.ports import Delivery, DeliveryQueue

log = logging.getLogger("oncechat")


class Outbox:
    """Enqueue deliveries of committed messages (SQS FIFO: group = conversation, dedup = seq)."""

    def __init__(self, queue: DeliveryQueue) -> None:
        self.queue = queue

    def enqueue(self, delivery: Delivery) -> None:
        """Enqueue a delivery of a committed message; nothing records that it was.

        Stored but not queued (this raises, or the handler dies first): the
        client's retry (same messageId) is answered as a duplicate and
        enqueues again; if the client never returns, the sweeper finds the
        message unacknowledged and enqueues it.
        """
        message = delivery.message
        try:
            self.queue.enqueue(delivery)
        except OnceChatError as err:
            log.error("enqueue of %s#%d failed: %s", message.conversation_id, message.seq,
                      err.message)
            raise OnceChatError("message stored but not yet queued; retry with the same messageId",
                                message_id=message.message_id) from err

    def enqueue_many(self, deliveries: list[Delivery]) -> None:
        """Enqueue deliveries in as few requests as the queue allows; raise if any failed."""
        self.queue.enqueue_many(deliveries)

    def announce(self, message: MessageRecord) -> None:
        """Enqueue a lifecycle event's system message; best effort (stored: the sweeper has it)."""
        try:
            self.queue.enqueue(Delivery(message, None))
        except OnceChatError as err:
            log.info("event %s#%d not enqueued: %s", message.conversation_id, message.seq, err.message)

    def void(self, conv: Conversation, void: MessageRecord) -> None:
        """Deliver a void just made (best effort: resume also has it).

        Recipients that got later seqs are waiting for this one; the push
        spares them a resume.
        """
        try:
            self.queue.enqueue(Delivery(void, None, tuple(conv.participant_ids())))
        except OnceChatError as err:
            log.info("void %s#%d not enqueued: %s", conv.conversation_id, void.seq, err.message)
