"""chalicelib/limits.py: per-connection token buckets, on an injected clock."""

import pytest

from chalicelib.config import Config
from chalicelib.errors import RateLimited
from chalicelib.limits import FrameLimiter


def limiter(**env):
    return FrameLimiter(Config.from_env({"STAGE": "test", "JWT_SECRET": "s", **env}), max_buckets=3)


def test_a_burst_of_one_window_then_the_window_rate():
    lim = limiter(RATE_CONNECTION_ACKS="10", RATE_WINDOW_SECONDS="10")
    for _ in range(10):
        lim.admit("c1", "ack", 0)
    with pytest.raises(RateLimited) as over:
        lim.admit("c1", "ack", 0)
    assert "retry in 1 s" in over.value.message
    lim.admit("c1", "ack", 1000)  # 10 per 10 s: one token a second
    with pytest.raises(RateLimited):
        lim.admit("c1", "ack", 1500)
    lim.admit("c2", "ack", 1500)  # another connection has its own bucket
    lim.admit("c1", "read", 1500)  # and another kind too


def test_send_is_not_limited_here_and_buckets_are_bounded():
    lim = limiter(RATE_CONNECTION_RESUMES="1")
    for _ in range(100):
        lim.admit("c1", "send", 0)
    for conn in ("a", "b", "c", "d"):
        lim.admit(conn, "resume", 0)
    assert len(lim._buckets) == 3  # the least recently used was dropped
    lim.admit("a", "resume", 0)  # dropped: starts full again
    with pytest.raises(RateLimited):
        lim.admit("d", "resume", 0)
    lim.forget("d")
    lim.admit("d", "resume", 0)
