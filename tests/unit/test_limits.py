"""chalicelib/limits.py: the frame limits' token buckets, on an injected clock."""

import pytest

from chalicelib.config import Config
from chalicelib.errors import RateLimited
from chalicelib.limits import FrameLimits
from chalicelib.models import Principal

ALICE = Principal(user_id="alice", role="customer")
BOB = Principal(user_id="bob", role="agent")


def limits(**env):
    return FrameLimits(Config.from_env({"STAGE": "test", "JWT_SECRET": "s", **env}), max_buckets=3)


def test_a_burst_of_one_window_then_the_window_rate():
    lim = limits(RATE_CONNECTION_ACKS="10", RATE_WINDOW_SECONDS="10")
    for _ in range(10):
        lim.admit_action("c1", ALICE, "ack", 0)
    with pytest.raises(RateLimited) as over:
        lim.admit_action("c1", ALICE, "ack", 0)
    assert "retry in 1 s" in over.value.message
    lim.admit_action("c1", ALICE, "ack", 1000)  # 10 per 10 s: one token a second
    with pytest.raises(RateLimited):
        lim.admit_action("c1", ALICE, "ack", 1500)
    lim.admit_action("c2", ALICE, "ack", 1500)  # another connection has its own bucket
    lim.admit_action("c1", ALICE, "read", 1500)  # and another kind too


def test_a_send_takes_from_its_connection_and_its_user_or_from_neither():
    lim = limits(RATE_CONNECTION_SENDS="3", RATE_USER_SENDS="4")
    for _ in range(3):
        lim.admit_action("phone", ALICE, "send", 0)
    with pytest.raises(RateLimited) as conn:
        lim.admit_action("phone", ALICE, "send", 0, message_id="m4")
    assert "this connection" in conn.value.message and conn.value.message_id == "m4"
    lim.admit_action("laptop", ALICE, "send", 0)  # the user's fourth
    with pytest.raises(RateLimited) as user:
        lim.admit_action("tablet", ALICE, "send", 0)
    assert "this user" in user.value.message
    lim.admit_action("tablet", BOB, "send", 0)  # another user has room
    # The refused sends took nothing: the tablet's connection bucket is still full.
    lim2 = limits(RATE_CONNECTION_SENDS="1", RATE_USER_SENDS="1")
    lim2.admit_action("a", ALICE, "send", 0)
    with pytest.raises(RateLimited):
        lim2.admit_action("b", ALICE, "send", 0)  # the user's bucket is empty
    lim2.admit_action("b", BOB, "send", 0)  # b's connection bucket was not taken from


def test_every_frame_is_counted_once_whatever_its_action():
    lim = limits(RATE_CONNECTION_FRAMES="2", RATE_CONNECTION_TYPING="100")
    lim.admit_frame("c1", 0)
    lim.admit_action("c1", ALICE, "typing", 0)
    lim.admit_frame("c1", 0)
    with pytest.raises(RateLimited):
        lim.admit_frame("c1", 0)


def test_typing_is_counted_once_per_frame():
    lim = limits(RATE_CONNECTION_TYPING="3")
    for _ in range(3):
        lim.admit_action("c1", ALICE, "typing", 0)
    with pytest.raises(RateLimited):
        lim.admit_action("c1", ALICE, "typing", 0)


def test_buckets_are_bounded_and_forgotten_with_their_connection():
    lim = limits(RATE_CONNECTION_RESUMES="1")
    for conn in ("a", "b", "c", "d"):
        lim.admit_action(conn, ALICE, "resume", 0)
    assert len(lim._buckets) == 3  # the least recently used was dropped
    lim.admit_action("a", ALICE, "resume", 0)  # dropped: starts full again
    with pytest.raises(RateLimited):
        lim.admit_action("d", ALICE, "resume", 0)
    lim.forget("d")
    lim.admit_action("d", ALICE, "resume", 0)
