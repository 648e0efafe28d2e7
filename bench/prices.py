"""The price table of the cost model: every price the benchmark multiplies by, in one place.

us-east-1 list prices. Each entry says what it is charged on, when it was
read and where. Re-check before quoting: AWS changes prices.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """One price: ``usd`` per ``per`` of ``unit``."""

    usd: float
    per: float
    unit: str
    as_of: str
    source: str

    @property
    def each(self) -> float:
        """Dollars per single unit."""
        return self.usd / self.per


M = 1_000_000
_APIGW = "https://aws.amazon.com/api-gateway/pricing/ (WebSocket APIs), us-east-1"
_LAMBDA = "https://aws.amazon.com/lambda/pricing/ (x86, us-east-1)"
_DYNAMODB = "https://aws.amazon.com/dynamodb/pricing/on-demand/ (us-east-1)"
_SQS = "https://aws.amazon.com/sqs/pricing/ (FIFO queues, us-east-1)"
_AS_OF = "2026-11 (late 2026 list prices)"

PRICES: dict[str, Price] = {
    # Every frame from a client and every push to a client, metered in 32 KB units (first 1 billion/month).
    "apigw_ws_message": Price(1.00, M, "WebSocket message (32 KB unit)", _AS_OF, _APIGW),
    "apigw_ws_connection_minute": Price(0.25, M, "connection-minute", _AS_OF, _APIGW),
    "lambda_request": Price(0.20, M, "invocation", _AS_OF, _LAMBDA),
    "lambda_gb_second": Price(0.0000166667, 1, "GB-second (x86)", _AS_OF, _LAMBDA),
    "dynamodb_wru": Price(0.625, M, "write request unit (on-demand)", _AS_OF, _DYNAMODB),
    "dynamodb_rru": Price(0.125, M, "read request unit (on-demand)", _AS_OF, _DYNAMODB),
    # Each 64 KB chunk of a payload is a request; a batch of up to 10 is one request.
    "sqs_fifo_request": Price(0.50, M, "FIFO request (64 KB chunk)", _AS_OF, _SQS),
}

#: The floor every chat pays per delivered message: one WebSocket message in, one out.
FLOOR_PER_MESSAGE = 2 * PRICES["apigw_ws_message"].each
