"""SQS event source emulator: pollers that invoke ``@app.on_sqs_message`` handlers.

Like Lambda's event source mapping, a poller long-polls the queue (20 s,
SQS's longest wait, by default), gathers up to ``batch_size`` messages
within the batching window, invokes the function once per batch, deletes
the batch on success and leaves it on failure, so it reappears after the
visibility timeout and eventually moves to the dead-letter queue through
the queue's redrive policy (which the SQS backend applies on receive).

Stopping does not wait for a pending long poll (see ``SqsPoller``).

Knowingly differs from AWS: each poller handles one batch at a time, and a
source has a fixed number of pollers (``--sqs-concurrency``) where Lambda
scales the batches it runs in parallel; FIFO order within a group is kept
either way, because the backend does not hand out messages of a group while
an earlier one is in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from infra.local import events
from infra.local.handlers import InvocationCrashed, LambdaFunction
from infra.local.worker import Worker

log = logging.getLogger("infra.local.sqs")

_RECEIVE_MAX = 10  # SQS ReceiveMessage returns at most 10 messages per call.
_BATCH_MAX = 10  # and a *Batch request takes at most 10 entries.

#: SQS's longest long poll (``WaitTimeSeconds``), which Lambda's event source mapping uses.
MAX_WAIT_TIME_S = 20

#: With ``wait_time_s=0`` (short polling), the pause after an empty receive, so the pollers do not spin.
SHORT_POLL_PAUSE_S = 1.0


def check_wait_time(seconds: int) -> int:
    """Return ``seconds`` if it is a valid ``WaitTimeSeconds`` (0..20), else raise ValueError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_WAIT_TIME_S:
        raise ValueError(
            f"the SQS long poll must be a whole number of seconds from 0 to {MAX_WAIT_TIME_S} "
            f"(SQS's limit on WaitTimeSeconds), not {seconds!r}"
        )
    return seconds


@dataclass(frozen=True)
class SqsSourceConfig:
    """One event source mapping: which queue feeds which function, and how."""

    function: LambdaFunction
    queue_name: str
    batch_size: int = 1
    batching_window_s: float = 0.0
    retry_delay_s: int | None = None
    #: ``WaitTimeSeconds`` of each receive: 20 like Lambda; 0 polls short (pausing when empty).
    wait_time_s: int = MAX_WAIT_TIME_S

    def __post_init__(self) -> None:
        check_wait_time(self.wait_time_s)


def queue_name_of(queue: str | None, queue_arn: str | None) -> str:
    """Return the queue name of a Chalice ``SQSEventConfig`` (name or ARN)."""
    if queue:
        return queue
    if queue_arn:
        return queue_arn.rsplit(":", 1)[-1]
    raise ValueError("an SQS event source needs a queue name or ARN")


