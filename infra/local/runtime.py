"""Wiring: embedded AWS, the Chalice app, and every emulated event source around it."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from infra.local import aws, environ, faults, redirect, rest
from infra.local.gateway import (
    AWS_IDLE_TIMEOUT_S,
    AWS_MAX_CONNECTION_DURATION_S,
    AWS_MAX_MESSAGE_BYTES,
    DEFAULT_FRAME_CONCURRENCY,
    DEFAULT_MAX_QUEUED_FRAMES,
    GatewayConfig,
    WebSocketGateway,
)
from infra.local.handlers import LambdaFunction, resolve_handler
from infra.local.schedule import ScheduleRunner, UnsupportedScheduleError, expression_of
from infra.local.sqs import MAX_WAIT_TIME_S, SqsPoller, SqsSourceConfig, queue_name_of

log = logging.getLogger("infra.local")

TEMPLATE_PATH = Path("infra") / "template.yaml"
#: Where route responses are looked for: every CloudFormation template of the
#: project's infra/ (a RouteResponse names a Chalice route, so it lives in
#: the template merged over ``chalice package``'s, not in TEMPLATE_PATH).
TEMPLATES_GLOB = "infra/*.yaml"
#: Chalice's names of the WebSocket functions (the ``lambda_functions`` keys of
#: .chalice/config.json); every other route key is the message handler's.
CHALICE_WEBSOCKET_FUNCTIONS = {"$connect": "websocket_connect", "$disconnect": "websocket_disconnect"}
#: ``chalice package``'s logical ids of the WebSocket routes, by route key.
CHALICE_ROUTES = {"WebsocketConnectRoute": "$connect", "WebsocketMessageRoute": "$default",
                  "WebsocketDisconnectRoute": "$disconnect"}


def two_way_routes(project_dir: Path) -> frozenset[str]:
    """Route keys the project's templates give a route response (``AWS::ApiGatewayV2::RouteResponse``).

    On AWS a route sends its integration's response to the client only when
    it has one; the local gateway does the same for these keys.
    """
    keys = set()
    for path in sorted(project_dir.glob(TEMPLATES_GLOB)):
        try:
            template = aws.load_template(path)
        except Exception as err:  # not a template (or not ours to judge): no routes from it
            log.debug("%s skipped: %s", path, err)
            continue
        for resource in (template.get("Resources") or {}).values():
            if not isinstance(resource, dict) or resource.get("Type") != "AWS::ApiGatewayV2::RouteResponse":
                continue
            route = (resource.get("Properties") or {}).get("RouteId")
            ref = route.get("Ref") if isinstance(route, dict) else None
            if ref in CHALICE_ROUTES:
                keys.add(CHALICE_ROUTES[ref])
    return frozenset(keys)


@dataclass
class Settings:
    """Everything ``python -m infra.local run`` can be told (see ``--help``)."""

    project_dir: Path = field(default_factory=Path.cwd)
    stage: str = "local"
    host: str = "127.0.0.1"
    rest_port: int = 8000
    ws_port: int = 8001
    aws_port: int = 4566
    #: Port of the pages in the project's ``web/`` (widget, console, SDK); 0: do not serve them.
    web_port: int = 8002
    #: Origins whose pages may embed the widget and get development tokens (comma- or
    #: space-separated); None: the stage's ``EMBED_ORIGINS`` environment variable.
    embed_origins: str | None = None
    aws_endpoint: str | None = None
    localstack_probe: bool = True
    idle_timeout_s: float = AWS_IDLE_TIMEOUT_S
    max_connection_duration_s: float = AWS_MAX_CONNECTION_DURATION_S
    max_message_bytes: int = AWS_MAX_MESSAGE_BYTES
    sqs_retry_delay_s: int | None = None
    sqs_concurrency: int = 4
    #: WaitTimeSeconds of the SQS event source's receives: 20, as Lambda long-polls (0..20).
    sqs_wait_time_s: int = MAX_WAIT_TIME_S
    schedule_speed: float = 1.0
    workers: int = 32
    max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES
    frame_concurrency: int = DEFAULT_FRAME_CONCURRENCY
    #: Fault rates by kind; None (the default) leaves fault injection off and uninstalled.
    faults: dict[str, float] | None = None
    fault_seed: int | None = None


def load_config(project_dir: Path, stage: str) -> Any:
    """Return Chalice's own config object of ``stage`` (``.chalice/config.json``)."""
    from chalice.cli.factory import CLIFactory

    return CLIFactory(str(project_dir), environ=os.environ).create_config_obj(stage)


