"""Delivery: the SQS FIFO consumer that pushes stored messages to recipients' connections."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from chalicelib import core
from chalicelib.errors import (
    ConnectionGone,
    OnceChatError,
)
from chalicelib.models import (
    ConnectionRecord,
    Conversation,
    MessageRecord,
)
from chalicelib.ports import Delivery, Pusher
from chalicelib.services.connections import Connections
from chalicelib.services.fanout import Fanout
from chalicelib.storage.base import DeliveryStore

log = logging.getLogger("oncechat")


class DeliveryFailed(OnceChatError):
    """Some pushes of a batch failed with something other than 410: SQS must redeliver."""


class Consumer:
    """The SQS FIFO consumer: push each stored message to its recipients' connections."""

    def __init__(self, storage: DeliveryStore, pusher: Pusher, connections: Connections,
                 fanout: Fanout) -> None:
        self.storage = storage
        self.pusher = pusher
        self.connections = connections
        self.fanout = fanout

    def deliver(self, bodies: Iterable[str]) -> int:
        """Push a batch; return the number of frames pushed.

        A 410 prunes that connection (unless it may still be in its
        ``$connect``) and does not fail the batch. Any other failure is
        raised after the whole batch was tried, so SQS redelivers the batch;
        recipients drop the copies they already have by seq.

        What is read per batch: each recipient's connections once (a FIFO
        batch often holds several messages of one conversation), and the
        conversation only for a lifecycle event or a delivery that does not
        name its recipients (the sweeper's).
        """
        batch = _Batch(self.storage)
        failures: list[str] = []
        pushed = 0
        for body in bodies:
            delivery = Delivery.from_json(body)
            message = delivery.message
            cid = message.conversation_id
            recipients = delivery.recipients
            if recipients is None or message.event is not None:
                conv = batch.conversation(cid)
                if conv is None:
                    log.error("delivery for unknown conversation %s dropped", cid)
                    continue
                if recipients is None:
                    recipients = tuple(conv.participant_ids())
            if delivery.fast and message.event is None:
                # The sender's handler pushed to every connection it found but
                # these; a connection opened since then resumes on its own.
                targets = list(delivery.retry)
            else:
                targets = core.delivery_targets(
                    recipients, batch.connections_of(recipients), delivery.origin_connection_id)
            data = core.encode(message.frame())
            for conn in targets:
                try:
                    self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
                    pushed += 1
                except ConnectionGone:
                    self.connections.prune_gone(conn)
                    batch.drop(conn.connection_id)
                except Exception as exc:
                    log.warning("push of %s#%d to %s failed: %s", cid, message.seq,
                                conn.connection_id, exc)
                    failures.append(conn.connection_id)
            if message.event is not None:
                self._announce(message, batch)
        if failures:
            raise DeliveryFailed(f"{len(failures)} push(es) failed: {', '.join(failures[:5])}")
        return pushed

    def _announce(self, message: MessageRecord, batch: _Batch) -> None:
        """A lifecycle event's ``conversation`` frame, to every connection the event concerns.

        The customer, the agent the event leaves the conversation with and
        the agent it took it from (transfer, reopening): decided by the
        event, not by whoever holds the conversation when the consumer runs.
        Best effort, like typing: the system message itself is the durable,
        exactly-once record of the event; a repeated delivery repeats the
        frame, which carries the event's seq to tell.
        """
        conv = batch.conversation(message.conversation_id)
        if conv is None:
            return
        users = list(dict.fromkeys(u for u in (conv.customer_id, message.agent_id,
                                               message.previous_agent_id) if u))
        self.fanout.push_to_users(users, core.conversation_frame(message, conv),
                                known=batch.connections_of(users))


class _Batch:
    """What one batch has read: conversations and users' connections, each at most once."""

    def __init__(self, storage: DeliveryStore) -> None:
        self._storage = storage
        self._convs: dict[str, Conversation | None] = {}
        self._connections: dict[str, list[ConnectionRecord]] = {}

    def conversation(self, conversation_id: str) -> Conversation | None:
        if conversation_id not in self._convs:
            self._convs[conversation_id] = self._storage.get_conversation(conversation_id)
        return self._convs[conversation_id]

    def connections_of(self, users: Iterable[str]) -> dict[str, list[ConnectionRecord]]:
        users = list(users)
        missing = [user for user in users if user not in self._connections]
        if missing:
            self._connections.update(self._storage.connections_of_users(missing))
        return {user: self._connections[user] for user in users}

    def drop(self, connection_id: str) -> None:
        """Forget a connection found gone, for the rest of the batch."""
        for user, conns in self._connections.items():
            self._connections[user] = [c for c in conns if c.connection_id != connection_id]
