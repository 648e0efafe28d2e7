"""The Lambda side: resolve a handler string and invoke it like the Lambda runtime."""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

from infra.local import environ, faults
from infra.local.events import DEFAULT_ACCOUNT_ID, DEFAULT_REGION

Handler = Callable[[dict[str, Any], Any], Any]

log = logging.getLogger("infra.local.lambda")


class InvocationCrashed(Exception):
    """The function's process died during the invocation (an injected crash).

    Event sources treat it like any failed invocation (API Gateway answers
    "Internal server error", an SQS batch stays in the queue); the fault was
    already logged in one line where it was injected, so they log no traceback.
    """


def resolve_handler(handler_string: str) -> Handler:
    """Import ``module.attr`` and return the attribute, as Lambda does.

    For a Chalice app this is the decorated name in ``app.py`` (or a
    blueprint module): Chalice's wrapper around the user function, which is
    exactly what Lambda would call.
    """
    module_name, _, attr = handler_string.rpartition(".")
    if not module_name:
        raise ValueError(f"handler string {handler_string!r} is not 'module.function'")
    module = importlib.import_module(module_name)
    handler = getattr(module, attr)
    if not callable(handler):
        raise TypeError(f"{handler_string} is not callable")
    return handler  # type: ignore[no-any-return]


class LambdaContext:
    """The context object Lambda passes as the second handler argument."""

    def __init__(
        self,
        function_name: str,
        timeout_s: float = 60.0,
        memory_limit_in_mb: int = 128,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT_ID,
    ) -> None:
        self._deadline = time.monotonic() + timeout_s
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        """Return the milliseconds left before the function's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class LambdaFunction:
    """One handler as a named "function": what an event source invokes."""

    name: str
    handler: Handler
    timeout_s: float = 60.0
    #: This function's own variables (``lambda_functions.NAME.environment_variables``).
    environment: Mapping[str, str] | None = None

    def invoke(self, event: dict[str, Any]) -> Any:
        """Call the handler with ``event`` and a fresh context; exceptions propagate.

        An injected crash (:class:`infra.local.faults.InjectedCrash`) becomes
        :class:`InvocationCrashed`: like Lambda after its process died, the
        invocation failed and nothing of the handler runs any more.

        Knowingly differs from AWS: the function timeout is not enforced (a
        Python thread cannot be killed); ``get_remaining_time_in_millis`` still
        counts down so code that checks it behaves.
        """
        context = LambdaContext(self.name, timeout_s=self.timeout_s)
        started = time.monotonic()
        try:
            with environ.function_scope(self.environment), faults.invocation(self.name, event):
                return self.handler(event, context)
        except faults.InjectedCrash as crash:
            raise InvocationCrashed(f"{self.name}: {crash}") from None
        finally:
            log.debug(
                "REPORT %s RequestId: %s Duration: %.1f ms",
                self.name,
                context.aws_request_id,
                (time.monotonic() - started) * 1000,
            )