class _LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Any, timeout_s: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class LocalCloud:
    """The whole local cloud around one Chalice project; ``start()`` then ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.project_dir = settings.project_dir.resolve()
        self.config: Any = None
        self.app: Any = None
        self.aws_endpoint = ""
        self.moto: aws.MotoServer | None = None
        self.gateway: WebSocketGateway | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="lambda")
        self._loop: _LoopThread | None = None
        self._rest: Any = None
        self._rest_thread: threading.Thread | None = None
        self.web: Any = None
        self._pollers: list[SqsPoller] = []
        self._schedules: list[ScheduleRunner] = []
        self._stop_callbacks: list[Callable[[], None]] = []
        self._reserved_env: dict[str, str] = {}
        self._env_cache: dict[str, dict[str, str]] = {}
        self.faults = faults.FaultInjector(
            settings.faults or {}, seed=settings.fault_seed, enabled=settings.faults is not None
        )

    # --- public -------------------------------------------------------------------

    @property
    def api_gateway_stage(self) -> str:
        """The API Gateway stage: the path of the WebSocket URL."""
        return str(self.config.api_gateway_stage) if self.config is not None else "api"

    def urls(self) -> dict[str, str]:
        """The endpoints of the running cloud."""
        s = self.settings
        ws_base = f"{s.host}:{s.ws_port}/{self.api_gateway_stage}"
        urls = {
            "rest": f"http://{s.host}:{s.rest_port}",
            "websocket": f"ws://{ws_base}",
            "management": f"http://{ws_base}/@connections",
            "aws": self.aws_endpoint,
        }
        if self.web is not None:
            from infra.local.web import describe

            urls.update(describe(self.web))
        return urls

    def is_oncechat(self) -> bool:
        """Whether the project is oncechat itself (whose dev tokens ``python -m infra.local token`` mints)."""
        return self.config is not None and self.config.app_name == "oncechat"

    def start(self) -> None:
        """Start everything; on failure, stop what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything that was started, in reverse order; safe to call twice."""
        # Tell every background thread at once, so their waits overlap.
        for source in [*self._pollers, *self._schedules]:
            source.request_stop()
        for callback in reversed(self._stop_callbacks):
            try:
                callback()
            except Exception:
                log.exception("error while stopping")
        self._stop_callbacks.clear()

    # --- steps --------------------------------------------------------------------

    def _start(self) -> None:
        s = self.settings
        self.config = load_config(self.project_dir, s.stage)
        self._install_faults()
        self._start_aws()
        self._deploy_stack()
        self._load_app()
        self._start_gateway()
        self._start_sqs_sources()
        self._start_schedules()
        self._start_rest()
        self._start_web()

    def _install_faults(self) -> None:
        """Hook botocore before the app (or anything else) creates a client.

        Installed whenever ``--faults`` was given, even with every rate 0, so
        rates can be raised later through ``PUT /_local/faults``.
        """
        if not self.faults.enabled:
            return
        faults.install(self.faults)
        injector = self.faults

        def report() -> None:
            faults.uninstall()
            log.info("%s", injector.summary())

        # First in, so it runs last: the counts include the final $disconnects.
        self._stop_callbacks.append(report)
        active = {k: v for k, v in injector.rates().items() if v}
        log.info("fault injection on; rates: %s", active or "all 0")

    def _start_aws(self) -> None:
        s = self.settings
        endpoint = s.aws_endpoint
        if not endpoint and s.localstack_probe:
            endpoint = aws.find_localstack(os.environ)
            if endpoint:
                log.info("using LocalStack at %s", endpoint)
        if not endpoint:
            self.moto = aws.MotoServer(s.host, s.aws_port)
            self._stop_callbacks.append(self.moto.stop)
            self.moto.start()
            endpoint = self.moto.endpoint
        self.aws_endpoint = endpoint
        # The stage's variables first, then ours: like Lambda's reserved
        # variables, the AWS ones cannot be overridden by the app's config.
        # Each function's own variables (lambda_functions.NAME) are shown only
        # to that function's invocations (infra.local.environ).
        environ.install()
        os.environ.update(environ.stage_variables(self.config, self.settings.stage))
        self._reserved_env = aws.aws_environment(endpoint, os.environ)
        os.environ.update(self._reserved_env)

    def _deploy_stack(self) -> None:
        template = self.project_dir / TEMPLATE_PATH
        if not template.is_file():
            log.info("no %s: no stack to deploy", TEMPLATE_PATH)
            return
        import boto3

        session = boto3.session.Session()
        deployer = aws.StackDeployer(
            cloudformation=session.client("cloudformation", endpoint_url=self.aws_endpoint),
            dynamodb=session.client("dynamodb", endpoint_url=self.aws_endpoint),
        )
        stack_name = f"{self.config.app_name}-{self.settings.stage}"
        outputs = deployer.deploy(stack_name, template, self.settings.stage)
        log.info("stack %s deployed with %d outputs", stack_name, len(outputs))
        log.debug("stack outputs: %s", outputs)

    def _load_app(self) -> None:
        from chalice.cli.factory import CLIFactory

        factory = CLIFactory(str(self.project_dir), environ=os.environ)
        self.app = factory.load_chalice_app(environ.stage_variables(self.config, self.settings.stage))
        # After the app is imported: its module-level code may set a session.
        redirect.install(self.app, f"http://{self.settings.host}:{self.settings.ws_port}")

    def _function(self, name: str, handler_string: str, config_name: str | None = None) -> LambdaFunction:
        # For parity: Chalice names each Lambda function app-stage-handler.
        # For parity: per-function settings (lambda_functions.NAME) win;
        # NAME is Chalice's name of the function (``config_name``), which
        # for the WebSocket handlers is not the Python function's.
        config_name = config_name or name
        scoped = self.config.scope(self.settings.stage, config_name)
        timeout = float(getattr(scoped, "lambda_timeout", None) or 60)
        return LambdaFunction(
            name=f"{self.config.app_name}-{self.settings.stage}-{name}",
            handler=resolve_handler(handler_string),
            timeout_s=timeout,
            environment=self._function_env(config_name),
        )

    def _function_env(self, name: str) -> dict[str, str]:
        if name not in self._env_cache:
            self._env_cache[name] = environ.function_variables(
                self.config, self.settings.stage, name, self._reserved_env
            )
        return self._env_cache[name]

    def _start_gateway(self) -> None:
        s = self.settings
        routes = {
            route_key: self._function(handler.name, handler.handler_string,
                                      CHALICE_WEBSOCKET_FUNCTIONS.get(route_key, "websocket_message")).invoke
            for route_key, handler in getattr(self.app, "websocket_handlers", {}).items()
        }
        config = GatewayConfig(
            host=s.host,
            port=s.ws_port,
            stage=self.api_gateway_stage,
            idle_timeout_s=s.idle_timeout_s,
            max_connection_duration_s=s.max_connection_duration_s,
            max_message_bytes=s.max_message_bytes,
            max_queued_frames=s.max_queued_frames,
            frame_concurrency=s.frame_concurrency,
            two_way_routes=two_way_routes(self.project_dir),
        )
        self.gateway = WebSocketGateway(routes, config, self._executor, self.faults)
        self._loop = _LoopThread()
        self._loop.start()
        loop = self._loop
        gateway = self.gateway

        def stop_gateway() -> None:
            try:
                loop.run(gateway.stop(), timeout_s=15)
            finally:
                loop.stop()
                self._executor.shutdown(wait=False, cancel_futures=True)

        self._stop_callbacks.append(stop_gateway)
        loop.run(gateway.start(), timeout_s=15)
        log.info("WebSocket routes: %s (two-way: %s)", ", ".join(sorted(routes)) or "none",
                 ", ".join(sorted(config.two_way_routes)) or "none")

    def _start_sqs_sources(self) -> None:
        from chalice.app import SQSEventConfig

        import boto3

        region = os.environ["AWS_DEFAULT_REGION"]
        for source in getattr(self.app, "event_sources", []):
            if not isinstance(source, SQSEventConfig):
                continue
            config = SqsSourceConfig(
                function=self._function(source.name, source.handler_string),
                queue_name=queue_name_of(source.queue, source.queue_arn),
                batch_size=source.batch_size,
                batching_window_s=float(source.maximum_batching_window_in_seconds or 0),
                retry_delay_s=self.settings.sqs_retry_delay_s,
                wait_time_s=self.settings.sqs_wait_time_s,
            )
            endpoint = self.aws_endpoint

            def sqs_client(endpoint: str | None = endpoint) -> Any:
                return boto3.session.Session().client("sqs", endpoint_url=endpoint)

            # Lambda runs several batches of one source at once (one per
            # active FIFO group at most); SQS keeps each group in order by not
            # handing out a group's next messages while earlier ones are in flight.
            for index in range(max(1, self.settings.sqs_concurrency)):
                poller = SqsPoller(sqs_client, config, region, index)
                self._pollers.append(poller)
                self._stop_callbacks.append(poller.stop)
                poller.start()

    def _start_schedules(self) -> None:
        from chalice.app import ScheduledEventConfig

        region = os.environ["AWS_DEFAULT_REGION"]
        for source in getattr(self.app, "event_sources", []):
            if not isinstance(source, ScheduledEventConfig):
                continue
            expression = expression_of(source.schedule_expression)
            function = self._function(source.name, source.handler_string)
            try:
                runner = ScheduleRunner(
                    function,
                    expression,
                    rule_name=function.name,
                    speed=self.settings.schedule_speed,
                    region=region,
                )
            except UnsupportedScheduleError as exc:
                log.warning("schedule of %s will not run locally: %s", function.name, exc)
                continue
            self._schedules.append(runner)
            self._stop_callbacks.append(runner.stop)
            runner.start()

    def _start_rest(self) -> None:
        s = self.settings
        self._rest = rest.create_server(self.app, self.config, s.host, s.rest_port, self._function_env)
        server = self._rest.server
        self._rest_thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
        self._rest_thread.start()

        def stop_rest() -> None:
            server.shutdown()
            server.server_close()

        self._stop_callbacks.append(stop_rest)

    def _start_web(self) -> None:
        """Serve the project's ``web/`` (widget, console, SDK) with its ``config.json``."""
        from infra.local.web import WebServer, parse_origins

        s = self.settings
        root = self.project_dir / "web"
        if not s.web_port or not root.is_dir() or self._loop is None:
            return
        urls = self.urls()
        variables = self.config.environment_variables
        if s.embed_origins is None:
            origins = parse_origins(variables.get("EMBED_ORIGINS"), f"EMBED_ORIGINS of stage {s.stage!r}")
        else:
            origins = parse_origins(s.embed_origins, "--embed-origins")
        self.web = WebServer(root, s.host, s.web_port, urls["rest"], urls["websocket"], s.stage,
                             variables.get("JWT_SECRET"), origins)
        loop, server = self._loop, self.web
        loop.run(server.start(), timeout_s=15)
        self._stop_callbacks.append(lambda: loop.run(server.stop(), timeout_s=15))
