"""The services, each with its collaborators in its constructor, wired in one place.

``build_services(config, ports)`` builds them once per container::

    Outbox(queue)                                   enqueue after commit
    Desk(storage, outbox, conversations, limits)    conversations, lifecycle, agents, assignment
    Connections(storage, pusher, desk, limits)      $connect, $disconnect, 410 prunes, principals
    Fanout(storage, pusher, connections, outbox)    push now, queue what failed, ephemeral frames
    Messaging(storage, connections, desk, outbox,   the client frames: send, ack, typing, read,
              fanout, frame limits)                 resume; message history
    Presence(storage, pusher, connections)          agents' presence against their connections
    Sweeper(storage, outbox, presence, desk)        what dead handlers left behind
    Consumer(storage, pusher, connections, fanout)  the SQS FIFO consumer

The decisions that keep the promise are the core's state machines
(``chalicelib.core.send``, ``.lifecycle``, ``.replay``); the services drive
them against the ports (``chalicelib.ports``, ``chalicelib.storage``).
Nothing replaces a collaborator after construction: adapters that wrap a
port (observability's) wrap it before ``build_services``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from chalicelib.config import Config
from chalicelib.limits import FrameLimits, RestLimits
from chalicelib.ports import DeliveryQueue, Pusher
from chalicelib.services.common import Clock, Conversations, Origin, wall_clock_ms
from chalicelib.services.connections import Connections
from chalicelib.services.delivery import Consumer, DeliveryFailed
from chalicelib.services.desk import Desk
from chalicelib.services.fanout import Fanout
from chalicelib.services.messaging import Messaging
from chalicelib.services.outbox import Outbox
from chalicelib.services.presence import Presence
from chalicelib.services.sweeper import Sweeper
from chalicelib.storage.base import Storage

__all__ = [
    "Clock",
    "Consumer",
    "DeliveryFailed",
    "Origin",
    "Ports",
    "Services",
    "build_services",
    "wall_clock_ms",
]


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Ports:
    """What the services talk to: storage, the delivery queue, the push channel, a clock and ids."""

    storage: Storage
    queue: DeliveryQueue
    pusher: Pusher
    clock: Clock = wall_clock_ms
    new_id: Callable[[], str] = field(default=_new_id)
    #: Waits (seconds): a resume waiting a bounded moment for a seq being stored.
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Services:
    """Every service of one container, built by ``build_services``."""

    config: Config
    ports: Ports
    outbox: Outbox
    desk: Desk
    connections: Connections
    fanout: Fanout
    messaging: Messaging
    presence: Presence
    sweeper: Sweeper
    consumer: Consumer

    @property
    def storage(self) -> Storage:
        return self.ports.storage

    @property
    def queue(self) -> DeliveryQueue:
        return self.ports.queue

    @property
    def pusher(self) -> Pusher:
        return self.ports.pusher

    @property
    def clock(self) -> Clock:
        return self.ports.clock


def build_services(config: Config, ports: Ports) -> Services:
    """Wire the services from the config and the ports: the one place they are built."""
    storage, clock = ports.storage, ports.clock
    outbox = Outbox(ports.queue)
    conversations = Conversations(storage)
    desk = Desk(config, storage, outbox, conversations, RestLimits(config, storage, clock), clock,
                ports.new_id)
    frame_limits = FrameLimits(config)
    connections = Connections(config, storage, ports.pusher, desk, frame_limits, clock)
    fanout = Fanout(storage, ports.pusher, connections, outbox)
    messaging = Messaging(config, storage, conversations, connections, desk, outbox, fanout,
                          frame_limits, clock, ports.sleep)
    presence = Presence(storage, ports.pusher, connections, clock)
    sweeper = Sweeper(config, storage, outbox, presence, desk, clock)
    consumer = Consumer(storage, ports.pusher, connections, fanout)
    return Services(config, ports, outbox, desk, connections, fanout, messaging, presence, sweeper, consumer)
