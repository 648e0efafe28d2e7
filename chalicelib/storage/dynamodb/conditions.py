"""The condition expressions of the DynamoDB adapter, from named parts.

Each part says what must hold for a write to happen, next to the race it
settles. Placeholders (``:now``, ``#status``, ...) are bound by the write
that uses the part.
"""

from __future__ import annotations


def all_of(*parts: str) -> str:
    """A condition that holds when every part holds."""
    return " AND ".join(f"({part})" if " OR " in part else part for part in parts)


# ---------------------------------------------------------------- messages

#: The slot at a seq holds nothing yet. The slot is its sender's by
#: reservation (and its messageId's by claim). It is taken only by a twin
#: send of the same claim (a retry that found the slot empty and stored the
#: same message) or by a void, when a reader found it empty past the sweep
#: grace (that send took longer than any send may). ALL_OLD tells the two
#: apart without a read. A void never overwrites a message either: when the
#: slot was filled meanwhile (the send was only slow), that message is what
#: the slot holds. Never an overwrite.
SLOT_EMPTY = "attribute_not_exists(seq)"

#: No claim of this messageId, or an expired one. A retry, or a racing
#: duplicate (the client resent after a timeout while the first send was
#: still running):
#:   t0 A reserves 5           t1 B reserves 6
#:   t2 A claims 5             t3 B fails here -> DuplicateMessage
#: B answers with A's seq (ALL_OLD returns A's record: no read) and leaves 6
#: void (fill_hole). An expired record (TTL deletes late, up to ~48 h)
#: counts as absent, as the interface says.
CLAIM_ABSENT_OR_EXPIRED = "attribute_not_exists(idemKey) OR expiresAt < :now"

#: The claim still names the seq it is moved from (``:from``): of two sends
#: moving the same claim off a void seq, one wins; the other finds the claim
#: moved and answers from it.
CLAIM_AT_SEQ = "seq = :from"

# ----------------------------------------------------------- conversations

CONVERSATION_EXISTS = "attribute_exists(conversationId)"

#: Two creates of one id: exactly one succeeds.
CONVERSATION_ABSENT = "attribute_not_exists(conversationId)"

#: Not closed (``:closed``): a closed conversation reserves no seq (its
#: customer's send reopens it first, through a lifecycle step).
NOT_CLOSED = "#status <> :closed"

#: The sender holds the conversation (``#holder`` is customerId or agentId,
#: by role): checked atomically with the reservation, so an agent
#: transferred away a moment ago cannot reserve a seq.
SENDER_HOLDS = "#holder = :sender"

#: The customer's Idempotency-Key of a POST /conversations, in the
#: idempotency table under its own prefix: a retried POST fails this
#: condition and is answered with the conversation the first one created
#: (ALL_OLD). An expired record (TTL deletes late) counts as absent.
REQUEST_ABSENT_OR_EXPIRED = "attribute_not_exists(idemKey) OR expiresAt < :now"

#: A lifecycle step's conversation is still as read: status and lastSeq
#: (``:bstatus``, ``:blast``). Two racing transitions (two closes, a close
#: and a transfer, two dispatchers assigning one conversation): the first
#: moves lastSeq, the second fails here and re-reads. A retried transition
#: finds the state moved and is refused.
STATUS_AND_SEQ_AS_READ = "#status = :bstatus AND #lastSeq = :blast"
UNASSIGNED = "attribute_not_exists(#agentId)"
ASSIGNED_AS_READ = "#agentId = :bagent"

# ------------------------------------------------------------------ agents

AGENT_EXISTS = "attribute_exists(agentId)"

#: +1 on activeCount only while the agent is online and below capacity, so
#: racing assignments never take an agent over capacity (-1 frees a place,
#: on AGENT_EXISTS only).
AGENT_HAS_ROOM = "#presence = :online AND #activeCount < #capacity"

#: An agent connecting becomes online unless away; an away agent only counts
#: the connection. The two conditions tell the cases apart, so a concurrent
#: status change is never overwritten by a stale read.
NOT_AWAY = "attribute_not_exists(#presence) OR #presence <> :away"
AWAY = "#presence = :away"

#: The steps of a disconnect, each on the count it assumes (the race they
#: settle is drawn in AgentsTable.agent_disconnected, beside the loop that
#: runs them). LAST_CONNECTION: ADD -1 and SET offline in one update (never a moment with
#: 0 connections but still online); ONE_OF_MANY: ADD -1 only; NONE_LEFT: the
#: count is already 0, SET offline (never below 0).
LAST_CONNECTION = "#connections = :one"
ONE_OF_MANY = "#connections > :one"
NONE_LEFT = all_of(AGENT_EXISTS, "attribute_not_exists(#connections) OR #connections <= :zero")

#: Every connect, disconnect and status change rewrites updatedAt, so a
#: correction computed from an older read (``:seen``) never overwrites what
#: happened since.
UNCHANGED_SINCE_READ = "#updatedAt = :seen"

# ----------------------------------------------- connections, cursors, sweep

#: The user's item of connections exists: a removal never creates an empty one.
USER_ITEM_EXISTS = "attribute_exists(connectionId)"

#: Cursors arrive out of order (two connections, a retried frame): a cursor
#: moves forward only (absent or below ``:seq``), and MEMBERSHIP_EXISTS keeps
#: a cursor move from creating a membership.
MEMBERSHIP_EXISTS = "attribute_exists(userId)"
CURSOR_BEHIND = "attribute_not_exists(#cursor) OR #cursor < :seq"

#: The sweep mark never moves back: two sweeps racing leave the later mark.
MARK_BEHIND = "attribute_not_exists(mark) OR mark < :m"

#: A rate-limit bucket below its limit (``:limit``) counts one more hit.
BUCKET_HAS_ROOM = "attribute_not_exists(hits) OR hits < :limit"
