"""The local cloud with meters: ``python -m bench.cloud [infra.local run flags]``, and its launcher.

Runs ``python -m infra.local`` unchanged, after installing three meters
from the outside (nothing in ``infra/local`` knows about them):

* every Lambda invocation (``LambdaFunction.invoke``) is counted and timed
  per function and WebSocket action (``message:send``, ``deliver``...), and
  each WebSocket frame a client sent (a ``MESSAGE`` event) is counted with
  its size;
* every AWS request made during an invocation carries that label in an
  ``x-bench-phase`` header (added by botocore's HTTP layer), so the
  counting proxy can split requests by phase; requests outside any
  invocation (the SQS event source's own polls) carry none;
* the gateway's aiohttp application gets a middleware that counts
  ``@connections`` calls (POST/GET/DELETE, by status and phase), pushed
  frames and their size, and connection time, and serves them at
  ``GET /_bench/stats`` (``DELETE`` resets) on the WebSocket port.

:class:`MeteredCloud` starts moto, the counting proxy (``bench.proxy``)
and this metered local cloud for one Chalice project.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from infra.local.launcher import LocalCloud, free_port

STATS_PATH = "/_bench/stats"
PHASE_HEADER = "x-bench-phase"
#: Set on requests made on a handler's own threads: the handler did not wait
#: for their proxy overhead (it was doing something else meanwhile).
BACKGROUND_HEADER = "x-bench-background"
WS_UNIT_BYTES = 32 * 1024  # API Gateway meters WebSocket messages in 32 KB units

_phase = threading.local()


class Meters:
    """Counters of the metered cloud process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.lambdas: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            self.frames_in: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            self.management: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            self.pushes = defaultdict(float)
            self.push_types: dict[str, float] = defaultdict(float)
            # replies the gateway sent as a two-way route's response (billed
            # as messages out, like pushes, but no management API request)
            self.route_responses = defaultdict(float)
            self.route_response_types: dict[str, float] = defaultdict(float)
            # per phase: ms the handler's own thread spent in HTTP calls to
            # AWS (the proxy) and to the management API (pushes)
            self.waits: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            self.connections = defaultdict(float)
            now = time.monotonic()
            self.open = {k: now for k in getattr(self, "open", {})}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            open_seconds = sum(now - t for t in self.open.values())
            return {
                "lambdas": {k: dict(v) for k, v in self.lambdas.items()},
                "frames_in": {k: dict(v) for k, v in self.frames_in.items()},
                "management": {k: dict(v) for k, v in self.management.items()},
                "pushes": dict(self.pushes),
                "push_types": dict(self.push_types),
                "route_responses": dict(self.route_responses),
                "route_response_types": dict(self.route_response_types),
                "waits": {k: dict(v) for k, v in self.waits.items()},
                "connections": dict(self.connections, open=len(self.open),
                                    seconds=self.connections.get("seconds", 0.0) + open_seconds),
            }


METERS = Meters()


def _label(function_name: str, event: Any) -> str:
    short = function_name.rsplit("-", 1)[-1]
    if isinstance(event, dict) and (event.get("requestContext") or {}).get("eventType") == "MESSAGE":
        try:
            action = json.loads(event.get("body") or "").get("action")
        except (ValueError, AttributeError):
            action = None
        return f"{short}:{action or 'other'}"
    return short


def _frame_type(body: bytes) -> str:
    """``message``, ``accepted``, ``error:rate_limited``... of a pushed frame."""
    try:
        frame = json.loads(body)
    except ValueError:
        return "not json"
    if not isinstance(frame, dict):
        return "other"
    kind = str(frame.get("type") or ("gateway error" if "message" in frame else "other"))
    return f"{kind}:{frame['code']}" if kind == "error" and "code" in frame else kind


