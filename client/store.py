"""Where the SDK keeps its state: the outbox and the cursors.

``MemoryStore`` (the default) lives as long as the client object.
``SqliteStore`` survives a process restart: a restarted client resends its
outbox and resumes from its cursors, so nothing is lost.

Write-ahead order, relied on by ``client.sdk``:

* a message is written to the store *before* it is first sent, and deleted
  only after its ``accepted`` (or a final error) arrived;
* a conversation's cursor is written when the SDK commits a processed
  message (see ``OnceChatClient.commit``), never ahead of what the app got.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from client.core import PendingSend
from client.errors import StoreError


class Store(Protocol):
    """What the SDK persists. Calls come from the event loop thread and must be quick."""

    def bind_user(self, user_id: str) -> None:
        """Claim the store for one user; StoreError if it holds another user's state."""

    def load_outbox(self) -> list[PendingSend]:
        """Unaccepted messages, in the order they were first queued."""

    def put_outbox(self, entry: PendingSend) -> None:
        """Remember an unaccepted message (before it is first sent)."""

    def delete_outbox(self, message_id: str) -> None:
        """Forget a message once accepted or refused for good."""

    def load_cursors(self) -> dict[str, int]:
        """``{conversationId: last processed seq}``."""

    def save_cursor(self, conversation_id: str, seq: int) -> None:
        """Move a conversation's cursor (forward only)."""

    def delete_cursor(self, conversation_id: str) -> None:
        """Forget a conversation."""

    def close(self) -> None:
        """Release resources."""


class MemoryStore:
    """A store that lives in memory: state survives reconnects, not restarts."""

    def __init__(self) -> None:
        self.user_id: str | None = None
        self.outbox: dict[str, PendingSend] = {}
        self.cursors: dict[str, int] = {}

    def bind_user(self, user_id: str) -> None:
        """Claim the store for one user."""
        if self.user_id not in (None, user_id):
            raise StoreError(f"store belongs to {self.user_id!r}, not {user_id!r}")
        self.user_id = user_id

    def load_outbox(self) -> list[PendingSend]:
        """Unaccepted messages in queue order."""
        return [PendingSend(e.conversation_id, e.message_id, e.body) for e in self.outbox.values()]

    def put_outbox(self, entry: PendingSend) -> None:
        """Remember an unaccepted message."""
        self.outbox.setdefault(entry.message_id, PendingSend(entry.conversation_id, entry.message_id, entry.body))

    def delete_outbox(self, message_id: str) -> None:
        """Forget a message."""
        self.outbox.pop(message_id, None)

    def load_cursors(self) -> dict[str, int]:
        """The cursors."""
        return dict(self.cursors)

    def save_cursor(self, conversation_id: str, seq: int) -> None:
        """Move a cursor forward."""
        self.cursors[conversation_id] = max(self.cursors.get(conversation_id, 0), seq)

    def delete_cursor(self, conversation_id: str) -> None:
        """Forget a conversation."""
        self.cursors.pop(conversation_id, None)

    def close(self) -> None:
        """Nothing to release."""


class SqliteStore:
    """A store in one SQLite file (stdlib ``sqlite3``, WAL journal, synchronous=FULL).

    Every write is its own committed transaction, so what a method wrote is
    on disk when it returns. One file holds one user's state; open it from
    one client at a time.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS outbox (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL,
            body TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS cursors (
            conversation_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL);
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            # The SDK calls from one event loop thread; the lock makes other
            # threads (e.g. an app inspecting the store) safe too.
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(self.SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            with self._lock:
                self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def bind_user(self, user_id: str) -> None:
        """Claim the file for one user; StoreError if it holds another user's state."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'user_id'").fetchone()
        if row is not None and row[0] != user_id:
            raise StoreError(f"{self.path} belongs to {row[0]!r}, not {user_id!r}")
        if row is None:
            self._write("INSERT INTO meta (key, value) VALUES ('user_id', ?)", (user_id,))

    def load_outbox(self) -> list[PendingSend]:
        """Unaccepted messages in queue order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT conversation_id, message_id, body FROM outbox ORDER BY position").fetchall()
        return [PendingSend(cid, mid, body) for cid, mid, body in rows]

    def put_outbox(self, entry: PendingSend) -> None:
        """Remember an unaccepted message (committed when this returns)."""
        self._write("INSERT OR IGNORE INTO outbox (message_id, conversation_id, body) VALUES (?, ?, ?)",
                    (entry.message_id, entry.conversation_id, entry.body))

    def delete_outbox(self, message_id: str) -> None:
        """Forget a message."""
        self._write("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    def load_cursors(self) -> dict[str, int]:
        """The cursors."""
        with self._lock:
            rows = self._db.execute("SELECT conversation_id, seq FROM cursors").fetchall()
        return {cid: int(seq) for cid, seq in rows}

    def save_cursor(self, conversation_id: str, seq: int) -> None:
        """Move a cursor forward (a lower seq never overwrites a higher one)."""
        self._write(
            "INSERT INTO cursors (conversation_id, seq) VALUES (?, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            (conversation_id, seq))

    def delete_cursor(self, conversation_id: str) -> None:
        """Forget a conversation."""
        self._write("DELETE FROM cursors WHERE conversation_id = ?", (conversation_id,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
