"""Rate limits: one object per surface, each applied once per request.

- ``FrameLimits`` (WebSocket frames): token buckets kept in the Lambda
  container's memory, no AWS request per frame. ``Messaging.on_frame``
  admits every frame twice over, in one place: first against the
  connection's ``frame`` bucket (before the connection record is read or
  the frame parsed, so a flood of garbage costs no DynamoDB request), then
  against its action's bucket: ``ack``, ``read``, ``resume``, ``typing`` per
  connection, and ``send`` per connection and per user together (both
  buckets take a token, or neither). A bucket holds ``limit`` tokens and
  refills at ``limit`` per ``rate_window_seconds``, so a client may burst a
  window's worth, then goes at the window's rate. A refused frame takes no
  token from any other bucket.
- ``RestLimits`` (REST writes: open, close, transfer, agent status): one
  fixed window per user counted in DynamoDB (an atomic counter with
  expiry), so the limit holds across every function instance.

The AWS caveat of frame limits: API Gateway spreads one connection's
frames over as many concurrent Lambda containers as it likes, and each
container keeps its own buckets, so one connection can get up to
``limit x containers`` per window (containers are reused, so in practice
it is a small multiple). The account-level backstop is API Gateway's stage
throttling (the ``WebsocketAPIStage`` route settings in infra/aws.yaml),
which refuses frames before any Lambda runs.

A send over its limit is not refused at once: a retry of a message already
accepted is still answered (the send protocol looks its claim up first,
``chalicelib.core.send``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from chalicelib.config import Config
from chalicelib.errors import RateLimited
from chalicelib.models import Principal
from chalicelib.storage.base import LimitStore

#: Buckets kept per container before the least recently used are dropped
#: (a dropped bucket restarts full: at worst one more burst for that key).
MAX_BUCKETS = 20_000

#: The per-connection kinds of frame limits.
CONNECTION_KINDS = ("frame", "ack", "read", "resume", "typing", "send")


class FrameLimits:
    """Token buckets per (key, kind) for WebSocket frames; thread-safe; the clock is passed in (ms)."""

    def __init__(self, config: Config, max_buckets: int = MAX_BUCKETS) -> None:
        self.window_ms = config.rate_window_seconds * 1000
        self.limits = {
            "frame": config.rate_connection_frames,
            "ack": config.rate_connection_acks,
            "read": config.rate_connection_reads,
            "resume": config.rate_connection_resumes,
            "typing": config.rate_connection_typing,
            "send": config.rate_connection_sends,
            "user-send": config.rate_user_sends,
        }
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit_frame(self, connection_id: str, now_ms: int) -> None:
        """Any frame of a connection, counted first; RateLimited when its bucket is empty."""
        self._take([(connection_id, "frame")], now_ms, "frames")

    def admit_action(self, connection_id: str, principal: Principal, action: str, now_ms: int,
                     message_id: str | None = None) -> None:
        """A parsed frame's action: one token of its kind (a send also of its user's), or RateLimited."""
        keys = [(connection_id, action)]
        if action == "send":
            keys.append((principal.user_id, "user-send"))
        self._take(keys, now_ms, f"{action} frames", message_id)

    def _take(self, keys: Sequence[tuple[str, str]], now_ms: int, what: str,
              message_id: str | None = None) -> None:
        with self._lock:
            filled = []
            for key in keys:
                limit = self.limits[key[1]]
                tokens, updated = self._buckets.get(key, (float(limit), now_ms))
                tokens = min(float(limit), tokens + (now_ms - updated) * limit / self.window_ms)
                filled.append((key, limit, tokens))
            for key, limit, tokens in filled:
                if tokens < 1:
                    for k, _, t in filled:  # refill to now, take nothing
                        self._put(k, t, now_ms)
                    wait_s = max(1, int((1 - tokens) * self.window_ms / limit / 1000 + 0.999))
                    whose = "this user" if key[1] == "user-send" else "this connection"
                    raise RateLimited(f"too many {what} on {whose}; retry in {wait_s} s",
                                      message_id=message_id)
            for key, _, tokens in filled:
                self._put(key, tokens - 1, now_ms)

    def _put(self, key: tuple[str, str], tokens: float, now_ms: int) -> None:
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now_ms)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)

    def forget(self, connection_id: str) -> None:
        """Drop a closed connection's buckets."""
        with self._lock:
            for kind in CONNECTION_KINDS:
                self._buckets.pop((connection_id, kind), None)


class RestLimits:
    """REST writes per user: a fixed window counted in DynamoDB (``storage.take_tokens``)."""

    def __init__(self, config: Config, storage: LimitStore, clock: Callable[[], int]) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock

    def admit(self, principal: Principal) -> None:
        """Count one REST write of the caller; RateLimited (nothing done) when the window is full."""
        window = self.config.rate_window_seconds
        now_s = self.clock() // 1000
        start = now_s - now_s % window
        bucket = (f"rest#user#{principal.user_id}#{start}", self.config.rate_user_requests)
        if not self.storage.take_tokens([bucket], start + 2 * window):
            raise RateLimited(f"rate limit reached; retry in {start + window - now_s} s")
