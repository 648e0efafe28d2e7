"""The independent exactly-once checker.

It knows nothing of oncechat's internals: it compares what every sender
was told (``accepted`` seqs of its messageIds) with what every recipient
application processed (the messages its SDK handed over, in order).

Per conversation, with N the number of distinct accepted messages:
- the accepted seqs are exactly 1..N, one seq per messageId and one
  messageId per seq (else ``seq_errors``);
- every participant processes each seq 1..N exactly once (a missing one is
  ``lost``, a repeated one ``duplicated``), in order (``out_of_order``
  counts each processing that is not the previous seq + 1), with the
  content the sender sent (else ``mismatched``);
- every send was accepted (else ``unaccepted``).

The server's own system messages (lifecycle events such as "assigned")
take seqs of the same sequence, and so do void seqs (a seq reserved by a
send that stored nothing there: a retry, or a handler that died). The
checker learns them from what the recipients processed
(``Processed.system``, ``Processed.void``): every participant must process
each of them exactly once too, the same one at the same seq, and together
with the accepted seqs they must make 1..N.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sent:
    """A message a sender application asked to send."""

    client: str
    conversation_id: str
    message_id: str
    body: str


@dataclass(frozen=True)
class Accepted:
    """What the sender was told: the message's seq."""

    client: str
    conversation_id: str
    message_id: str
    seq: int


@dataclass(frozen=True)
class Processed:
    """A message a recipient application processed."""

    conversation_id: str
    seq: int
    message_id: str
    body: str
    system: bool = False
    void: bool = False


@dataclass
class Report:
    """The checker's verdict; ``ok`` only when every failure count is zero."""

    conversations: int = 0
    sent: int = 0
    accepted: int = 0
    expected_deliveries: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    mismatched: int = 0
    unaccepted: int = 0
    seq_errors: int = 0
    system_messages: int = 0
    void_seqs: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No loss, duplicate, reorder, mismatch, unaccepted send or seq error."""
        return not (self.lost or self.duplicated or self.out_of_order or self.mismatched
                    or self.unaccepted or self.seq_errors)

    def note(self, text: str) -> None:
        """Keep a few examples of what went wrong."""
        if len(self.examples) < 20:
            self.examples.append(text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self) | {"ok": self.ok}


def check(
    sent: list[Sent],
    accepted: list[Accepted],
    processed: dict[str, list[Processed]],
    participants: dict[str, list[str]],
) -> Report:
    """Compare senders' and recipients' records; ``participants`` maps conversation -> client names."""
    report = Report(conversations=len(participants))
    bodies = {(s.conversation_id, s.message_id): s.body for s in sent}
    report.sent = len(bodies)

    seq_of: dict[tuple[str, str], int] = {}
    for a in accepted:
        key = (a.conversation_id, a.message_id)
        if seq_of.setdefault(key, a.seq) != a.seq:
            report.seq_errors += 1
            report.note(f"{key} accepted as seq {seq_of[key]} and {a.seq}")
    report.accepted = len(seq_of)
    for key in bodies:
        if key not in seq_of:
            report.unaccepted += 1
            report.note(f"{key} was never accepted")

    by_conv: dict[str, dict[int, str]] = defaultdict(dict)
    for (cid, mid), seq in seq_of.items():
        if seq in by_conv[cid]:
            report.seq_errors += 1
            report.note(f"{cid} seq {seq} given to {by_conv[cid][seq]} and {mid}")
        by_conv[cid][seq] = mid
    system: dict[str, dict[int, tuple[str, str, bool]]] = defaultdict(dict)
    for client_processed in processed.values():
        for p in client_processed:
            if not (p.system or p.void):
                continue
            known = system[p.conversation_id].setdefault(p.seq, (p.message_id, p.body, p.void))
            if known != (p.message_id, p.body, p.void):
                report.mismatched += 1
                report.note(f"{p.conversation_id}#{p.seq} is two different system messages")
    for cid, events in system.items():
        for seq, (mid, body, void) in events.items():
            if seq in by_conv[cid]:
                report.seq_errors += 1
                report.note(f"{cid} seq {seq} is both {by_conv[cid][seq]} and system {mid}")
                continue
            by_conv[cid][seq] = mid
            bodies[(cid, mid)] = body
            if void:
                report.void_seqs += 1
            else:
                report.system_messages += 1
    for cid, seqs in by_conv.items():
        if sorted(seqs) != list(range(1, len(seqs) + 1)):
            report.seq_errors += 1
            report.note(f"{cid} seqs are not 1..{len(seqs)}")

    for cid, clients in participants.items():
        expected = by_conv.get(cid, {})
        for client in clients:
            mine = [p for p in processed.get(client, []) if p.conversation_id == cid]
            report.expected_deliveries += len(expected)
            seen: set[int] = set()
            previous = 0
            for p in mine:
                if p.seq != previous + 1:
                    report.out_of_order += 1
                    report.note(f"{client} processed {cid}#{p.seq} after #{previous}")
                previous = p.seq
                if p.seq in seen:
                    report.duplicated += 1
                    report.note(f"{client} processed {cid}#{p.seq} again")
                    continue
                seen.add(p.seq)
                mid = expected.get(p.seq)
                if mid is None or mid != p.message_id or bodies.get((cid, mid)) != p.body:
                    report.mismatched += 1
                    report.note(f"{client} processed {cid}#{p.seq} as {p.message_id!r}, sent as {mid!r}")
                    continue
                report.delivered += 1
            missing = set(expected) - seen
            if missing:
                report.lost += len(missing)
                report.note(f"{client} never processed {cid}#{sorted(missing)[:5]}")
    return report
