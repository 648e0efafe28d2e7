"""moto server with DynamoDB's per-request atomicity: ``python -m infra.local.motoserver``.

The stock ``moto_server`` serves requests on concurrent threads, and moto's
DynamoDB is not safe under concurrency: a TransactWriteItems snapshots whole
tables and restores the snapshot when it is cancelled, wiping writes other
threads committed in between. On AWS every request is atomic, so oncechat's
optimistic-concurrency send loop would lose messages on moto under load.

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
import threading
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
    """HTTP/1.1 with keep-alive and no access log.

    The stock server answers HTTP/1.0 and closes every connection, so each
    AWS call pays a TCP handshake and a new thread, and it logs every request;
    together that was most of the server's time under load.
    """

    protocol_version = "HTTP/1.1"

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
