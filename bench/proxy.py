"""A counting endpoint in front of the embedded AWS: ``python -m bench.proxy --port P --target URL``.

The apps' ``AWS_ENDPOINT_URL`` points here. Every request is forwarded
unchanged to the target (moto) and counted by service, operation and
phase (the ``x-bench-phase`` header that ``bench.cloud`` adds to every
request of a Lambda invocation; stripped before forwarding). For DynamoDB
it also computes the capacity units AWS would charge, from the real items
(``bench.capacity``): before a write it reads the item's current version,
after the write the new one, straight from the target (those reads are
not counted) and under a per-key lock, so the two versions belong to this
very write. That mode (``sizes``) can be switched off for timing runs
(``count``), where the extra reads would slow the app down.

Control (not forwarded): ``GET /_bench/stats``, ``DELETE /_bench/stats``
(reset), ``PUT /_bench/mode/sizes`` or ``/_bench/mode/count``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time
import zlib
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from bench import capacity
from bench.capacity import TableShape

PHASE_HEADER = "x-bench-phase"
BACKGROUND_HEADER = "x-bench-background"
UNTAGGED = "untagged"
# Requests Lambda's SQS event source makes on its own (billed by SQS, not made by the app).
EVENT_SOURCE_OPERATIONS = {"ReceiveMessage", "DeleteMessage", "DeleteMessageBatch",
                           "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"}
_CREDENTIAL = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "host",
               "content-length", PHASE_HEADER, BACKGROUND_HEADER}
_NAME_TOKEN = re.compile(r"#[A-Za-z0-9_]+")
_VALUE_TOKEN = re.compile(r":[A-Za-z0-9_]+")
_LOCK_STRIPES = 4096


def _zero() -> dict[str, float]:
    return defaultdict(float)


class Stats:
    """Counters, keyed by (service, operation, phase, detail)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[tuple[str, str, str, str], dict[str, float]] = defaultdict(_zero)
        self.indexes: dict[tuple[str, str, str], dict[str, float]] = defaultdict(_zero)

    def add(self, service: str, operation: str, phase: str, detail: str = "", **values: float) -> None:
        with self._lock:
            row = self.rows[(service, operation, phase, detail)]
            for k, v in values.items():
                row[k] += v

    def add_index(self, table: str, index: str, kind: str, phase: str, writes: int, units: int) -> None:
        with self._lock:
            row = self.indexes[(f"{table}.{index}", kind, phase)]
            row["writes"] += writes
            row["wru"] += units

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            rows = [dict(service=s, operation=o, phase=p, detail=d, **dict(v))
                    for (s, o, p, d), v in sorted(self.rows.items())]
            indexes = [dict(index=i, kind=k, phase=p, **dict(v)) for (i, k, p), v in sorted(self.indexes.items())]
        return {"requests": rows, "index_writes": indexes}

    def reset(self) -> None:
        with self._lock:
            self.rows.clear()
            self.indexes.clear()


