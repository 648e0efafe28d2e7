"""Agent presence reconciliation against the management API."""

from __future__ import annotations

import logging

from chalicelib import core
from chalicelib.models import AgentRecord
from chalicelib.ports import Pusher
from chalicelib.services.common import Clock
from chalicelib.services.connections import Connections
from chalicelib.storage.base import PresenceStore

log = logging.getLogger("oncechat")


class Presence:
    """Keep agents' presence true to their real connections."""

    def __init__(self, storage: PresenceStore, pusher: Pusher, connections: Connections, clock: Clock) -> None:
        self.storage = storage
        self.pusher = pusher
        self.connections = connections
        self.clock = clock

    def reconcile_presence(self, listed: list[AgentRecord] | None = None) -> int:
        """Make agents' presence follow their real connections; return how many fixes.

        ``$disconnect`` is best effort and connection records also expire by
        TTL, neither of which lowers an agent's connection count: an agent
        could stay online with no connection and keep being assigned work.
        For every agent not offline, each recorded connection older than
        the ``$connect`` settle time is asked for (management API GET): a
        410 prunes it as a failed push would. Then an agent whose count no
        longer matches its records (and who has not changed for the settle
        time) gets the count of its records, and goes offline at 0. The
        connections of every such agent are read in one batch per 100.
        ``listed``: every agent, as the caller has just listed them.
        """
        fixed = 0
        now = self.clock()
        agents = [a for a in (self.storage.list_agents() if listed is None else listed)
                  if not (a.presence == "offline" and a.connections == 0)]
        # Every agent's connections in one batch read per 100 agents.
        recorded = self.storage.connections_of_users(
            [a.agent_id for a in agents], consistent=True) if agents else {}
        for agent in agents:
            live = []
            pruned = 0
            for conn in recorded.get(agent.agent_id, []):
                settled = now - core.epoch_ms(conn.connected_at) >= core.CONNECT_SETTLE_MS
                if settled and not self.pusher.alive(conn.connection_id, conn.domain_name, conn.stage):
                    pruned += self.connections.prune_gone(conn)
                else:
                    live.append(conn)
            fixed += pruned
            # A prune moved the count: read it back; otherwise the listing is current.
            fresh = (self.storage.get_agent(agent.agent_id) or agent) if pruned else agent
            if (fresh.connections != len(live)
                    and now - core.epoch_ms(fresh.updated_at) >= core.CONNECT_SETTLE_MS
                    and self.storage.set_agent_connections(
                        fresh.agent_id, fresh.updated_at, len(live), core.iso_ms(now))):
                log.warning("agent %s had %d connection(s) counted, %d open",
                            fresh.agent_id, fresh.connections, len(live))
                fixed += 1
        return fixed
