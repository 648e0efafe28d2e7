"""The outbox: getting every committed message onto the delivery queue at least once."""

from __future__ import annotations

import logging

from chalicelib import core
from chalicelib.errors import (
    OnceChatError,
)
from chalicelib.models import (
    MessageRecord,
)
from chalicelib.ports import Delivery
from chalicelib.services.base import ServiceBase

log = logging.getLogger("oncechat")

#: The window the very first sweep of a deployment looks back over, past the grace.
SWEEP_FIRST_WINDOW_S = 300


class OutboxMixin(ServiceBase):
    """Enqueue after commit; the sweeper for what a dead handler left behind."""

    def _enqueue(self, delivery: Delivery) -> None:
        """Enqueue a committed message; nothing records that it was.

        Stored but not queued (this raises, or the handler dies first): the
        client's retry (same messageId) is answered as a duplicate and
        enqueues again; if the client never returns, the sweeper enqueues it.
        """
        message = delivery.message
        try:
            self.queue.enqueue(delivery)
        except OnceChatError as err:
            log.error("enqueue of %s#%d failed: %s", message.conversation_id, message.seq,
                      err.message)
            raise OnceChatError("message stored but not yet queued; retry with the same messageId",
                                message_id=message.message_id) from err

    def sweep(self) -> int:
        """Enqueue again every message committed in the last window; return how many.

        Nothing marks a message enqueued (that cost a write and two index
        writes per message). Instead the sweeper re-enqueues, blindly, every
        message committed between its watermark and ``now - grace``:

        - a message whose handler died between commit and enqueue, for a
          sender who never retries, is enqueued within grace + one schedule
          period (``sweep_grace_seconds`` is longer than any send takes, so
          a living handler has enqueued it by then);
        - every other message of the window was enqueued by its handler a
          minute or two before, well inside SQS FIFO's 5-minute
          deduplication window: SQS accepts and drops the copy (same
          deduplication id), so it costs a tenth of a batch request and no
          delivery. If a copy does get through (a sweep that ran late),
          recipients drop it by seq.

        The watermark moves only after the window was enqueued, so a sweep
        that fails is repeated by the next one.
        """
        now_s = self.clock() // 1000
        end = now_s - self.config.sweep_grace_seconds
        mark = self.storage.get_sweep_mark()
        start = end - SWEEP_FIRST_WINDOW_S if mark is None else mark
        due: list[MessageRecord] = []
        if start < end:
            due = self.storage.committed_between(start, end, self.config.sweep_batch)
            if len(due) == self.config.sweep_batch:
                # A full batch: stop at its last second (resent next time, harmlessly).
                end = max(start + 1, core.epoch_ms(due[-1].sent_at) // 1000)
            if due:
                self.queue.enqueue_many([Delivery(m, None) for m in due])
            self.storage.set_sweep_mark(end)
        self.reconcile_presence()
        # The queue runs on every trigger (a conversation waits, an agent comes
        # online or frees a place); a trigger lost with a crashed handler is
        # made up for here, within one schedule period.
        assigned = self.assign_waiting()
        if assigned:
            log.warning("sweeper assigned %d waiting conversation(s)", assigned)
        return len(due)

    def unswept_before(self, before: int, limit: int) -> list[MessageRecord]:
        """Up to ``limit`` messages committed before ``before`` (epoch s) that no sweep has covered.

        Empty while sweeps succeed (the watermark is at ``now - grace``); it
        grows when they fail, which is what the sweep-bound alarm watches.
        Costs no request unless the watermark lags behind ``before``.
        """
        mark = self.storage.get_sweep_mark()
        if mark is None or mark >= before:
            return []
        return self.storage.committed_between(mark, before, limit)
