"""The shared cases of tests/vectors/client_core.json, driven through client/core.py.

web/sdk/core.js runs the same file (tests/js/vectors.test.js): the two SDK
cores decide every case alike, or one of these suites fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from client.core import (
    RETRYABLE_SEND_CODES,
    Accepted,
    AckTracker,
    Backoff,
    Inbox,
    Message,
    Outbox,
    PendingSend,
)
from client.errors import ProtocolError

pytestmark = pytest.mark.fast

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "client_core.json").read_text())


class _Ceiling:
    """Full jitter at its ceiling: ``uniform(a, b)`` is ``b``, so delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Driver:
    """What client/sdk.py does with the core's parts, minus the socket: frames in, decisions out."""

    def __init__(self, case: dict[str, Any]) -> None:
        opts = {**VECTORS["defaults"], **case.get("options", {})}
        self.user, self.role = opts["user"], opts["role"]
        self.auto_store = opts["autoStore"]
        cursors = case.get("cursors", {})
        self.inbox = Inbox(cursors)
        for cid in case.get("paused", []):
            self.inbox.pause(cid)
        self.outbox = Outbox(opts["sendTimeout"], ordered=opts["ordered"])
        for e in case.get("outbox", []):
            self.outbox.add(PendingSend(e["conversationId"], e["messageId"], e["body"]), 0.0)
        self.acks = AckTracker(opts["ackEvery"], opts["ackDelay"])
        self.acks.acked.update(cursors)
        self.backoff = Backoff(opts["backoff"]["base"], opts["backoff"]["cap"], rng=_Ceiling())  # type: ignore[arg-type]
        self.unstored: list[Message] = []

    def step(self, s: dict[str, Any]) -> dict[str, Any]:
        now = float(s["at"])
        got: dict[str, Any] = {}
        released: list[Message] = []
        if s.get("connect"):
            self.outbox.connection_changed(now)
        if "pause" in s:
            self.inbox.pause(s["pause"])
        if "track" in s:
            self.inbox.track(s["track"])
        if "frame" in s:
            got["outcome"], released = self.frame(s["frame"], now)
        self.unstored += released
        if self.auto_store or s.get("store"):
            for msg in self.unstored:  # stored: only now may it be acked
                self.acks.processed(msg.conversation_id, msg.seq, now)
            self.unstored = []
        got["processed"] = [[m.conversation_id, m.seq] for m in released]
        got["shown"] = [[m.conversation_id, m.seq] for m in released if not m.void]
        sends = [e.message_id for e in self.outbox.due(now)]
        for mid in sends:
            self.outbox.mark_sent(mid, now)
        got["sends"] = sends
        acks = self.acks.due(now)
        self.acks.sent(acks)
        got["acks"] = acks
        resume = self.inbox.cursors() if self.inbox.behind() else None
        got["resume"] = resume
        got["resume_size"] = len(resume or {})
        got["resume_includes"] = resume or {}
        got["followed"] = sorted(self.inbox.cursors())
        got["last"] = dict(self.inbox.last)
        got["buffered"] = {cid: self.inbox.buffered(cid) for cid in self.inbox.last}
        return got

    def frame(self, frame: dict[str, Any], now: float) -> tuple[str, list[Message]]:
        kind = frame["type"]
        if kind == "message":
            try:
                msg = Message.from_frame(frame)
            except ProtocolError:
                return "invalid", []
            before = self.inbox.last.get(msg.conversation_id, 0)
            released = self.inbox.receive(msg)
            return ("dropped" if msg.seq <= before else "processed" if released else "buffered"), released
        if kind == "accepted":
            try:
                acc = Accepted.from_frame(frame)
            except ProtocolError:
                return "invalid", []
            entry = self.outbox.accepted(acc.message_id)
            if entry is None:
                return "ignored", []
            own = Message(acc.conversation_id, acc.seq, acc.message_id, self.user, self.role, entry.body, acc.sent_at)
            return "accepted", self.inbox.receive(own)
        if kind == "error":
            mid, code = frame.get("messageId"), str(frame.get("code", "internal"))
            entry = self.outbox.get(mid) if isinstance(mid, str) else None
            if entry is None:
                return "ignored", []
            if code == "unauthorized":
                return "reconnect", []
            if code in RETRYABLE_SEND_CODES:
                self.outbox.retry_after(entry.message_id, now, self.backoff.delay(entry.failures))
                return "retry", []
            self.outbox.reject(entry.message_id)
            return "rejected", []
        if kind == "resumed":
            self.inbox.note_latest(frame.get("conversations") or {})
            return "noted", []
        raise AssertionError(f"no such frame in the vectors: {kind}")


def check(expect: dict[str, Any], got: dict[str, Any], where: str) -> None:
    for key, want in expect.items():
        have = got[key]
        if key in ("last", "buffered", "resume_includes"):
            have = {cid: have.get(cid) for cid in want}
        assert have == want, f"{where}: {key} is {have!r}, the vectors say {want!r}"


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_the_python_core_decides_each_shared_case_as_the_vectors_say(case: dict[str, Any]) -> None:
    driver = Driver(case)
    for i, s in enumerate(case["steps"]):
        check(s["expect"], driver.step(s), f"{case['name']} step {i} ({case['why']})")


def test_the_vectors_cover_every_decision_of_the_client_rule() -> None:
    outcomes = {s["expect"].get("outcome") for c in VECTORS["cases"] for s in c["steps"]}
    assert {"processed", "dropped", "buffered", "invalid", "noted",
            "accepted", "ignored", "retry", "rejected", "reconnect"} <= outcomes
