"""boto3 clients, built one way.

boto3 itself reads the region, the credentials and ``AWS_ENDPOINT_URL`` (the
local cloud's moto server, or LocalStack) from its usual sources; oncechat
code never reads ``os.environ`` for them.
"""

from __future__ import annotations

from typing import Any, cast

import boto3
from botocore.config import Config as BotoConfig

#: botocore's "standard" retry mode retries throttling
#: (ThrottlingException, ProvisionedThroughputExceededException,
#: RequestLimitExceeded) and transient 5xx errors with exponential backoff and
#: jitter. It does not retry a TransactionCanceledException: the storage
#: adapter decides about those, since only it knows which cancellations are
#: races to report and which are conflicts worth retrying.
#:
#: ``parameter_validation`` is off: botocore checks every request's
#: parameters against the API model on the client, which costs CPU (billed
#: Lambda time) on every call of the hot path. The requests are built by
#: code, not from user input, and AWS validates them anyway (a mistake is
#: a ValidationException instead of a ParamValidationError).
#:
#: ``max_pool_connections``: a Lambda container serves one event at a time
#: (and the fast path reads on a second thread), but the local cloud runs
#: every event on threads of one process, where botocore's 10 pooled
#: connections ran out and each call beyond them opened a new one.
RETRY_CONFIG = BotoConfig(retries={"mode": "standard", "max_attempts": 5}, parameter_validation=False,
                          max_pool_connections=50)


def client(service: str, session: boto3.session.Session | None = None) -> Any:
    """A low-level client of ``service`` with oncechat's retry policy."""
    session = session or boto3.session.Session()
    return cast(Any, session).client(service, config=RETRY_CONFIG)  # any service name, typed by the caller
