"""API Gateway WebSocket emulator: the WebSocket endpoint and the ``@connections`` API.

One aiohttp server serves both, on one port, like API Gateway serves
``wss://{domain}/{stage}`` and ``https://{domain}/{stage}/@connections``.

Layers: this module is the transport and the gateway (connections, routing,
limits); it builds events with :mod:`infra.local.events` and hands them to
plain callables ``route(event) -> response``, one per route key, so it knows
nothing about Chalice and custom route keys work.

Every frame is its own invocation on a thread pool, so frames of one
connection may be handled in parallel, as on AWS. Connections are isolated
from each other as on AWS, where each frame is its own Lambda invocation:
each connection queues its frames in a bounded queue and runs at most
``frame_concurrency`` of them at once; the invocation slots go round-robin
over the connections with frames waiting, so one connection flooding frames
delays every other connection by at most one frame per slot; ``$connect`` and
``$disconnect`` run on their own threads and never wait behind frames. A
frame that arrives while its connection's queue is full is not invoked: the
client gets API Gateway's throttling answer, an error frame
``{"message": "Too Many Requests", ...}``, and the connection stays open
(docs/local-cloud.md).

The gateway's share of fault injection (:mod:`infra.local.faults`) is here:
dropped connections, duplicated frames and failing ``@connections`` POSTs,
plus the control endpoint ``/_local/faults`` outside every stage path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from infra.local import events, faults
from infra.local.events import ApiInfo, ConnectionInfo
from infra.local.handlers import InvocationCrashed

Route = Callable[[dict[str, Any]], Any]

log = logging.getLogger("infra.local.gateway")

# AWS limits (https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html).
AWS_IDLE_TIMEOUT_S = 600.0
AWS_MAX_CONNECTION_DURATION_S = 7200.0
AWS_MAX_MESSAGE_BYTES = 128 * 1024

_CLOSE_NO_STATUS = 1005  # RFC 6455 7.4.1: close frame without a status code
_CLOSE_ABNORMAL = 1006  # RFC 6455 7.4.1: connection dropped without a close frame
_ABNORMAL_REASON = "Connection closed abnormally"
# API Gateway closes a connection that sends a binary frame with 1003 (unsupported data).
_CLOSE_UNSUPPORTED_DATA = 1003
_BINARY_REASON = "Binary frames are not supported"
THROTTLED_MESSAGE = "Too Many Requests"

DEFAULT_MAX_QUEUED_FRAMES = 1000
DEFAULT_FRAME_CONCURRENCY = 8
_LIFECYCLE_WORKERS = 8

FAULTS_PATH = "/_local/faults"


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of one emulated WebSocket API stage."""

    host: str = "127.0.0.1"
    port: int = 8001
    stage: str = "api"
    api_id: str = field(default_factory=events.new_api_id)
    idle_timeout_s: float = AWS_IDLE_TIMEOUT_S
    max_connection_duration_s: float = AWS_MAX_CONNECTION_DURATION_S
    max_message_bytes: int = AWS_MAX_MESSAGE_BYTES
    #: Frames one connection may have waiting for an invocation; more are throttled.
    max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES
    #: Frames of one connection invoked at once (the rest wait in its queue).
    frame_concurrency: int = DEFAULT_FRAME_CONCURRENCY
    #: Route keys with a route response (two-way routes): the body the
    #: integration returns is sent to the client. Other routes drop it, as on AWS.
    two_way_routes: frozenset[str] = frozenset()

    @property
    def domain_name(self) -> str:
        """The ``domainName`` handlers see: ``host:port`` of this server."""
        return f"{self.host}:{self.port}"

    @property
    def api(self) -> ApiInfo:
        """The identity of the API stage that goes into every event."""
        return ApiInfo(api_id=self.api_id, stage=self.stage, domain_name=self.domain_name)


@dataclass
class _Connection:
    """Gateway-side state of one client connection."""

    info: ConnectionInfo
    state: str = "connecting"  # connecting -> open -> closed
    ws: web.WebSocketResponse | None = None
    transport: asyncio.Transport | None = None
    last_active_ms: int = 0
    close_cause: tuple[int, str] | None = None
    disconnected: bool = False
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: deque[str | bytes] = field(default_factory=deque)
    inflight: int = 0
    scheduled: bool = False  # in the gateway's round-robin of connections with frames waiting


def _status_of(response: Any) -> int:
    """Read the status code of a ``$connect`` integration response.

    For parity with a Lambda proxy integration: a dict with ``statusCode``
    decides; anything else (``None`` included) counts as 200.
    """
    if isinstance(response, Mapping) and "statusCode" in response:
        try:
            return int(response["statusCode"])
        except (TypeError, ValueError):
            return 502
    return 200


