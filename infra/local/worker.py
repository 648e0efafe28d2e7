"""A background thread that runs until asked to stop: the shape of every event source."""

from __future__ import annotations

import threading


class Worker:
    """Runs ``_run`` on a daemon thread; ``_run`` watches ``self._stop``."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait for its current invocation to finish."""
        self.request_stop()
        self._thread.join(timeout_s)

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting for it."""
        self._stop.set()

    def _run(self) -> None:
        raise NotImplementedError
