"""In-process rate limits per connection: no AWS request per frame.

Each Lambda container keeps one token bucket per (connection, kind) in
memory. A bucket holds ``limit`` tokens and refills at ``limit`` per
``rate_window_seconds``, so a client may burst a whole window's worth and
then goes at the window's rate. Kinds:

- ``frame``: every frame of a connection, counted before anything else
  (before the connection record is read, before the frame is parsed), so a
  flood of garbage costs no DynamoDB request at all;
- ``ack``, ``read``, ``resume``, ``typing``: the actions whose handling reads
  or writes DynamoDB. ``send`` has its own limits in DynamoDB (per user and
  per connection), because a retry of a stored message must still be answered.

The AWS caveat: API Gateway spreads one connection's frames over as many
concurrent Lambda containers as it likes, and each container keeps its own
buckets, so one connection can get up to ``limit x containers`` per window
(containers are reused, so in practice it is a small multiple). The
account-level backstop is API Gateway's stage throttling (the
``WebsocketAPIStage`` route settings in infra/aws.yaml), which refuses
frames before any Lambda runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from chalicelib.config import Config
from chalicelib.errors import RateLimited

#: Buckets kept per container before the least recently used are dropped
#: (a dropped bucket restarts full: at worst one more burst for that connection).
MAX_BUCKETS = 20_000


class FrameLimiter:
    """Token buckets per (connection, kind); thread-safe; the clock is passed in (ms)."""

    def __init__(self, config: Config, max_buckets: int = MAX_BUCKETS) -> None:
        self.window_ms = config.rate_window_seconds * 1000
        self.limits = {
            "frame": config.rate_connection_frames,
            "ack": config.rate_connection_acks,
            "read": config.rate_connection_reads,
            "resume": config.rate_connection_resumes,
            "typing": config.rate_connection_typing,
        }
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, connection_id: str, kind: str, now_ms: int,
              message_id: str | None = None) -> None:
        """Take one token of ``kind`` for the connection, or raise RateLimited (nothing done)."""
        limit = self.limits.get(kind)
        if limit is None:  # send: limited in DynamoDB by the messaging service
            return
        key = (connection_id, kind)
        with self._lock:
            tokens, updated = self._buckets.pop(key, (float(limit), now_ms))
            tokens = min(float(limit), tokens + (now_ms - updated) * limit / self.window_ms)
            if tokens < 1:
                self._buckets[key] = (tokens, now_ms)
                wait_s = max(1, int((1 - tokens) * self.window_ms / limit / 1000 + 0.999))
                raise RateLimited(f"too many {kind} frames on this connection; retry in {wait_s} s",
                                  message_id=message_id)
            self._buckets[key] = (tokens - 1, now_ms)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)

    def forget(self, connection_id: str) -> None:
        """Drop a closed connection's buckets."""
        with self._lock:
            for kind in self.limits:
                self._buckets.pop((connection_id, kind), None)
