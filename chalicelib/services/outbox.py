"""The outbox: getting every committed message onto the delivery queue at least once."""

from __future__ import annotations

import logging

from chalicelib.errors import (
    OnceChatError,
)
from chalicelib.models import (
    MessageRecord,
)
from chalicelib.ports import Delivery
from chalicelib.services.base import ServiceBase

log = logging.getLogger("oncechat")


class OutboxMixin(ServiceBase):
    """Enqueue after commit; the sweeper for what a dead handler left behind."""

    def _enqueue(self, delivery: Delivery) -> None:
        message = delivery.message
        try:
            self.queue.enqueue(delivery)
        except OnceChatError as err:
            # Stored but maybe not queued: the client's retry (same
            # messageId) is answered as a duplicate and enqueues again; if
            # the client never returns, the sweeper enqueues it.
            log.error("enqueue of %s#%d failed: %s", message.conversation_id, message.seq,
                      err.message)
            raise OnceChatError("message stored but not yet queued; retry with the same messageId",
                                message_id=message.message_id) from err
        self._mark_enqueued(message)

    def _mark_enqueued(self, message: MessageRecord) -> None:
        try:
            self.storage.mark_enqueued(message.conversation_id, message.seq)
        except OnceChatError as err:  # the sweeper enqueues it once more: harmless
            log.warning("could not mark %s#%d enqueued: %s", message.conversation_id,
                        message.seq, err.message)

    def sweep(self) -> int:
        """Enqueue messages committed but never marked enqueued; return how many.

        A handler that died between its commit and its enqueue, for a
        sender who never retries, leaves its message pending; after
        ``sweep_grace_seconds`` (longer than any send takes) the sweeper
        enqueues it. Run on a schedule, this bounds the delay of such a
        message to grace + schedule period + delivery.
        """
        due = self.storage.pending_messages(
            self.clock() // 1000 - self.config.sweep_grace_seconds, self.config.sweep_batch)
        for message in due:
            log.warning("sweeper enqueues %s#%d", message.conversation_id, message.seq)
            self.queue.enqueue(Delivery(message, None))
            self._mark_enqueued(message)
        self.reconcile_presence()
        # The queue runs on every trigger (a conversation waits, an agent comes
        # online or frees a place); a trigger lost with a crashed handler is
        # made up for here, within one schedule period.
        assigned = self.assign_waiting()
        if assigned:
            log.warning("sweeper assigned %d waiting conversation(s)", assigned)
        return len(due)
