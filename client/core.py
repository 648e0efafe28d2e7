"""The SDK's logic without any I/O: inbox (the seq rule), outbox, acks, backoff.

Nothing here touches a socket, a clock or a file: callers pass ``now``
(monotonic seconds) and act on what the methods return. ``client.sdk``
is the asyncio layer that feeds frames in and writes frames out.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client.errors import ProtocolError

MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_BODY_BYTES = 16384
MAX_SEQ = 2**53 - 1  # seqs are 0 to 2^53 - 1 (docs/protocol.md, Limits)
#: A ``resume`` lists at most this many conversations (docs/protocol.md).
MAX_RESUME_CONVERSATIONS = 100

# Error codes of a send that are worth retrying with the same messageId:
# ``internal`` (the protocol says so) and ``rate_limited`` (nothing was stored).
RETRYABLE_SEND_CODES = frozenset({"internal", "rate_limited"})


def is_seq(value: object) -> bool:
    """Whether a JSON value is a seq: an integer from 0 to 2^53 - 1 (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


@dataclass(frozen=True)
class Message:
    """One message of a conversation, as the app sees it (exactly once, in seq order)."""

    conversation_id: str
    seq: int
    message_id: str
    sender_id: str
    sender_role: str
    body: str
    sent_at: str  # ISO 8601 UTC with milliseconds, assigned by the server
    #: System messages (sender_role "system") only: the lifecycle event
    #: (assigned, transferred, closed, reopened), the status and agent after
    #: it, and the agent it left (transferred, reopened).
    event: str | None = None
    status: str | None = None
    agent_id: str | None = None
    previous_agent_id: str | None = None
    #: A void seq (docs/protocol.md): it carries nothing; the SDK passes over
    #: it and never hands it to the app.
    void: bool = False

    @property
    def is_system(self) -> bool:
        """A lifecycle event of the conversation rather than a user's message."""
        return self.sender_role == "system"

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Message:
        """Build from a ``message`` frame; ProtocolError if a field is missing or mistyped."""
        try:
            msg = cls(
                conversation_id=frame["conversationId"],
                seq=frame["seq"],
                message_id=frame["messageId"],
                sender_id=frame["senderId"],
                sender_role=frame["senderRole"],
                body=frame["body"],
                sent_at=frame["sentAt"],
                event=frame.get("event"),
                status=frame.get("status"),
                agent_id=frame.get("agentId"),
                previous_agent_id=frame.get("previousAgentId"),
                void=frame.get("void") is True,
            )
        except KeyError as exc:
            raise ProtocolError(f"message frame without {exc}") from exc
        if not is_seq(msg.seq) or msg.seq < 1:
            raise ProtocolError(f"message frame with bad seq {msg.seq!r}")
        if not isinstance(msg.conversation_id, str):
            raise ProtocolError("message frame with bad conversationId")
        return msg


@dataclass(frozen=True)
class Accepted:
    """The server stored a message: its seq and time (``duplicate`` on a retry)."""

    conversation_id: str
    message_id: str
    seq: int
    sent_at: str
    duplicate: bool

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Accepted:
        """Build from an ``accepted`` frame; ProtocolError if a field is missing."""
        try:
            acc = cls(frame["conversationId"], frame["messageId"], frame["seq"],
                      frame["sentAt"], frame.get("duplicate") is True)
        except KeyError as exc:
            raise ProtocolError(f"accepted frame without {exc}") from exc
        if not is_seq(acc.seq) or acc.seq < 1:
            raise ProtocolError(f"accepted frame with bad seq {acc.seq!r}")
        if not isinstance(acc.conversation_id, str) or not isinstance(acc.message_id, str):
            raise ProtocolError("accepted frame with bad conversationId or messageId")
        return acc


def validate_send(body: str, message_id: str) -> tuple[str, str] | None:
    """The ``(code, reason)`` the server would refuse this send with, or None."""
    if not MESSAGE_ID_RE.match(message_id):
        return "bad_request", "messageId must be 1 to 64 characters of [A-Za-z0-9_-]"
    if not isinstance(body, str) or not body:
        return "bad_request", "body must be non-empty text"
    if len(body.encode("utf-8")) > MAX_BODY_BYTES:
        return "payload_too_large", f"body over {MAX_BODY_BYTES} bytes"
    return None


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded WITHOUT verifying it (only to learn sub and role)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise ProtocolError("token is not a JWT; pass user_id and role") from exc
    if not isinstance(data, dict):
        raise ProtocolError("token payload is not an object")
    return data


# --------------------------------------------------------------------- backoff


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``.

    ``max_attempts`` is how many consecutive failed connection attempts end
    the client with ConnectionLost (None: never give up).
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry number ``attempt`` (0-based)."""
        return min(self.cap, self.base * 2.0 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, ceiling(attempt)]``."""
        return self.rng.uniform(0, self.ceiling(attempt))

    def exhausted(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failures are enough to give up."""
        return self.max_attempts is not None and failures >= self.max_attempts


# ----------------------------------------------------------------------- inbox


class Inbox:
    """The protocol's client rule, per conversation.

    ``last`` is the highest seq released to the app. A message with
    ``seq == last + 1`` is released (with any buffered successors),
    ``seq <= last`` is dropped, ``seq > last + 1`` is buffered until the gap
    is filled (by a resume's replay, or by the ``accepted`` of an own send).
    """

    def __init__(self, cursors: Mapping[str, int] | None = None) -> None:
        self.last: dict[str, int] = dict(cursors or {})
        self.latest: dict[str, int] = {}  # highest seq known to exist (from frames and resumed)
        self._buffer: dict[str, dict[int, Message]] = {}
        self._paused: set[str] = set()

    def track(self, conversation_id: str, cursor: int = 0) -> None:
        """Know a conversation (so resumes list it), starting after ``cursor`` if new."""
        self._paused.discard(conversation_id)
        self.last.setdefault(conversation_id, cursor)

    def pause(self, conversation_id: str) -> None:
        """Stop listing a conversation the user no longer takes part in, keeping its cursor.

        An agent loses a conversation to a transfer, and may get it back
        later: its cursor stays, so what the app processed before is never
        handed over again. A message of the conversation (or ``track``)
        follows it again.
        """
        self._paused.add(conversation_id)
        self.latest.pop(conversation_id, None)
        self._buffer.pop(conversation_id, None)

    def forget(self, conversation_id: str) -> None:
        """Stop following a conversation (e.g. the user is no longer a participant)."""
        self.last.pop(conversation_id, None)
        self.latest.pop(conversation_id, None)
        self._buffer.pop(conversation_id, None)

    def receive(self, msg: Message) -> list[Message]:
        """Apply the rule to one message; return what is released, in seq order."""
        cid = msg.conversation_id
        self._paused.discard(cid)
        last = self.last.setdefault(cid, 0)
        self.latest[cid] = max(self.latest.get(cid, 0), msg.seq)
        if msg.seq <= last:
            return []
        buffered = self._buffer.setdefault(cid, {})
        buffered.setdefault(msg.seq, msg)  # copies of one seq are the same message
        released: list[Message] = []
        while last + 1 in buffered:
            last += 1
            released.append(buffered.pop(last))
        self.last[cid] = last
        if not buffered:
            del self._buffer[cid]
        return released

    def note_latest(self, latest: Mapping[str, object]) -> None:
        """Record the latest seqs of a ``resumed`` frame (and learn new conversations).

        Values that are not seqs (``true``, ``"3"``, -1) are ignored.
        """
        for cid, seq in latest.items():
            if isinstance(seq, int) and is_seq(seq):
                self.track(cid)
                self.latest[cid] = max(self.latest.get(cid, 0), seq)

    def behind(self) -> dict[str, int]:
        """Conversations with a known gap (buffered or known to exist): ``{cid: last}``."""
        return {cid: last for cid, last in self.last.items() if cid not in self._paused
                and (self.latest.get(cid, 0) > last or cid in self._buffer)}

    def cursors(self) -> dict[str, int]:
        """``{cid: last}`` of the followed conversations a ``resume`` lists (what it sends):
        at most MAX_RESUME_CONVERSATIONS, those with a known gap first."""
        behind = self.behind()
        rest = {cid: last for cid, last in self.last.items() if cid not in self._paused and cid not in behind}
        return dict(itertools.islice({**behind, **rest}.items(), MAX_RESUME_CONVERSATIONS))

    def progress(self) -> int:
        """The sum of every cursor: it grows whenever anything is processed (a resume's progress)."""
        return sum(self.last.values())

    def buffered(self, conversation_id: str) -> list[int]:
        """The buffered (not yet released) seqs of a conversation, sorted."""
        return sorted(self._buffer.get(conversation_id, {}))


# ---------------------------------------------------------------------- outbox


@dataclass
class PendingSend:
    """One message that is not yet ``accepted``."""

    conversation_id: str
    message_id: str
    body: str
    attempts: int = 0  # how many times it was written to a connection
    failures: int = 0  # consecutive retryable errors (internal, rate_limited)
    due_at: float = 0.0  # monotonic time it should be (re)sent; inf while waiting
    answer_by: float | None = None  # when in flight: resend if no answer by then


class Outbox:
    """Every unaccepted message, in the order it was sent, with its retry schedule.

    A message is *due* when it was never sent on the current connection,
    when its answer is overdue (``send_timeout``), or when a retry delay
    after a retryable error has passed. ``ordered=True`` keeps one message
    in flight per conversation, so the server stores them in send order.
    """

    def __init__(self, send_timeout: float = 5.0, ordered: bool = False) -> None:
        self.send_timeout = send_timeout
        self.ordered = ordered
        self._entries: dict[str, PendingSend] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def get(self, message_id: str) -> PendingSend | None:
        """The pending entry of a messageId, if any."""
        return self._entries.get(message_id)

    def entries(self) -> list[PendingSend]:
        """All pending entries in send order."""
        return list(self._entries.values())

    def add(self, entry: PendingSend, now: float = 0.0) -> None:
        """Queue a message; due at once. ValueError on a messageId already pending."""
        if entry.message_id in self._entries:
            raise ValueError(f"messageId {entry.message_id} is already pending")
        entry.due_at, entry.answer_by = now, None
        self._entries[entry.message_id] = entry

    def due(self, now: float) -> list[PendingSend]:
        """Entries to write to the connection now, in send order."""
        out: list[PendingSend] = []
        blocked: set[str] = set()
        for e in self._entries.values():
            if e.answer_by is not None and now >= e.answer_by:
                e.due_at, e.answer_by = now, None  # no answer in time: the send may be lost
            if self.ordered and e.conversation_id in blocked:
                continue
            if e.answer_by is None and e.due_at <= now:
                out.append(e)
            if self.ordered:
                blocked.add(e.conversation_id)  # later ones wait for this one's accepted
        return out

    #: The answer timeout doubles with each unanswered attempt, up to this factor.
    MAX_TIMEOUT_FACTOR = 8

    def mark_sent(self, message_id: str, now: float) -> None:
        """The entry was written to the connection; it expects an answer in time.

        The first attempt waits ``send_timeout``; each further one twice as
        long, up to ``MAX_TIMEOUT_FACTOR`` times: a slow server is not sent
        ever more copies of the same messages (congestion collapse).
        """
        e = self._entries.get(message_id)
        if e is not None:
            factor = min(2 ** e.attempts, self.MAX_TIMEOUT_FACTOR)
            e.attempts += 1
            e.due_at, e.answer_by = float("inf"), now + self.send_timeout * factor

    def accepted(self, message_id: str) -> PendingSend | None:
        """Remove and return the entry of an ``accepted`` (None if not pending)."""
        return self._entries.pop(message_id, None)

    def reject(self, message_id: str) -> PendingSend | None:
        """Remove and return the entry of a final error (None if not pending)."""
        return self._entries.pop(message_id, None)

    def retry_after(self, message_id: str, now: float, delay: float) -> None:
        """A retryable error: send again after ``delay``."""
        e = self._entries.get(message_id)
        if e is not None:
            e.failures += 1
            e.due_at, e.answer_by = now + delay, None

    def connection_changed(self, now: float) -> None:
        """A new connection: everything in flight on the old one is due again now.

        Retry delays of errored entries are kept (the server asked for a pause).
        """
        for e in self._entries.values():
            if e.answer_by is not None or e.due_at == float("inf"):
                e.due_at, e.answer_by = now, None

    def shorten_deadlines(self, now: float, timeout: float) -> None:
        """Some in-flight request failed without saying which (API Gateway's
        ``Internal server error``): answer within ``timeout`` or be resent."""
        for e in self._entries.values():
            if e.answer_by is not None:
                e.answer_by = min(e.answer_by, now + timeout)

    def next_deadline(self) -> float | None:
        """The earliest time something becomes due (None: nothing pending)."""
        times = [e.answer_by if e.answer_by is not None else e.due_at for e in self._entries.values()]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None


# ------------------------------------------------------------------------ acks


class AckTracker:
    """Debounced cumulative acks: per conversation, ack after ``every`` processed
    messages or ``delay`` seconds after the first un-acked one, whichever first."""

    def __init__(self, every: int = 20, delay: float = 5.0) -> None:
        self.every = max(1, every)
        self.delay = delay
        self.acked: dict[str, int] = {}
        self._pending: dict[str, tuple[int, int, float]] = {}  # cid -> (seq, count, first_at)

    def processed(self, conversation_id: str, seq: int, now: float) -> None:
        """The app has processed the conversation up to ``seq``."""
        if seq <= self.acked.get(conversation_id, 0):
            return
        _, count, first = self._pending.get(conversation_id, (0, 0, now))
        self._pending[conversation_id] = (seq, count + 1, first)

    def due(self, now: float) -> dict[str, int]:
        """Acks to send now ``{cid: seq}``; call ``sent`` once they are written."""
        return {cid: seq for cid, (seq, count, first) in self._pending.items()
                if count >= self.every or now >= first + self.delay}

    def pending(self) -> dict[str, int]:
        """Every pending ack (to flush on close)."""
        return {cid: seq for cid, (seq, _, _) in self._pending.items()}

    def sent(self, acks: Mapping[str, int]) -> None:
        """These acks were written to a connection."""
        for cid, seq in acks.items():
            self.acked[cid] = max(self.acked.get(cid, 0), seq)
            current = self._pending.get(cid)
            if current is not None and current[0] <= seq:
                del self._pending[cid]

    def next_deadline(self) -> float | None:
        """When the earliest pending ack falls due (None: nothing pending)."""
        return min((first + self.delay if count < self.every else first
                    for _, count, first in self._pending.values()), default=None)
