"""Fan-out: pushing frames to the connections of the people a frame concerns."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from chalicelib import core
from chalicelib.errors import ConnectionGone
from chalicelib.models import ConnectionRecord, MessageRecord
from chalicelib.ports import Delivery, Pusher
from chalicelib.services.common import Origin
from chalicelib.services.connections import Connections
from chalicelib.services.outbox import Outbox
from chalicelib.storage.base import ConnectionStore

log = logging.getLogger("oncechat")

Reading = Future[dict[str, list[ConnectionRecord]]]


class Fanout:
    """Push stored messages at once (queueing what could not be pushed) and ephemeral frames."""

    def __init__(self, storage: ConnectionStore, pusher: Pusher, connections: Connections,
                 outbox: Outbox) -> None:
        self.storage = storage
        self.pusher = pusher
        self.connections = connections
        self.outbox = outbox

    def reply(self, origin: Origin, frame: dict[str, Any]) -> None:
        """Push a frame to the connection a request came from."""
        self.pusher.push(origin.connection_id, origin.domain_name, origin.stage, core.encode(frame))

    def deliver_now(self, message: MessageRecord, recipients: tuple[str, ...],
                    origin_id: str | None, reading: Reading | None = None) -> None:
        """Push a message just stored; queue only what the fast path could not push."""
        retry = self.push_now(message, recipients, origin_id, reading)
        if retry is None or retry:
            self.outbox.enqueue(Delivery(message, origin_id, recipients,
                                         fast=retry is not None, retry=retry or ()))

    def push_now(self, message: MessageRecord, recipients: tuple[str, ...],
                 origin_id: str | None, reading: Reading | None = None,
                 ) -> tuple[ConnectionRecord, ...] | None:
        """The fast path: push a message just stored to its recipients' connections.

        Returns the connections the push failed for (None when the fast path
        could not run at all: the caller queues the whole delivery). The
        consumer then pushes only to those connections, reading nothing. A
        connection opened after the read resumes on its own, after the
        message was stored (the read overlapping the store leaves a window
        of one write, which the sweeper covers). A 410 prunes, as in the
        consumer. ``reading`` is the connections read already under way.
        """
        data = core.encode(message.frame())
        try:
            connections = (reading.result() if reading is not None
                           else self.storage.connections_of_users(list(recipients)))
        except Exception as err:
            log.info("fast path of %s#%d skipped: %s", message.conversation_id, message.seq, err)
            return None
        retry: list[ConnectionRecord] = []
        for conn in core.delivery_targets(recipients, connections, origin_id):
            try:
                self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
            except ConnectionGone:
                if not self.connections.prune_gone(conn):
                    retry.append(conn)  # maybe still in its $connect: the consumer tries again
            except Exception as exc:
                log.info("fast push of %s#%d to %s failed: %s", message.conversation_id,
                         message.seq, conn.connection_id, exc)
                retry.append(conn)
        return tuple(retry)

    def push_to_users(self, users: Iterable[str], frame: dict[str, Any],
                      skip_connection: str | None = None,
                      known: dict[str, list[ConnectionRecord]] | None = None) -> int:
        """Best-effort push of an ephemeral frame to every connection of ``users``.

        ``known`` holds connections the caller already read (by user); the
        others are looked up.
        """
        data = core.encode(frame)
        pushed = 0
        users = list(users)
        unknown = [u for u in users if not known or u not in known]
        found = self.storage.connections_of_users(unknown) if unknown else {}
        for user in users:
            conns = known[user] if known and user in known else found[user]
            for conn in conns:
                if conn.connection_id == skip_connection:
                    continue
                try:
                    self.pusher.push(conn.connection_id, conn.domain_name, conn.stage, data)
                    pushed += 1
                except ConnectionGone:
                    self.connections.prune_gone(conn)
                except Exception as exc:  # ephemeral: a lost one is not retried
                    log.info("push of %s to %s failed: %s", frame["type"], conn.connection_id, exc)
        return pushed
