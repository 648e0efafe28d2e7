"""What the services share: the clock, where a frame came from, and reading a conversation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chalicelib.errors import NotFound
from chalicelib.models import Conversation
from chalicelib.services.local_state import HighWaterMarks
from chalicelib.storage.base import ConversationStore

Clock = Callable[[], int]

#: Conversations whose latest seq a container remembers.
LAST_SEQ_CACHE_SIZE = 50_000


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Origin:
    """The connection a frame arrived on, and where its management API lives."""

    connection_id: str
    domain_name: str
    stage: str


class Conversations:
    """Reads a conversation (NotFound when absent) and remembers how far its counter got."""

    def __init__(self, storage: ConversationStore, size: int = LAST_SEQ_CACHE_SIZE) -> None:
        self._storage = storage
        #: The highest ``lastSeq`` this container has seen per conversation (see local_state).
        self.last_seqs = HighWaterMarks(size)

    def get(self, conversation_id: str) -> Conversation:
        conv = self._storage.get_conversation(conversation_id)
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        self.last_seqs.raise_to(conversation_id, conv.last_seq)
        return conv

    def seen(self, conv: Conversation) -> None:
        """A conversation read or reserved elsewhere: remember its counter."""
        self.last_seqs.raise_to(conv.conversation_id, conv.last_seq)
