"""The sweeper: what a dead handler left behind reaches its recipients within a bound."""

from __future__ import annotations

import logging

from chalicelib import core
from chalicelib.config import Config
from chalicelib.models import MessageRecord
from chalicelib.ports import Delivery
from chalicelib.services.common import Clock
from chalicelib.services.desk import Desk
from chalicelib.services.outbox import Outbox
from chalicelib.services.presence import Presence
from chalicelib.storage.base import SweeperStore

log = logging.getLogger("oncechat")

#: The window the very first sweep of a deployment looks back over, past the grace.
SWEEP_FIRST_WINDOW_S = 300


class Sweeper:
    """Enqueue what connected participants have not acked; keep presence and the queue moving."""

    def __init__(self, config: Config, storage: SweeperStore, outbox: Outbox, presence: Presence,
                 desk: Desk, clock: Clock) -> None:
        self.config = config
        self.storage = storage
        self.outbox = outbox
        self.presence = presence
        self.desk = desk
        self.clock = clock

    def sweep(self) -> int:
        """Enqueue what connected participants have not acked in the conversations active lately; return how many.

        Nothing marks a message pushed or enqueued, and nothing indexes it
        (each would cost a write per message). The sending handler pushes
        at once and queues only what it could not push; the sweeper covers
        a handler that died between commit and push, for a sender who never
        retries. It reads the conversations that took a seq since its
        watermark (``active_conversations``: one index entry per
        conversation, moved at most once a minute), then their
        participants' ack cursors and connections, one batch read each, and
        finally, where a connected participant lags, the messages it lacks:

        - a participant who acked a message has it;
        - a participant with no connection gets it by resume when it connects;
        - every other participant gets each message of the window it lacks
          through the queue (group = the conversation, deduplication id =
          the message): pushed within grace + one schedule period. The
          window is the messages taken between the watermark and
          ``now - grace`` (``sweep_grace_seconds`` is longer than any send
          takes, so a living handler has pushed by then). Clients ack within
          seconds (``ack_delay``), so a message pushed but not yet acked is
          rare; if one is pushed again, recipients drop the copy by seq.

        The watermark moves only after the window was enqueued, so a sweep
        that fails is repeated by the next one.
        """
        now_s = self.clock() // 1000
        grace = self.config.sweep_grace_seconds
        end = now_s - grace
        mark = self.storage.get_sweep_mark()
        start = end - SWEEP_FIRST_WINDOW_S if mark is None else mark
        undelivered: list[Delivery] = []
        if start < end:
            # The conversations active from one grace before the window: a
            # conversation whose activity was stamped by a handler whose
            # clock is a little behind ours is still read.
            active = self.storage.active_conversations(start - grace)
            undelivered = self._unacked(active, start * 1000, end * 1000)
            if undelivered:
                self.outbox.enqueue_many(undelivered)
            self.storage.set_sweep_mark(end)
        agents = self.storage.list_agents()
        self.presence.reconcile_presence(agents)
        # Nothing stays with an agent who left: away, or offline past the grace.
        requeued = self.desk.requeue_gone(agents)
        if requeued:
            log.warning("sweeper requeued %d conversation(s) of agents who left", requeued)
        # The queue runs on every trigger (a conversation waits, an agent comes
        # online or frees a place); a trigger lost with a crashed handler is
        # made up for here, within one schedule period.
        assigned = self.desk.assign_waiting()
        if assigned:
            log.warning("sweeper assigned %d waiting conversation(s)", assigned)
        return len(undelivered)

    def _unacked(self, conversation_ids: list[str], since_ms: int, before_ms: int) -> list[Delivery]:
        """Deliveries of the messages taken in ``[since_ms, before_ms)`` to the connected participants that lack them.

        Three batch reads however many conversations (their records, the
        participants' cursors, the lagging participants' connections), then
        the newest messages of each conversation where a connected
        participant lags, down to its cursor or the window's start.
        """
        if not conversation_ids:
            return []
        convs = self.storage.conversations_at(conversation_ids)
        keys = [(user, c.conversation_id) for c in convs for user in c.participant_ids()]
        acked = {(p.user_id, p.conversation_id): p.ack_seq for p in self.storage.participants_at(keys)}
        lagging = {c.conversation_id: [u for u in c.participant_ids()
                                       if acked.get((u, c.conversation_id), 0) < c.last_seq]
                   for c in convs}
        users = list(dict.fromkeys(u for lag in lagging.values() for u in lag))
        connected = self.storage.connections_of_users(users) if users else {}
        deliveries = []
        for conv in convs:
            cid = conv.conversation_id
            reachable = [u for u in lagging[cid] if connected.get(u)]
            if not reachable:
                continue
            floor = min(acked.get((u, cid), 0) for u in reachable)
            for m in self._taken_since(cid, conv.last_seq, floor, since_ms):
                if core.epoch_ms(m.sent_at) >= before_ms:
                    continue  # within the grace: its handler is still on it
                wanting = tuple(u for u in reachable if acked.get((u, cid), 0) < m.seq)
                if wanting:
                    deliveries.append(Delivery(m, None, wanting))
        return deliveries

    def _taken_since(self, conversation_id: str, last_seq: int, floor: int,
                     since_ms: int) -> list[MessageRecord]:
        """The messages above ``floor`` up to ``last_seq`` taken at or after ``since_ms``, in seq order.

        Read newest first, a page at a time, stopping at ``floor`` or at the
        first message older than the window (seqs are taken in time order):
        a participant that never acks costs one page, not its whole backlog.
        """
        found: list[MessageRecord] = []
        upper = last_seq + 1
        while upper > floor + 1:
            want = min(self.config.page_size, upper - floor - 1)
            page = self.storage.messages_before(conversation_id, upper, want)
            for m in reversed(page):
                if m.seq <= floor or core.epoch_ms(m.sent_at) < since_ms:
                    return found[::-1]
                found.append(m)
            if len(page) < want:
                break
            upper = page[0].seq
        return found[::-1]

    def unswept_before(self, before: int, limit: int) -> list[str]:
        """Up to ``limit`` conversations with unswept messages, once the watermark lags behind ``before`` (epoch s).

        Empty while sweeps succeed (the watermark is at ``now - grace``); it
        grows when they fail, which is what the sweep-bound alarm watches.
        Every conversation active since the watermark counts, also one
        active again since ``before`` (its entry moved on, its older
        messages are still unswept). Costs no request unless the watermark
        lags behind ``before``.
        """
        mark = self.storage.get_sweep_mark()
        if mark is None or mark >= before:
            return []
        return self.storage.active_conversations(mark)[:limit]
