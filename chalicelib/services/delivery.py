"""Delivery: the SQS FIFO consumer that pushes stored messages to recipients' connections."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
from chalicelib.ports import Delivery

if TYPE_CHECKING:
    from chalicelib.service import ChatService

log = logging.getLogger("oncechat")

class DeliveryFailed(OnceChatError):
    """Some pushes of a batch failed with something other than 410: SQS must redeliver."""


class DeliveryService:
    """The SQS FIFO consumer: push each stored message to its recipients' connections."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.storage = chat.storage
        self.pusher = chat.pusher

    def deliver(self, bodies: Iterable[str]) -> int:
        """Push a batch; return the number of frames pushed.

        A 410 prunes that connection (unless it may still be in its
        ``$connect``) and does not fail the batch. Any other
        failure is raised after the whole batch was tried, so SQS redelivers
        the batch; recipients drop the copies they already have by seq.
        Who to push to is read once per conversation and batch (a FIFO batch
        often holds several messages of one conversation).
        """
        failures: list[str] = []
        pushed = 0
        audiences: dict[str, _Audience | None] = {}
        for body in bodies:
            delivery = Delivery.from_json(body)
            message = delivery.message
            cid = message.conversation_id
            if cid not in audiences:
                audiences[cid] = self._audience(cid)
            audience = audiences[cid]
            if audience is None:
                log.error("delivery for unknown conversation %s dropped", cid)
                continue
            targets = core.delivery_targets(message, audience.conv, audience.connections,
                                            audience.cursors, delivery.origin_connection_id)
            data = core.encode(message.frame())
            for conn in targets:
                try:
                    self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
                    pushed += 1
                except ConnectionGone:
                    self.chat.prune_gone(conn)
                    audience.drop(conn.connection_id)
                except Exception as exc:
                    log.warning("push of %s#%d to %s failed: %s", cid, message.seq,
                                conn.connection_id, exc)
                    failures.append(conn.connection_id)
            if message.event is not None:
                self._announce(message, audience)
        if failures:
            raise DeliveryFailed(f"{len(failures)} push(es) failed: {', '.join(failures[:5])}")
        return pushed

    def _announce(self, message: MessageRecord, audience: _Audience) -> None:
        """A lifecycle event's ``conversation`` frame, to every connection the event concerns.

        The customer, the agent the event leaves the conversation with and
        the agent it took it from (transfer, reopening): decided by the
        event, not by whoever holds the conversation when the consumer runs.
        Best effort, like typing: the system message itself is the durable,
        exactly-once record of the event; a repeated delivery repeats the
        frame, which carries the event's seq to tell.
        """
        users = dict.fromkeys(u for u in (audience.conv.customer_id, message.agent_id,
                                          message.previous_agent_id) if u)
        self.chat.push_to_users(users, core.conversation_frame(message, audience.conv),
                                known=audience.connections)

    def _audience(self, conversation_id: str) -> _Audience | None:
        conv = self.storage.get_conversation(conversation_id)
        if conv is None:
            return None
        users = conv.participant_ids()
        cursors = {}
        for user in users:
            p = self.storage.get_participant(user, conversation_id)
            cursors[user] = p.ack_seq if p else 0
        return _Audience(conv, {u: self.storage.connections_of(u) for u in users}, cursors)


@dataclass
class _Audience:
    """A conversation's participants, their open connections and ack cursors."""

    conv: Conversation
    connections: dict[str, list[ConnectionRecord]]
    cursors: dict[str, int]

    def drop(self, connection_id: str) -> None:
        """Forget a connection found gone, for the rest of the batch."""
        for user, conns in self.connections.items():
            self.connections[user] = [c for c in conns if c.connection_id != connection_id]
