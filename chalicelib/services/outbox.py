"""The outbox: the delivery queue for what the fast path could not push, and the sweeper."""

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

    def sweep(self) -> int:
        """Enqueue every message of the last window that a connected recipient has not acked; return how many.

        Nothing marks a message pushed or enqueued (that would cost a write
        and index writes per message). The sending handler pushes at once
        and queues only what it could not push; the sweeper covers a handler
        that died between commit and push, for a sender who never retries.
        It reads the window of messages committed between its watermark and
        ``now - grace`` (``sweep_grace_seconds`` is longer than any send
        takes, so a living handler has pushed by then), and each
        recipient's ack cursor and connections, one batch read each:

        - a recipient who acked the message has it;
        - a recipient with no connection gets it by resume when it connects;
        - every other recipient gets it through the queue (group = the
          conversation, deduplication id = the message): pushed within
          grace + one schedule period. Clients ack within seconds
          (``ack_delay``), so a message pushed but not yet acked is rare;
          if one is pushed again, recipients drop the copy by seq.

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
            undelivered = self._unacked(due)
            if undelivered:
                self.queue.enqueue_many(undelivered)
            self.storage.set_sweep_mark(end)
        self.reconcile_presence()
        # The queue runs on every trigger (a conversation waits, an agent comes
        # online or frees a place); a trigger lost with a crashed handler is
        # made up for here, within one schedule period.
        assigned = self.assign_waiting()
        if assigned:
            log.warning("sweeper assigned %d waiting conversation(s)", assigned)
        return len(due)

    def _unacked(self, messages: list[MessageRecord]) -> list[Delivery]:
        """Deliveries of ``messages`` to the participants that have connections and have not acked them.

        Three batch reads however many messages: their conversations, the
        participants' cursors and the participants' connections.
        """
        if not messages:
            return []
        convs = {c.conversation_id: c for c in self.storage.conversations_at(
            list(dict.fromkeys(m.conversation_id for m in messages)))}
        keys = [(user, cid) for cid, conv in convs.items() for user in conv.participant_ids()]
        acked = {(p.user_id, p.conversation_id): p.ack_seq for p in self.storage.participants_at(keys)}
        wanting: list[tuple[MessageRecord, list[str]]] = []
        for m in messages:
            conv = convs.get(m.conversation_id)
            if conv is None:
                continue
            users = [u for u in conv.participant_ids()
                     if acked.get((u, m.conversation_id), 0) < m.seq]
            if users:
                wanting.append((m, users))
        if not wanting:
            return []
        connected = self.storage.connections_of_users(
            list(dict.fromkeys(u for _, users in wanting for u in users)))
        deliveries = []
        for m, users in wanting:
            reachable = tuple(u for u in users if connected.get(u))
            if reachable:
                deliveries.append(Delivery(m, None, reachable))
        return deliveries

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