class SqsPoller(Worker):
    """A thread that feeds one queue to one function.

    stop() waits for an invocation in progress, but not for a pending long
    poll (up to 20 s): the receive is marked as a wait (``Worker._enter_wait``),
    and once stop was requested the poller invokes nothing more. Messages a
    receive still returns after that are made visible again at once
    (``VisibilityTimeout`` 0) rather than processed, so that a stopping cloud
    neither loses them nor holds them invisible for the visibility timeout.
    """

    def __init__(self, sqs_client_factory: Callable[[], Any], config: SqsSourceConfig, region: str,
                 index: int = 0) -> None:
        self.config = config
        self._client_factory = sqs_client_factory
        self._region = region
        super().__init__(f"sqs-{config.function.name}-{index}")

    def _run(self) -> None:
        client = self._client_factory()
        queue_url, source_arn = self._resolve_queue(client)
        if queue_url is None or source_arn is None:
            return
        log.info("polling %s for %s", self.config.queue_name, self.config.function.name)
        while not self._stop.is_set():
            try:
                batch = self._gather(client, queue_url)
            except Exception:
                if self._stop.is_set():
                    return  # the endpoint may already be gone during shutdown
                log.exception("receiving from %s failed; retrying", self.config.queue_name)
                self._stop.wait(1.0)
                continue
            if batch:
                self._process(client, queue_url, source_arn, batch)

    def _resolve_queue(self, client: Any) -> tuple[str | None, str | None]:
        """Find the queue, waiting (with a log line) until it exists."""
        warned = False
        while not self._stop.is_set():
            try:
                url = client.get_queue_url(QueueName=self.config.queue_name)["QueueUrl"]
                arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                    "Attributes"
                ]["QueueArn"]
                return url, arn
            except Exception as exc:
                if not warned:
                    log.warning(
                        "queue %s of %s is not available (%s); retrying every 2 s",
                        self.config.queue_name,
                        self.config.function.name,
                        exc,
                    )
                    warned = True
                self._stop.wait(2.0)
        return None, None

    def _gather(self, client: Any, queue_url: str) -> list[dict[str, Any]]:
        """Receive up to ``batch_size`` messages, waiting at most the batching window.

        Returns an empty batch once stop was requested: whatever was
        received by then has been made visible again.
        """
        batch: list[dict[str, Any]] = []
        window_end = None
        while len(batch) < self.config.batch_size:
            wait = self.config.wait_time_s
            if window_end is not None:
                remaining = window_end - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(wait, max(0, int(remaining)))
            if not self._enter_wait():
                self._release(client, queue_url, batch)
                return []
            try:
                response = client.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=min(_RECEIVE_MAX, self.config.batch_size - len(batch)),
                    WaitTimeSeconds=wait,
                    AttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            finally:
                going_on = self._leave_wait()
            messages = response.get("Messages", [])
            batch.extend(messages)
            if not going_on:
                # stop() may have returned already without waiting for this
                # receive, so the poller must not invoke the function now. Rather
                # than processing the messages (which would make stop() wait after
                # all) or leaving them invisible for the visibility timeout, make
                # them visible again at once for the next consumer.
                self._release(client, queue_url, batch)
                return []
            if not batch:
                if window_end is None:
                    if wait == 0:
                        self._stop.wait(SHORT_POLL_PAUSE_S)
                    return batch  # nothing yet: poll again (lets stop() be seen)
                continue
            if window_end is None:
                window_end = time.monotonic() + self.config.batching_window_s
            if not messages and wait == 0:
                break
            if self.config.batching_window_s <= 0:
                break
        return batch

    def _process(self, client: Any, queue_url: str, source_arn: str, batch: list[dict[str, Any]]) -> None:
        event = events.sqs_event(batch, source_arn, self._region)
        try:
            self.config.function.invoke(event)
        except InvocationCrashed:
            # Logged in one line where it was injected: no traceback.
            self._after_failure(client, queue_url, batch)
            return
        except Exception:
            log.exception(
                "%s failed on a batch of %d from %s; the messages stay in the queue",
                self.config.function.name,
                len(batch),
                self.config.queue_name,
            )
            self._after_failure(client, queue_url, batch)
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        result = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        for failure in result.get("Failed", []):
            log.warning("could not delete a message from %s: %s", self.config.queue_name, failure)

    def _after_failure(self, client: Any, queue_url: str, batch: list[dict[str, Any]]) -> None:
        """With ``--sqs-retry-delay``, make a failed batch visible again sooner.

        Knowingly differs from AWS when set: Lambda leaves the messages
        invisible for the queue's whole visibility timeout.
        """
        delay = self.config.retry_delay_s
        if delay is not None:
            self._change_visibility(client, queue_url, batch, delay, "a failed batch")

    def _release(self, client: Any, queue_url: str, batch: list[dict[str, Any]]) -> None:
        """Make messages received but not to be processed (stopping) visible again at once."""
        if batch:
            self._change_visibility(client, queue_url, batch, 0, "messages received while stopping")

    def _change_visibility(self, client: Any, queue_url: str, batch: list[dict[str, Any]],
                           timeout_s: int, what: str) -> None:
        for start in range(0, len(batch), _BATCH_MAX):
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout_s}
                for i, m in enumerate(batch[start:start + _BATCH_MAX])
            ]
            try:
                result = client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
            except Exception:
                if self._stop.is_set():
                    # The endpoint may be gone already; the messages then reappear
                    # after their visibility timeout.
                    log.warning("could not make %s visible again in %s", what, self.config.queue_name)
                else:
                    log.exception("could not change the visibility of %s", what)
                continue
            for failure in result.get("Failed", []):
                log.warning("could not change the visibility of %s in %s: %s", what,
                            self.config.queue_name, failure)
