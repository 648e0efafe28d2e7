"""moto server with DynamoDB's per-request atomicity: ``python -m infra.local.motoserver``.

The stock ``moto_server`` serves requests on concurrent threads, and moto's
DynamoDB is not safe under concurrency: a TransactWriteItems snapshots whole
tables and restores the snapshot when it is cancelled, wiping writes other
threads committed in between. On AWS every request is atomic; on moto under
load oncechat's send (which reserves a seq, claims the messageId and stores
the message, each a conditional write) would lose messages.

This launcher keeps moto's threaded server (an SQS long poll must not block
everybody else) but runs every request except ``ReceiveMessage`` under one
lock, which gives each request the atomicity AWS gives it. For parity the
long poll runs unlocked, as SQS serves it concurrently. It also applies
``moto_patches`` (transactions that do not copy whole tables, queries
that read one partition or one index hash key instead of the whole table,
FIFO long polls that wait instead of spinning).
"""

from __future__ import annotations

import argparse
import io
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, run_simple

from infra.local import moto_patches

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Requests that may wait (long polls) and so never take the lock.
UNLOCKED_TARGETS = ("AmazonSQS.ReceiveMessage",)


class SerializedRequests:
    """WSGI middleware: one request at a time, except the unlocked targets."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        query = environ.get("QUERY_STRING", "")
        if target in UNLOCKED_TARGETS or "Action=ReceiveMessage" in query:
            return self.app(environ, start_response)
        with self.lock:
            # Materialize the body inside the lock: moto builds it eagerly anyway.
            return list(self.app(environ, start_response))


class KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, TCP_NODELAY and no access log.

    werkzeug's server answers every request with ``Connection: close`` (its
    handler cannot tell the next request line from an unread body), so each
    AWS call would pay a TCP handshake and a new server thread: under load,
    more of both processes' time than moto's own work. This handler reads
    the whole body before the app runs, so the next request on the
    connection starts where this one ended, and sends the response with a
    ``Content-Length`` in one write (no Nagle stall between headers and
    body). The connection stays open unless the client asked to close it.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        chunked = environ.get("wsgi.input_terminated", False)
        body = environ["wsgi.input"].read() if chunked else environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        status, headers, payload = self._call(environ)
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for key, value in headers:
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()  # status, headers and body in one write

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run the app to completion: its status, headers and whole body."""
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return written.append

        try:
            result = self.server.app(environ, start_response)
            try:
                written.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            self.log("error", "Error on request:\n%s", traceback.format_exc())
            self.close_connection = True
            body = b'{"__type":"InternalFailure","message":"local cloud error"}'
            return "500 Internal Server Error", [("Content-Type", "application/json")], body
        return started[0], started[1], b"".join(written)

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    """Serve moto on ``--host``/``--port`` until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m infra.local.motoserver", description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    args = parser.parse_args(argv)
    moto_patches.apply()
    app = SerializedRequests(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False, use_debugger=False,
               request_handler=KeepAliveHandler)


if __name__ == "__main__":
    main()
