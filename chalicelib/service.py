"""``ChatService``: the services of chalicelib/services/ composed into the one object handlers call.

``ChatService`` serves the WebSocket actions, the REST routes and the
sweeper; ``DeliveryService`` is the SQS FIFO consumer. Both depend only
on the ports (storage, queue, pusher) and a clock, so tests run them
against the in-memory adapters or against AWS. Each responsibility lives
in its own module:

- ``services/connections.py``: ``$connect``, ``$disconnect``, 410 prunes;
- ``services/messaging.py``: send, ack, typing, read, resume, history;
- ``services/desk.py``: conversations, lifecycle steps, agents, assignment;
- ``services/outbox.py``: enqueue after commit, the sweeper;
- ``services/presence.py``: agents' presence against their real connections;
- ``services/delivery.py``: the consumer.
"""

from __future__ import annotations

from chalicelib.services.base import TRANSITION_ATTEMPTS, Clock, Origin, wall_clock_ms
from chalicelib.services.connections import ConnectionsMixin
from chalicelib.services.delivery import DeliveryFailed, DeliveryService
from chalicelib.services.desk import DeskMixin
from chalicelib.services.messaging import MessagingMixin
from chalicelib.services.outbox import OutboxMixin
from chalicelib.services.presence import PresenceMixin

__all__ = [
    "TRANSITION_ATTEMPTS",
    "ChatService",
    "Clock",
    "DeliveryFailed",
    "DeliveryService",
    "Origin",
    "wall_clock_ms",
]


class ChatService(ConnectionsMixin, MessagingMixin, DeskMixin, OutboxMixin, PresenceMixin):
    """Connections, the client frames, the desk, the outbox and presence, over one set of ports."""
