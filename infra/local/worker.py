"""A background thread that runs until asked to stop: the shape of every event source."""

from __future__ import annotations

import threading


class Worker:
    """Runs ``_run`` on a daemon thread; ``_run`` watches ``self._stop``.

    ``_run`` may bracket a blocking call that does nothing stop() must wait
    for (an SQS long poll) with ``_enter_wait`` and ``_leave_wait``; stop()
    then returns without waiting for that call to end.
    """

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._state = threading.Condition()
        self._waiting = False  # inside _enter_wait .. _leave_wait
        self._finished = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        """Start in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait for its current invocation to finish.

        A thread waiting between ``_enter_wait`` and ``_leave_wait`` is not
        waited for: it ends when that call returns, without starting
        anything new.
        """
        self.request_stop()
        if self._thread.ident is None:
            return  # never started
        with self._state:
            self._state.wait_for(lambda: self._finished or self._waiting, timeout_s)

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting for it."""
        self._stop.set()

    @property
    def waiting(self) -> bool:
        """True while the thread is in a wait that stop() does not wait for."""
        with self._state:
            return self._waiting

    def is_alive(self) -> bool:
        """True until the thread has ended."""
        return self._thread.is_alive()

    def _enter_wait(self) -> bool:
        """Mark the start of a wait stop() need not wait for; False if stop was already requested."""
        with self._state:
            if self._stop.is_set():
                return False
            self._waiting = True
            self._state.notify_all()
            return True

    def _leave_wait(self) -> bool:
        """Mark its end; False if stop was requested meanwhile.

        On False the caller must not start anything stop() would wait for
        (stop() may already have returned). The check and the mark are one
        step under the lock, so stop() either saw the thread waiting (and
        this returns False) or sees it busy (and waits for it).
        """
        with self._state:
            self._waiting = False
            return not self._stop.is_set()

    def _main(self) -> None:
        try:
            self._run()
        finally:
            with self._state:
                self._finished = True
                self._state.notify_all()

    def _run(self) -> None:
        raise NotImplementedError