def _aws_error(status: int, error_type: str, message: str | None) -> web.Response:
    """Build an error response in the shape botocore's rest-json parser maps to exceptions."""
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode("utf-8"),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type},
    )


def _internal_error() -> web.Response:
    """API Gateway's answer when it fails internally (an injected push fault)."""
    return _aws_error(500, "InternalServerErrorException", "Internal server error")


class WebSocketGateway:
    """The emulated API: owns the connections and runs routes on an executor."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        config: GatewayConfig,
        executor: Executor,
        injector: faults.FaultInjector | None = None,
        slots: int | None = None,
    ) -> None:
        """:param slots: frames invoked at once over all connections (default: the executor's threads)."""
        self.routes = dict(routes)
        self.config = config
        self.faults = injector if injector is not None else faults.FaultInjector(enabled=False)
        self._executor = executor
        # $connect and $disconnect never wait behind frames.
        self._lifecycle_executor = ThreadPoolExecutor(_LIFECYCLE_WORKERS, thread_name_prefix="lambda-connect")
        self._slots = max(1, slots or getattr(executor, "_max_workers", 0) or 1)
        self._running = 0
        self._ready: deque[_Connection] = deque()
        self.throttled = 0
        self._connections: dict[str, _Connection] = {}
        self._runner: web.AppRunner | None = None
        # asyncio keeps only weak references to tasks: hold them until done.
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped_bodies: set[str] = set()  # one-way routes whose dropped body was logged

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle ------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Return the aiohttp application of the WebSocket and management endpoints."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        stage = self.config.stage
        app.router.add_get(f"/{stage}", self._handle_websocket)
        # For parity: API Gateway accepts the stage URL with a trailing slash too.
        app.router.add_get(f"/{stage}/", self._handle_websocket)
        management = f"/{stage}/@connections/{{connection_id}}"
        app.router.add_post(management, self._handle_post)
        app.router.add_get(management, self._handle_get)
        app.router.add_delete(management, self._handle_delete)
        app.router.add_get(FAULTS_PATH, self._handle_get_faults)
        app.router.add_put(FAULTS_PATH, self._handle_put_faults)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    async def start(self) -> None:
        """Start listening on the configured host and port."""
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Close every connection (running ``$disconnect``) and stop listening."""
        for conn in list(self._connections.values()):
            await self._server_close(conn, WSCloseCode.GOING_AWAY, "Going away")
        if self._runner is not None:
            await self._runner.cleanup()
        self._lifecycle_executor.shutdown(wait=False, cancel_futures=True)

    # --- WebSocket endpoint -----------------------------------------------------

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message_bytes, autoping=True)
        if not ws.can_prepare(request).ok:
            # A plain HTTP GET on the stage URL is no WebSocket handshake.
            return _aws_error(426, "UpgradeRequired", "Upgrade Required")
        conn = self._new_connection(request)
        self._connections[conn.info.connection_id] = conn
        # The connection exists (and answers 410) while $connect runs: AWS only
        # opens it for the management API once $connect has returned.
        rejected = await self._run_connect(conn, request)
        if rejected is not None:
            conn.state = "closed"
            self._connections.pop(conn.info.connection_id, None)
            return rejected
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):
            # The client left during $connect: for parity, no $disconnect for
            # a connection that was never established.
            conn.state = "closed"
            self._connections.pop(conn.info.connection_id, None)
            raise
        conn.ws = ws
        conn.transport = request.transport
        conn.state = "open"
        conn.last_active_ms = events.now_ms()
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            self.config.max_connection_duration_s,
            lambda: self._spawn(self._server_close(conn, WSCloseCode.GOING_AWAY, "Going away")),
        )
        try:
            await self._receive_loop(conn, ws)
        finally:
            expiry.cancel()
            await self._run_disconnect(conn)
        return ws

    def _new_connection(self, request: web.Request) -> _Connection:
        pairs = [(k, v) for k, v in request.headers.items()]
        present = {k.lower() for k, _ in pairs}
        peer = request.remote or "127.0.0.1"
        # For parity: API Gateway adds these headers in front of the integration.
        for name, value in (
            ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{events.new_api_id()}{events.new_api_id()[:4]}"),
            ("X-Forwarded-For", peer),
            ("X-Forwarded-Port", str(self.config.port)),
            ("X-Forwarded-Proto", "http"),
        ):
            if name.lower() not in present:
                pairs.append((name, value))
        single, multi = events.fold_pairs(pairs)
        return _Connection(
            info=ConnectionInfo(
                connection_id=events.new_aws_id(),
                connected_at_ms=events.now_ms(),
                source_ip=peer,
                user_agent=request.headers.get("User-Agent"),
                headers=single,
                multi_value_headers=multi,
            )
        )

    async def _run_connect(self, conn: _Connection, request: web.Request) -> web.Response | None:
        """Run ``$connect``; return the rejection response, or None to accept."""
        route = self.routes.get("$connect")
        if route is None:
            return None
        event = events.websocket_connect_event(self.config.api, conn.info, list(request.query.items()))
        try:
            response = await asyncio.get_running_loop().run_in_executor(self._lifecycle_executor, route, event)
        except Exception:
            log.exception("$connect of %s raised; rejecting with 500", conn.info.connection_id)
            return _aws_error(500, "InternalServerErrorException", "Internal server error")
        status = _status_of(response)
        if 200 <= status < 300:
            return None
        log.info("$connect rejected %s with %s", conn.info.connection_id, status)
        body = response.get("body") if isinstance(response, Mapping) else None
        return web.Response(status=status, text=body if isinstance(body, str) else None)

    async def _receive_loop(self, conn: _Connection, ws: web.WebSocketResponse) -> None:
        last_client_frame = time.monotonic()
        while True:
            remaining = self.config.idle_timeout_s - (time.monotonic() - last_client_frame)
            try:
                # Only data frames reset the idle timer; pings are answered by
                # aiohttp and do not count, the conservative reading of AWS's
                # "idle connection timeout".
                async with asyncio.timeout(max(remaining, 0.001)):
                    msg = await ws.receive()
            except TimeoutError:
                await self._server_close(conn, WSCloseCode.GOING_AWAY, "Going away")
                return
            if msg.type == WSMsgType.BINARY:
                # For parity: API Gateway does not take binary frames; it closes
                # the connection with 1003 and invokes nothing for the frame.
                await self._server_close(conn, _CLOSE_UNSUPPORTED_DATA, _BINARY_REASON)
                return
            if msg.type == WSMsgType.TEXT:
                last_client_frame = time.monotonic()
                conn.last_active_ms = events.now_ms()
                self._receive_frame(conn, msg.data)
                continue
            if msg.type == WSMsgType.CLOSE:
                code = int(msg.data) if msg.data else _CLOSE_NO_STATUS
                reason = msg.extra or ""
                if code == _CLOSE_NO_STATUS and not reason:
                    reason = "Client-side close frame status not set"
                self._set_cause(conn, code, reason)
            elif msg.type == WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                if msg.data.code == WSCloseCode.MESSAGE_TOO_BIG:
                    self._set_cause(conn, int(WSCloseCode.MESSAGE_TOO_BIG), "Message too big")
                else:
                    self._set_cause(conn, int(msg.data.code), str(msg.data))
            # CLOSED without a close frame first: the TCP connection dropped.
            self._set_cause(conn, _CLOSE_ABNORMAL, _ABNORMAL_REASON)
            if not ws.closed:
                try:
                    await ws.close()
                except ConnectionError:
                    pass  # the transport is gone (dropped)
            return

    def _receive_frame(self, conn: _Connection, data: str | bytes) -> None:
        """Dispatch one client frame, unless an injected fault says otherwise."""
        cid = conn.info.connection_id
        if self.faults.decide(faults.DROP_CONNECTION):
            dispatched = self.faults.choice(2) == 1
            what = "after dispatching" if dispatched else "losing"
            self.faults.record(faults.DROP_CONNECTION, f"gateway dropped {cid} {what} a client frame")
            if dispatched:
                self._enqueue(conn, data)
            self._drop(conn)
            return
        self._enqueue(conn, data)
        if self.faults.inject(faults.DUPLICATE_FRAME, f"gateway dispatched a frame of {cid} twice"):
            # Two independent invocations, each with its own requestId and
            # messageId, as an at-least-once gateway would make them.
            self._enqueue(conn, data)

    # --- isolation: bounded per-connection queues, round-robin invocation slots ----

    def _enqueue(self, conn: _Connection, data: str | bytes) -> None:
        """Queue one frame of ``conn`` for invocation, or throttle it when the queue is full."""
        if len(conn.pending) >= self.config.max_queued_frames:
            self.throttled += 1
            log.warning("throttled a frame of %s: %d frames waiting", conn.info.connection_id, len(conn.pending))
            self._spawn(self._send_error(conn, THROTTLED_MESSAGE, events.new_aws_id()))
            return
        conn.pending.append(data)
        self._schedule(conn)
        self._pump()

    def _schedule(self, conn: _Connection) -> None:
        if conn.pending and not conn.scheduled and conn.inflight < self.config.frame_concurrency:
            conn.scheduled = True
            self._ready.append(conn)

    def _pump(self) -> None:
        """Start frames while slots are free, one per connection per turn."""
        while self._running < self._slots and self._ready:
            conn = self._ready.popleft()
            conn.scheduled = False
            if not conn.pending or conn.inflight >= self.config.frame_concurrency:
                continue
            data = conn.pending.popleft()
            conn.inflight += 1
            self._running += 1
            self._schedule(conn)  # to the back of the line, behind every other connection
            self._spawn(self._run_frame(conn, data))

    async def _run_frame(self, conn: _Connection, data: str | bytes) -> None:
        try:
            await self._dispatch(conn, data)
        finally:
            conn.inflight -= 1
            self._running -= 1
            self._schedule(conn)
            self._pump()

    def _drop(self, conn: _Connection) -> None:
        """Abort the TCP connection with no close frame; ``$disconnect`` follows (1006).

        The receive loop sees the transport close and runs ``$disconnect``,
        as AWS does for a connection that dropped.
        """
        self._set_cause(conn, _CLOSE_ABNORMAL, _ABNORMAL_REASON)
        conn.state = "closed"  # the management API answers 410 from now on
        if conn.transport is not None:
            conn.transport.abort()

    @staticmethod
    def _set_cause(conn: _Connection, code: int, reason: str) -> None:
        if conn.close_cause is None:
            conn.close_cause = (code, reason)

    async def _dispatch(self, conn: _Connection, data: str | bytes) -> None:
        """Run the route of one frame; report failures to the client like AWS."""
        route_key = events.select_route(data, self.routes)
        if route_key is None:
            await self._send_error(conn, "Forbidden", events.new_aws_id())
            return
        event = events.websocket_message_event(self.config.api, conn.info, route_key, data)
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.routes[route_key], event)
            body = result.get("body") if isinstance(result, dict) else None
            if isinstance(body, str) and body:
                if route_key in self.config.two_way_routes:
                    await self._route_response(conn, body)
                elif route_key not in self._dropped_bodies:
                    self._dropped_bodies.add(route_key)
                    log.warning("route %s returned a body but has no route response: dropped, "
                                "as on AWS (declare an AWS::ApiGatewayV2::RouteResponse)", route_key)
        except InvocationCrashed:
            # Already logged where the crash was injected; the client learns
            # of it exactly as of any failed integration.
            await self._send_error(conn, "Internal server error", event["requestContext"]["requestId"])
        except Exception:
            log.exception("route %s of %s raised", route_key, conn.info.connection_id)
            await self._send_error(conn, "Internal server error", event["requestContext"]["requestId"])

    async def _route_response(self, conn: _Connection, body: str) -> None:
        """Send a two-way route's response to the connection the frame came from."""
        try:
            await self._send(conn, body)
        except ConnectionError:
            pass  # the client left meanwhile; AWS drops the response too

    async def _send_error(self, conn: _Connection, message: str, request_id: str) -> None:
        frame = events.gateway_error_frame(message, conn.info.connection_id, request_id)
        try:
            await self._send(conn, frame)
        except ConnectionError:
            pass

    async def _send(self, conn: _Connection, data: str | bytes) -> None:
        ws = conn.ws
        if conn.state != "open" or ws is None or ws.closed:
            raise ConnectionResetError(conn.info.connection_id)
        async with conn.send_lock:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)

    async def _server_close(self, conn: _Connection, code: int, reason: str) -> None:
        """Close a connection from the gateway side (limits, DELETE, shutdown)."""
        self._set_cause(conn, int(code), reason)
        ws = conn.ws
        if ws is not None and not ws.closed:
            await ws.close(code=code, message=reason.encode("utf-8"))

    async def _run_disconnect(self, conn: _Connection) -> None:
        """Run ``$disconnect`` exactly once, whoever closed the connection."""
        if conn.disconnected:
            return
        conn.disconnected = True
        conn.state = "closed"
        self._connections.pop(conn.info.connection_id, None)
        code, reason = conn.close_cause or (_CLOSE_ABNORMAL, _ABNORMAL_REASON)
        route = self.routes.get("$disconnect")
        if route is None:
            return
        event = events.websocket_disconnect_event(self.config.api, conn.info, code, reason)
        try:
            await asyncio.get_running_loop().run_in_executor(self._lifecycle_executor, route, event)
        except Exception:
            # For parity: $disconnect is best effort, its failure reaches no one.
            log.exception("$disconnect of %s raised", conn.info.connection_id)

    # --- management API -----------------------------------------------------------

    def _open_connection(self, request: web.Request) -> _Connection | None:
        conn = self._connections.get(request.match_info["connection_id"])
        if conn is None or conn.state != "open":
            return None
        return conn

    async def _handle_post(self, request: web.Request) -> web.Response:
        data = await request.read()
        if len(data) > self.config.max_message_bytes:
            return _aws_error(413, "PayloadTooLargeException", "Request entity too large")
        conn = self._open_connection(request)
        if conn is None:
            return _aws_error(410, "GoneException", None)
        cid = conn.info.connection_id
        if self.faults.inject(faults.PUSH_FAIL, f"POST @connections/{cid} answered 500, nothing delivered"):
            return _internal_error()
        if self.faults.inject(faults.LOSE_PUSH, f"POST @connections/{cid} answered 200, nothing delivered (a loss)"):
            return web.Response(status=200)
        try:
            payload: str | bytes = data.decode("utf-8")
        except UnicodeDecodeError:
            payload = data
        if self.faults.decide(faults.DROP_CONNECTION):
            return await self._drop_on_push(conn, payload)
        try:
            await self._send(conn, payload)
        except ConnectionError:
            return _aws_error(410, "GoneException", None)
        conn.last_active_ms = events.now_ms()
        if self.faults.inject(faults.PUSH_LOST_ACK, f"POST @connections/{cid} delivered, then answered 500"):
            return _internal_error()
        return web.Response(status=200)

    async def _drop_on_push(self, conn: _Connection, payload: str | bytes) -> web.Response:
        """Drop the connection around a push: before it (410) or just after it (200).

        After: the frame was handed to the socket, then the transport is
        aborted, so the client may or may not have it, and the caller was
        told it was sent; AWS gives no stronger promise for a connection
        that drops while a frame is on its way.
        """
        cid = conn.info.connection_id
        if self.faults.choice(2) == 1:
            self.faults.record(faults.DROP_CONNECTION, f"gateway dropped {cid} just after a push")
            try:
                await self._send(conn, payload)
            except ConnectionError:
                pass
            self._drop(conn)
            return web.Response(status=200)
        self.faults.record(faults.DROP_CONNECTION, f"gateway dropped {cid} instead of a push")
        self._drop(conn)
        return _aws_error(410, "GoneException", None)

    async def _handle_get(self, request: web.Request) -> web.Response:
        conn = self._open_connection(request)
        if conn is None:
            return _aws_error(410, "GoneException", None)
        # For parity: the wire names are camel-case (botocore's model maps
        # connectedAt to ConnectedAt and so on); userAgent is always present.
        body = {
            "connectedAt": events.iso8601(conn.info.connected_at_ms),
            "identity": {"sourceIp": conn.info.source_ip, "userAgent": conn.info.user_agent or ""},
            "lastActiveAt": events.iso8601(conn.last_active_ms),
        }
        return web.json_response(body)

    async def _handle_delete(self, request: web.Request) -> web.Response:
        conn = self._open_connection(request)
        if conn is None:
            return _aws_error(410, "GoneException", None)
        # AWS does not document the close code of a management DELETE; we use
        # a normal closure.
        await self._server_close(conn, WSCloseCode.OK, "")
        return web.Response(status=204)

    # --- fault control (local only, no AWS counterpart) ------------------------------

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.snapshot())

    async def _handle_put_faults(self, request: web.Request) -> web.Response:
        if not self.faults.enabled:
            return web.json_response(
                {"message": "fault injection is off: start the local cloud with --faults (e.g. --faults all=0)"},
                status=409,
            )
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "the body must be JSON: {\"rates\": {kind: rate}}"}, status=400)
        rates = body.get("rates") if isinstance(body, dict) else None
        if not isinstance(rates, dict):
            return web.json_response({"message": "the body must be JSON: {\"rates\": {kind: rate}}"}, status=400)
        try:
            self.faults.update(rates)
        except faults.FaultSpecError as exc:
            return web.json_response({"message": str(exc)}, status=400)
        log.info("fault rates now %s", {k: v for k, v in self.faults.rates().items() if v} or "all 0")
        return web.json_response(self.faults.snapshot())

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        return _aws_error(403, "ForbiddenException", "Forbidden")
