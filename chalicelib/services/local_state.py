"""What a Lambda container may keep between invocations without asking AWS.

Three things are safe to remember across the frames a container serves:

- **Who is behind a connection.** A connection id is never reused, and
  the principal recorded at ``$connect`` never changes for the life of the
  connection; API Gateway routes frames only from open connections. So a
  container that has looked a connection up once need not read its record
  again for the next frame (one GetItem fewer per frame).
- **What a send was answered with.** An idempotency record never changes
  once written (until it expires), so a resend that reaches the container
  that stored the first copy is answered from memory; elsewhere the
  store's condition answers it.
- **How far a conversation's counter has got.** ``lastSeq`` only grows, so
  an ack up to a seq this container has seen is known to be in range
  without reading the conversation again.

Frame rate limits are kept in the container too (chalicelib/limits.py).

All are bounded: the least recently used entries are dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A thread-safe LRU mapping of at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)


class HighWaterMarks:
    """The highest value seen per key (values only grow), for a bounded number of keys."""

    def __init__(self, size: int) -> None:
        self._marks: BoundedCache[str, int] = BoundedCache(size)
        self._lock = threading.Lock()

    def get(self, key: str, default: int = 0) -> int:
        value = self._marks.get(key)
        return default if value is None else value

    def raise_to(self, key: str, value: int) -> None:
        with self._lock:
            if value > self.get(key):
                self._marks.put(key, value)