class Target:
    """Raw HTTP to the real endpoint (one keep-alive connection per thread)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def dynamodb(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        """An uncounted DynamoDB call (for item versions and table shapes)."""
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{operation}",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, "
                             "SignedHeaders=host, Signature=0",
        }
        status, _, data = self.request("POST", "/", json.dumps(payload).encode(), headers)
        if status != 200:
            raise RuntimeError(f"{operation} -> {status}: {data[:200]!r}")
        return json.loads(data) if data else {}


class DynamoAccounting:
    """Capacity units of DynamoDB requests, from the items before and after."""

    def __init__(self, target: Target, stats: Stats) -> None:
        self.target = target
        self.stats = stats
        self._shapes: dict[str, TableShape] = {}
        self._shape_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def shape(self, table: str) -> TableShape:
        with self._shape_lock:
            shape = self._shapes.get(table)
        if shape is None:
            shape = TableShape.from_description(self.target.dynamodb("DescribeTable", {"TableName": table})["Table"])
            with self._shape_lock:
                self._shapes[table] = shape
        return shape

    def _get(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.target.dynamodb("GetItem", {"TableName": table, "Key": key, "ConsistentRead": True}).get("Item")

    def _locks(self, keys: Iterable[tuple[str, dict[str, Any]]]) -> list[threading.Lock]:
        stripes = sorted({zlib.crc32(json.dumps([t, k], sort_keys=True).encode()) % _LOCK_STRIPES for t, k in keys})
        return [self._stripes[i] for i in stripes]

    # --- writes ------------------------------------------------------------------------

    def writes(self, operation: str, request: dict[str, Any], forward: Any, phase: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Forward a write with its item versions read around it; count units."""
        # (table, key, kind) per item written
        targets: list[tuple[str, dict[str, Any], str]] = []
        if operation == "PutItem":
            table = request["TableName"]
            targets.append((table, self.shape(table).key_of(request["Item"]), "write"))
        elif operation in ("UpdateItem", "DeleteItem"):
            targets.append((request["TableName"], request["Key"], "write"))
        elif operation == "TransactWriteItems":
            for entry in request.get("TransactItems", []):
                ((kind, body),) = entry.items()
                table = body["TableName"]
                key = self.shape(table).key_of(body["Item"]) if kind == "Put" else body["Key"]
                targets.append((table, key, "check" if kind == "ConditionCheck" else "write"))
        elif operation == "BatchWriteItem":
            for table, entries in request.get("RequestItems", {}).items():
                for entry in entries:
                    if "PutRequest" in entry:
                        targets.append((table, self.shape(table).key_of(entry["PutRequest"]["Item"]), "write"))
                    else:
                        targets.append((table, entry["DeleteRequest"]["Key"], "write"))
        locks = self._locks((t, k) for t, k, _ in targets)
        for lock in locks:
            lock.acquire()
        try:
            before = [self._get(t, k) for t, k, _ in targets]
            status, headers, data = forward()
            after = [self._get(t, k) for t, k, _ in targets] if status == 200 else before
        finally:
            for lock in reversed(locks):
                lock.release()
        succeeded = status == 200
        error = _error_code(data) if not succeeded else ""
        if not succeeded and error not in ("ConditionalCheckFailedException", "TransactionCanceledException"):
            return status, headers, data  # not charged (validation errors and the like)
        transactional = operation == "TransactWriteItems"
        wru = 0
        tables = sorted({t for t, _, _ in targets})
        for (table, _, kind), old, new in zip(targets, before, after, strict=True):
            shape = self.shape(table)
            units, index_writes = capacity.write_cost(shape, old, new, succeeded=succeeded,
                                                      transactional=transactional,
                                                      condition_check=kind == "check")
            wru += units
            for w in index_writes:
                self.stats.add_index(table, w.index, w.kind, phase, w.writes, w.units)
                self.stats.add("dynamodb", operation, phase, _detail(tables), index_writes=w.writes, index_wru=w.units)
        self.stats.add("dynamodb", operation, phase, _detail(tables), wru=wru, items=len(targets),
                       cancelled=0 if succeeded else 1, failed_wru=0 if succeeded else wru)
        return status, headers, data

    # --- reads -------------------------------------------------------------------------

    def reads(self, operation: str, request: dict[str, Any], status: int, data: bytes, phase: str) -> None:
        """Count the read units of a read that was already forwarded."""
        if status != 200:
            return
        response = json.loads(data) if data else {}
        rru = 0.0
        tables: list[str] = []
        if operation == "GetItem":
            table = request["TableName"]
            tables = [table]
            item = response.get("Item")
            if item is not None and "ProjectionExpression" in request:
                item = self._get(table, request["Key"])
            rru = capacity.read_units(capacity.item_size(item), bool(request.get("ConsistentRead")))
        elif operation in ("Query", "Scan"):
            tables = [request["TableName"] + (f".{request['IndexName']}" if request.get("IndexName") else "")]
            items = response.get("Items", [])
            if any(k in request for k in ("FilterExpression", "ProjectionExpression")) or request.get("Select") == "COUNT":
                items = self._evaluated(operation, request)
            sizes = [capacity.item_size(i) for i in items]
            rru = capacity.query_units(sizes, bool(request.get("ConsistentRead")))
        elif operation == "BatchGetItem":
            for table, spec in request.get("RequestItems", {}).items():
                tables.append(table)
                for item in response.get("Responses", {}).get(table, []):
                    full = self._get(table, self.shape(table).key_of(item)) if "ProjectionExpression" in spec else item
                    rru += capacity.read_units(capacity.item_size(full), bool(spec.get("ConsistentRead")))
        elif operation == "TransactGetItems":
            for entry, got in zip(request.get("TransactItems", []), response.get("Responses", []), strict=False):
                table = entry["Get"]["TableName"]
                tables.append(table)
                item = self._get(table, entry["Get"]["Key"]) if "ProjectionExpression" in entry["Get"] else got.get("Item")
                rru += capacity.read_units(capacity.item_size(item), transactional=True)
        self.stats.add("dynamodb", operation, phase, _detail(tables), rru=rru)

    def _evaluated(self, operation: str, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The items a Query/Scan page evaluated: the same page without filter or projection."""
        plain = {k: v for k, v in request.items()
                 if k not in ("FilterExpression", "ProjectionExpression", "Select", "ReturnConsumedCapacity",
                              "ExpressionAttributeNames", "ExpressionAttributeValues")}
        used = request.get("KeyConditionExpression", "")
        names = {k: v for k, v in (request.get("ExpressionAttributeNames") or {}).items() if k in _NAME_TOKEN.findall(used)}
        values = {k: v for k, v in (request.get("ExpressionAttributeValues") or {}).items() if k in _VALUE_TOKEN.findall(used)}
        if names:
            plain["ExpressionAttributeNames"] = names
        if values:
            plain["ExpressionAttributeValues"] = values
        return list(self.target.dynamodb(operation, plain).get("Items", []))


def _detail(tables: Iterable[str]) -> str:
    return "+".join(sorted(set(tables)))


def _error_code(data: bytes) -> str:
    try:
        kind = str(json.loads(data).get("__type", ""))
    except ValueError:
        return ""
    return kind.rsplit("#", 1)[-1]


def _operation(headers: Any, body: bytes) -> tuple[str, str]:
    """(service, operation) of an AWS request (JSON or query protocol)."""
    service = ""
    match = _CREDENTIAL.search(headers.get("Authorization", ""))
    if match:
        service = match.group(2)
    target = headers.get("X-Amz-Target")
    if target:
        operation = target.rsplit(".", 1)[-1]
        if not service:
            service = "dynamodb" if target.startswith("DynamoDB") else target.split("_", 1)[0].split(".", 1)[0].lower()
        return service or "unknown", operation
    form = parse_qs(body.decode("utf-8", "replace")) if body else {}
    action = (form.get("Action") or [""])[0]
    return service or "unknown", action or "unknown"


class Proxy:
    """The proxy's state: target, counters, mode."""

    def __init__(self, target_url: str) -> None:
        self.target = Target(target_url)
        self.stats = Stats()
        self.accounting = DynamoAccounting(self.target, self.stats)
        self.sizes = True

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Forward and count one request; its ``overhead_ms`` is the time it spent here and not in AWS.

        That is everything but the forwarded call itself: parsing, the
        accounting's locks and item reads, the counting. ``bench.perf``
        subtracts it from the handler's time, which is then what the
        handler would take behind a plain endpoint. A request made on a
        handler's own thread (``x-bench-background``) ran while the handler
        did something else: its overhead is kept apart and not subtracted.
        """
        started = time.perf_counter()
        upstream_ms = 0.0
        phase = headers.get(PHASE_HEADER) or UNTAGGED
        forward_headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}

        def forward() -> tuple[int, list[tuple[str, str]], bytes]:
            nonlocal upstream_ms
            call_started = time.perf_counter()
            try:
                return self.target.request(method, path, body, forward_headers)
            finally:
                upstream_ms += (time.perf_counter() - call_started) * 1000

        background = bool(headers.get(BACKGROUND_HEADER))

        def overhead() -> dict[str, float]:
            """The request's own time here, unless the handler was not waiting for it, and its time in AWS."""
            spent = (time.perf_counter() - started) * 1000 - upstream_ms
            prefix = "background_" if background else ""
            return {f"{prefix}overhead_ms": spent, f"{prefix}upstream_ms": upstream_ms}

        service, operation = _operation(headers, body)
        if service == "sqs" and operation in EVENT_SOURCE_OPERATIONS and phase == UNTAGGED:
            phase = "event-source"
        if service == "dynamodb":
            request = json.loads(body) if body else {}
            if self.sizes and operation in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"):
                status, resp_headers, data = self.accounting.writes(operation, request, forward, phase)
            else:
                status, resp_headers, data = forward()
                if self.sizes:
                    self.accounting.reads(operation, request, status, data, phase)
            detail = _tables_of(operation, request)
            error = _error_code(data) if status != 200 else ""
            self.stats.add(service, operation, phase, detail, requests=1, errors=1 if status != 200 else 0,
                           cancelled_requests=1 if error == "TransactionCanceledException" else 0,
                           condition_failed=1 if error == "ConditionalCheckFailedException" else 0,
                           **overhead())
            return status, resp_headers, data
        status, resp_headers, data = forward()
        messages = 0
        if service == "sqs" and status == 200 and operation == "ReceiveMessage":
            try:
                messages = len(json.loads(data).get("Messages", []))
            except ValueError:
                messages = data.count(b"<Message>")
        self.stats.add(service, operation, phase, "", requests=1, errors=1 if status >= 300 else 0,
                       messages=messages, **overhead())
        return status, resp_headers, data


def _tables_of(operation: str, request: dict[str, Any]) -> str:
    if "TableName" in request:
        return request["TableName"] + (f".{request['IndexName']}" if request.get("IndexName") else "")
    if operation == "TransactWriteItems":
        return _detail(next(iter(e.values()))["TableName"] for e in request.get("TransactItems", []))
    if operation == "TransactGetItems":
        return _detail(e["Get"]["TableName"] for e in request.get("TransactItems", []))
    return _detail(request.get("RequestItems", {}).keys())


def make_handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY: without it the reply's headers and body leave as two
        # small segments, and Nagle holds the body until the client's
        # delayed ACK (up to 40 ms): a stall per request that is the
        # proxy's, not AWS's, and that lands in every handler's time.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            # Headers and body in one write (end_headers would flush the headers alone).
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(data)
            self.wfile.write(b"".join(self._headers_buffer))
            self._headers_buffer = []

        def _control(self, method: str) -> bool:
            if not self.path.startswith("/_bench/"):
                return False
            self._body()
            if self.path == "/_bench/stats" and method == "DELETE":
                proxy.stats.reset()
            elif self.path.startswith("/_bench/mode/") and method == "PUT":
                proxy.sizes = self.path.rsplit("/", 1)[-1] == "sizes"
            body = dict(proxy.stats.snapshot(), mode="sizes" if proxy.sizes else "count")
            self._reply(200, [("Content-Type", "application/json")], json.dumps(body).encode())
            return True

        def _any(self, method: str) -> None:
            if self._control(method):
                return
            body = self._body()
            try:
                status, headers, data = proxy.handle(method, self.path, self.headers, body)
            except Exception as exc:  # the target is down, or our own bug: say so
                self._reply(502, [("Content-Type", "text/plain")], f"bench proxy: {exc!r}".encode())
                return
            self._reply(status, headers, data)

        def do_GET(self) -> None:
            self._any("GET")

        def do_POST(self) -> None:
            self._any("POST")

        def do_PUT(self) -> None:
            self._any("PUT")

        def do_DELETE(self) -> None:
            self._any("DELETE")

        def do_HEAD(self) -> None:
            self._any("HEAD")

    return Handler


class Server(ThreadingHTTPServer):
    """A threaded HTTP server that does not print a traceback when a client hangs up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a keep-alive connection its client closed
        super().handle_error(request, client_address)


def serve(host: str, port: int, target: str) -> ThreadingHTTPServer:
    """Return a started server (in a daemon thread)."""
    server = Server((host, port), make_handler(Proxy(target)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bench-proxy", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the real endpoint, e.g. http://127.0.0.1:4566")
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), make_handler(Proxy(args.target)))
    print("bench proxy ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
