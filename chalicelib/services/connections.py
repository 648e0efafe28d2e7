"""Connections: ``$connect``, ``$disconnect``, 410 prunes and who is behind a connection."""

from __future__ import annotations

import logging

from chalicelib import core
from chalicelib.auth import verify_token
from chalicelib.config import Config
from chalicelib.errors import RateLimited, Unauthorized
from chalicelib.limits import FrameLimits
from chalicelib.models import ConnectionRecord, Principal
from chalicelib.ports import Pusher
from chalicelib.services.common import Clock, Origin
from chalicelib.services.desk import Desk
from chalicelib.services.local_state import BoundedCache
from chalicelib.storage.base import PresenceStore

log = logging.getLogger("oncechat")

#: Connections whose principal a container remembers.
PRINCIPAL_CACHE_SIZE = 50_000


class Connections:
    """The connection records behind every frame; an agent's connections make its presence."""

    def __init__(self, config: Config, storage: PresenceStore, pusher: Pusher, desk: Desk,
                 frame_limits: FrameLimits, clock: Clock) -> None:
        self.config = config
        self.storage = storage
        self.pusher = pusher
        self.desk = desk
        self.frame_limits = frame_limits
        self.clock = clock
        #: Who is behind each connection this container has seen (see local_state).
        self.principals: BoundedCache[str, Principal] = BoundedCache(PRINCIPAL_CACHE_SIZE)

    def connect(self, token: str | None, origin: Origin) -> Principal:
        """Verify the token and record the connection. Never pushes (AWS answers 410 in $connect)."""
        principal = verify_token(token, self.config.jwt_secret,
                                 max_lifetime_seconds=self.config.token_max_lifetime_seconds)
        now = self.clock()
        self._check_connection_cap(principal, now)
        self.storage.put_connection(
            ConnectionRecord(
                connection_id=origin.connection_id,
                user_id=principal.user_id,
                role=principal.role,
                connected_at=core.iso_ms(now),
                domain_name=origin.domain_name,
                stage=origin.stage,
                expires_at=now // 1000 + self.config.connection_ttl_seconds,
            )
        )
        self.principals.put(origin.connection_id, principal)
        if principal.role == "agent":
            agent = self.storage.agent_connected(principal.user_id, core.iso_ms(now))
            if agent.has_room:
                self.desk.assign_waiting()
        return principal

    def _check_connection_cap(self, principal: Principal, now: int) -> None:
        """RateLimited (429 at ``$connect``) when the user already holds the most connections.

        Records whose ``$disconnect`` was lost would count forever (until
        their TTL), so when the cap is reached the settled ones are probed
        through the management API and the gone ones forgotten first. Two
        racing ``$connect``s may both pass: the cap is soft by one or two.
        """
        cap = self.config.max_connections_per_user
        conns = self.storage.connections_of(principal.user_id)
        if len(conns) < cap:
            return
        live = len(conns)
        for conn in sorted(conns, key=lambda c: c.connected_at):
            if live < cap:
                break
            if now - core.epoch_ms(conn.connected_at) < core.CONNECT_SETTLE_MS:
                continue
            if not self.pusher.alive(conn.connection_id, conn.domain_name, conn.stage):
                self.forget_connection(conn.connection_id)
                live -= 1
        if live >= cap:
            raise RateLimited(f"too many open connections (at most {cap} per user)")

    def disconnect(self, connection_id: str) -> None:
        """Forget a connection and its frame budgets (``$disconnect``, best-effort on AWS)."""
        self.forget_connection(connection_id)
        self.frame_limits.forget(connection_id)

    def forget_connection(self, connection_id: str, user_id: str | None = None) -> None:
        """Remove a connection record once; an agent's last connection takes it offline."""
        known = self.principals.get(connection_id)
        self.principals.pop(connection_id)
        removed = self.storage.delete_connection(
            connection_id, user_id or (known.user_id if known else None))
        if removed is not None and removed.role == "agent":
            self.storage.agent_disconnected(removed.user_id, core.iso_ms(self.clock()))

    def prune_gone(self, conn: ConnectionRecord) -> bool:
        """A push got 410: forget the connection, unless it may still be in ``$connect``.

        API Gateway answers 410 for a connection whose ``$connect`` has not
        returned yet, and ``$connect`` writes the record before it returns:
        a delivery racing a new connection would delete the record of a
        connection about to open. ``$connect`` cannot run longer than the
        29 s integration timeout, so only records older than
        ``core.CONNECT_SETTLE_MS`` are pruned; a younger one that is really
        gone goes with its ``$disconnect``, a later 410, or its TTL.
        """
        if self.clock() - core.epoch_ms(conn.connected_at) < core.CONNECT_SETTLE_MS:
            return False
        self.forget_connection(conn.connection_id, conn.user_id)
        return True

    def principal_of(self, connection_id: str) -> Principal:
        """The user behind a connection, from the record made at ``$connect``.

        Remembered by the container after the first look-up: the principal
        of a connection never changes, and frames come only from open ones.
        """
        known = self.principals.get(connection_id)
        if known is not None:
            return known
        conn = self.storage.get_connection(connection_id)
        if conn is None:
            raise Unauthorized("unknown connection; reconnect with a token")
        principal = Principal(user_id=conn.user_id, role=conn.role)
        self.principals.put(connection_id, principal)
        return principal
