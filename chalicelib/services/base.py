"""What every service shares: its ports, a clock, and small helpers."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chalicelib import core
from chalicelib.config import Config
from chalicelib.errors import (
    NotFound,
    RateLimited,
)
from chalicelib.limits import FrameLimiter
from chalicelib.models import (
    ConnectionRecord,
    Conversation,
    IdempotencyRecord,
    Participant,
    Principal,
    SendFrame,
)
from chalicelib.ports import Delivery, DeliveryQueue, Pusher
from chalicelib.services.local_state import BoundedCache, HighWaterMarks, WindowCounter
from chalicelib.storage.base import Storage

log = logging.getLogger("oncechat")

#: Connections whose principal a container remembers.
PRINCIPAL_CACHE_SIZE = 50_000
#: Conversations whose latest seq a container remembers.
LAST_SEQ_CACHE_SIZE = 50_000
#: Accepted messageIds a container remembers.
ACCEPTED_CACHE_SIZE = 50_000

Clock = Callable[[], int]

#: How often a lifecycle step is re-planned when a message or another step
#: moved the conversation between the read and the conditional write.
TRANSITION_ATTEMPTS = 16


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Origin:
    """The connection a frame arrived on, and where its management API lives."""

    connection_id: str
    domain_name: str
    stage: str


class ServiceBase:
    """The ports and clock every service mixin works with, and their shared helpers."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        queue: DeliveryQueue,
        pusher: Pusher,
        clock: Clock = wall_clock_ms,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.config = config
        self.storage = storage
        self.queue = queue
        self.pusher = pusher
        self.clock = clock
        self.new_id = new_id
        #: Who is behind each connection this container has seen (see local_state).
        self.principals: BoundedCache[str, Principal] = BoundedCache(PRINCIPAL_CACHE_SIZE)
        #: Idempotency records of sends this container stored or answered (see local_state).
        self.accepted: BoundedCache[str, IdempotencyRecord] = BoundedCache(ACCEPTED_CACHE_SIZE)
        #: The highest ``lastSeq`` this container has seen per conversation (see local_state).
        self.last_seqs = HighWaterMarks(LAST_SEQ_CACHE_SIZE)
        #: Send and typing limits: fixed windows counted in this container (see local_state).
        self.window_counts = WindowCounter()

    @property
    def background(self) -> ThreadPoolExecutor:
        """Threads for a read that overlaps a write of the same handler (the fast path's)."""
        pool: ThreadPoolExecutor | None = self.__dict__.get("_background")
        if pool is None:
            pool = self.__dict__.setdefault(
                "_background", ThreadPoolExecutor(max_workers=4, thread_name_prefix="oncechat"))
        return pool

    @property
    def frame_limits(self) -> FrameLimiter:
        """This container's per-connection token buckets (chalicelib/limits.py)."""
        limiter: FrameLimiter | None = self.__dict__.get("_frame_limits")
        if limiter is None:
            limiter = self.__dict__.setdefault("_frame_limits", FrameLimiter(self.config))
        return limiter

    def _window(self) -> tuple[int, int, int]:
        """The current fixed rate window: its start, its length and now (epoch s)."""
        window = self.config.rate_window_seconds
        now_s = self.clock() // 1000
        return now_s - now_s % window, window, now_s

    def _take_tokens(self, buckets: list[tuple[str, int]], message_id: str | None = None) -> None:
        """Count a request in fixed-window buckets; RateLimited (nothing done) when one is full."""
        start, window, now_s = self._window()
        if not self.storage.take_tokens([(f"{key}#{start}", limit) for key, limit in buckets],
                                        start + 2 * window):
            raise RateLimited(f"rate limit reached; retry in {start + window - now_s} s",
                              message_id=message_id)

    def _limit_frames(self, buckets: list[tuple[str, int]], message_id: str | None = None) -> None:
        """Count a frame in fixed-window buckets kept in the container; RateLimited when one is full.

        Frames are limited without an AWS request (chalicelib.services.local_state
        says what that means on AWS); REST writes use the shared ``limits`` table.
        """
        start, window, now_s = self._window()
        if not self.window_counts.take([(f"{key}#{start}", limit) for key, limit in buckets]):
            raise RateLimited(f"rate limit reached; retry in {start + window - now_s} s",
                              message_id=message_id)

    def _limit_requests(self, principal: Principal) -> None:
        """REST writes (open, close, transfer, status): one per-user bucket."""
        self._take_tokens([(f"rest#user#{principal.user_id}", self.config.rate_user_requests)])

    def _idempotency(self, principal: Principal, frame: SendFrame, now_ms: int) -> IdempotencyRecord | None:
        return self.storage.get_idempotency(
            principal.user_id, frame.conversation_id, frame.message_id, now_ms // 1000)

    def _conversation(self, conversation_id: str) -> Conversation:
        conv = self.storage.get_conversation(conversation_id)
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        self.last_seqs.raise_to(conversation_id, conv.last_seq)
        return conv

    def _join(self, principal: Principal, conversation_id: str) -> None:
        self.storage.add_participant(
            Participant(
                user_id=principal.user_id,
                conversation_id=conversation_id,
                role=principal.role,
                joined_at=core.iso_ms(self.clock()),
            )
        )

    # What one service asks of another. Each is implemented by its module's
    # mixin (named beside it); ``ChatService`` composes them all.

    def principal_of(self, connection_id: str) -> Principal:  # connections
        raise NotImplementedError

    def prune_gone(self, conn: ConnectionRecord) -> bool:  # connections
        raise NotImplementedError

    def assign_waiting(self, limit: int = 25) -> int:  # desk
        raise NotImplementedError

    def assign_new_waiting(self, conversation_id: str) -> None:  # desk
        raise NotImplementedError

    def _commit_once(self, transition: core.Transition) -> bool:  # desk
        raise NotImplementedError

    def _enqueue(self, delivery: Delivery) -> None:  # outbox
        raise NotImplementedError

    def reconcile_presence(self) -> int:  # presence
        raise NotImplementedError