def install() -> None:
    """Install the meters (in the cloud process, before the app is loaded)."""
    from aiohttp import web
    from botocore.httpsession import URLLib3Session

    from infra.local.gateway import WebSocketGateway
    from infra.local.handlers import LambdaFunction

    original_invoke = LambdaFunction.invoke

    def invoke(self: Any, event: dict[str, Any]) -> Any:
        label = _label(self.name, event)
        if label.startswith("message:") or ":" in label:
            size = len((event.get("body") or "").encode())
            with METERS.lock:
                row = METERS.frames_in[label]
                row["frames"] += 1
                row["bytes"] += size
                row["units"] += max(1, math.ceil(size / WS_UNIT_BYTES))
        previous = getattr(_phase, "label", None), getattr(_phase, "background", False)
        _phase.label, _phase.background = label, False  # the invocation's own thread
        started = time.perf_counter()
        failed = 0
        try:
            return original_invoke(self, event)
        except BaseException:
            failed = 1
            raise
        finally:
            ms = (time.perf_counter() - started) * 1000
            _phase.label, _phase.background = previous
            with METERS.lock:
                row = METERS.lambdas[label]
                row["invocations"] += 1
                row["ms"] += ms
                row["billed_ms"] += math.ceil(ms)
                row["errors"] += failed

    LambdaFunction.invoke = invoke  # type: ignore[method-assign]

    original_send = URLLib3Session.send

    def send(self: Any, request: Any) -> Any:
        label = getattr(_phase, "label", None)
        background = getattr(_phase, "background", False)
        if label:
            request.headers[PHASE_HEADER] = label
            if background:
                request.headers[BACKGROUND_HEADER] = "1"
        started = time.perf_counter()
        try:
            return original_send(self, request)
        finally:
            if label and not background:
                kind = "push_ms" if "/@connections/" in request.url else "aws_ms"
                with METERS.lock:
                    METERS.waits[label][kind] += (time.perf_counter() - started) * 1000

    URLLib3Session.send = send  # type: ignore[method-assign]

    # A handler may read on a thread of its own while it writes (the fast
    # path's connections read): that call belongs to the handler's phase.
    from concurrent.futures import ThreadPoolExecutor

    original_submit = ThreadPoolExecutor.submit

    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        label = getattr(_phase, "label", None)

        def labelled() -> Any:
            # Submitted by a handler (a phase is set): a thread of its own.
            _phase.label, _phase.background = label, label is not None
            try:
                return fn(*args, **kwargs)
            finally:
                _phase.label, _phase.background = None, False

        return original_submit(self, labelled)

    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]

    @web.middleware
    async def meter(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == STATS_PATH:
            if request.method == "DELETE":
                METERS.reset()
            return web.json_response(METERS.snapshot())
        if "/@connections/" in request.path:
            body = await request.read()
            response = await handler(request)
            key = f"{request.method} {response.status} {request.headers.get(PHASE_HEADER, 'untagged')}"
            with METERS.lock:
                METERS.management[key]["calls"] += 1
                if request.method == "POST" and response.status == 200:
                    METERS.pushes["frames"] += 1
                    METERS.pushes["bytes"] += len(body)
                    METERS.pushes["units"] += max(1, math.ceil(len(body) / WS_UNIT_BYTES))
                    METERS.push_types[_frame_type(body)] += 1
            return response
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            token = object()
            with METERS.lock:
                METERS.open[token] = time.monotonic()
                METERS.connections["opened"] += 1
            try:
                return await handler(request)
            finally:
                with METERS.lock:
                    started = METERS.open.pop(token, None)
                    if started is not None:
                        METERS.connections["seconds"] += time.monotonic() - started
                        METERS.connections["closed"] += 1
        return await handler(request)

    original_route_response = WebSocketGateway._route_response

    async def route_response(self: Any, conn: Any, body: str) -> None:
        size = len(body.encode())
        with METERS.lock:
            METERS.route_responses["frames"] += 1
            METERS.route_responses["bytes"] += size
            METERS.route_responses["units"] += max(1, math.ceil(size / WS_UNIT_BYTES))
            METERS.route_response_types[_frame_type(body)] += 1
        await original_route_response(self, conn, body)

    WebSocketGateway._route_response = route_response  # type: ignore[method-assign]

    original_build = WebSocketGateway.build_app

    def build_app(self: Any) -> web.Application:
        app = original_build(self)
        app.middlewares.append(meter)
        return app

    WebSocketGateway.build_app = build_app  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    install()
    from infra.local.cli import main as cli_main

    return cli_main(argv)


# --- the launcher (in the benchmark process) ----------------------------------------


def _http_json(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class _Cloud(LocalCloud):
    def command(self) -> list[str]:
        command = super().command()
        index = command.index("infra.local")
        command[index] = "bench.cloud"
        return command


class MeteredCloud:
    """moto, the counting proxy in front of it, and the metered local cloud of one project."""

    def __init__(self, project_dir: Path, *flags: str, stage: str = "local", host: str = "127.0.0.1",
                 counted: bool = True) -> None:
        self.project_dir = Path(project_dir)
        self.flags = flags
        #: False: the cloud talks to moto directly, with no counting proxy in
        #: the path (timing runs: the proxy's own work per request would
        #: load the machine in proportion to each app's request count).
        self.counted = counted
        self.stage = stage
        self.host = host
        self.moto: Any = None
        self.proxy: subprocess.Popen[str] | None = None
        self.cloud: LocalCloud | None = None
        self.proxy_port = free_port(host)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"

    def start(self) -> MeteredCloud:
        from infra.local.aws import MotoServer

        try:
            self.moto = MotoServer(self.host, free_port(self.host))
            self.moto.start()
            endpoint = self.moto.endpoint
            if self.counted:
                self.proxy = subprocess.Popen(
                    [sys.executable, "-m", "bench.proxy", "--host", self.host, "--port", str(self.proxy_port),
                     "--target", self.moto.endpoint],
                    stdout=subprocess.PIPE, text=True)
                assert self.proxy.stdout is not None
                if "ready" not in self.proxy.stdout.readline():
                    raise RuntimeError("the counting proxy did not start")
                endpoint = self.proxy_url
            self.cloud = _Cloud(self.project_dir, "--aws-endpoint", endpoint, *self.flags,
                                stage=self.stage, startup_timeout_s=120)
            self.cloud.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.cloud is not None:
            self.cloud.stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            self.proxy.wait(10)
        if self.moto is not None:
            self.moto.stop()

    def __enter__(self) -> MeteredCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- endpoints and meters ----------------------------------------------------------

    @property
    def websocket_url(self) -> str:
        assert self.cloud is not None
        return self.cloud.websocket_url

    @property
    def rest_url(self) -> str:
        assert self.cloud is not None
        return self.cloud.rest_url

    @property
    def aws_endpoint(self) -> str:
        """moto itself: for the benchmark's own uncounted setup and inspection."""
        return str(self.moto.endpoint)

    def client(self, service: str) -> Any:
        """An uncounted boto3 client on moto."""
        import boto3

        return boto3.session.Session().client(service, endpoint_url=self.aws_endpoint, region_name="us-east-1",
                                              aws_access_key_id="testing", aws_secret_access_key="testing")

    def reset(self) -> None:
        """Zero every counter (proxy and cloud)."""
        assert self.cloud is not None
        if self.counted:
            _http_json(self.proxy_url + STATS_PATH, "DELETE")
        _http_json(f"http://{self.host}:{self.cloud.ws_port}{STATS_PATH}", "DELETE")

    def mode(self, sizes: bool) -> None:
        """Compute capacity units from item sizes (slower) or only count requests."""
        if self.counted:
            _http_json(self.proxy_url + "/_bench/mode/" + ("sizes" if sizes else "count"), "PUT")

    def stats(self) -> dict[str, Any]:
        """Both meters' counters now."""
        assert self.cloud is not None
        aws = _http_json(self.proxy_url + STATS_PATH) if self.counted else None
        return {"aws": aws, "cloud": _http_json(f"http://{self.host}:{self.cloud.ws_port}{STATS_PATH}")}


if __name__ == "__main__":
    raise SystemExit(main())
