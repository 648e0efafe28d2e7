"""Command line of the local cloud: ``python -m infra.local [run|token] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from infra.local import faults, tokens
from infra.local.gateway import (
    AWS_IDLE_TIMEOUT_S,
    AWS_MAX_CONNECTION_DURATION_S,
    AWS_MAX_MESSAGE_BYTES,
    DEFAULT_FRAME_CONCURRENCY,
    DEFAULT_MAX_QUEUED_FRAMES,
)
from infra.local.sqs import MAX_WAIT_TIME_S, check_wait_time

READY_LINE = "oncechat local cloud ready"
ENV_PREFIX = "ONCECHAT_LOCAL_"

log = logging.getLogger("infra.local")


def _env_default(environ: Mapping[str, str], name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        # Like argparse's error for a bad flag, naming the variable instead of a traceback.
        print(f"python -m infra.local: error: {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _flag(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    flag: str,
    default: Any,
    kind: Callable[[str], Any],
    help_text: str,
    env: str | None = None,
) -> None:
    """Add ``flag`` whose default comes from an environment variable, and say so in --help."""
    env = env or ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    parser.add_argument(
        flag,
        type=kind,
        default=_env_default(environ, env, default, kind),
        help=f"{help_text} (env {env}; default: {default})",
    )


def _add_project_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    _flag(parser, environ, "--project-dir", ".", str, "the Chalice project directory")
    _flag(parser, environ, "--stage", "local", str, "the Chalice stage in .chalice/config.json")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Return the argument parser; defaults are read from ``environ``."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m infra.local",
        description=(
            "Run a Chalice project locally with an API Gateway WebSocket emulator "
            "(and its @connections management API), SQS event sources, schedules, "
            "Chalice's local REST gateway and embedded AWS (moto server, or the "
            "endpoint in AWS_ENDPOINT_URL, or a LocalStack found the localstack_client way). "
            "Every flag can also be set by the environment variable named in its help."
        ),
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the local cloud (the default command)")
    _add_run_flags(run, environ)

    token = commands.add_parser("token", help="print a development JWT signed with the stage's JWT_SECRET")
    _add_project_flags(token, environ)
    token.add_argument("--sub", required=True, help="the subject (user id)")
    token.add_argument("--role", required=True, help="the role claim, e.g. customer or agent")
    token.add_argument("--name", default=None, help="the display name claim (optional)")
    token.add_argument("--ttl", type=int, default=tokens.DEFAULT_TTL_S,
                       help="lifetime in seconds (default: %(default)s)")
    return parser


def _add_run_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    _add_project_flags(parser, environ)
    _flag(parser, environ, "--host", "127.0.0.1", str, "the interface every server listens on")
    _flag(parser, environ, "--rest-port", 8000, int, "port of the REST API (Chalice's local gateway)")
    _flag(parser, environ, "--ws-port", 8001, int, "port of the WebSocket API and its @connections API")
    _flag(parser, environ, "--aws-port", 4566, int, "port of the embedded moto server")
    _flag(parser, environ, "--web-port", 8002, int, "port of the customer widget and agent console (0: off)")
    _flag(parser, environ, "--embed-origins", None, str,
          "origins (comma-separated) whose pages may embed the widget and get development tokens; "
          "unset: the stage's EMBED_ORIGINS")
    _flag(
        parser,
        environ,
        "--aws-endpoint",
        None,
        str,
        "use this AWS endpoint (e.g. LocalStack) instead of starting moto",
        env="AWS_ENDPOINT_URL",
    )
    parser.add_argument(
        "--localstack",
        choices=("auto", "off"),
        default=_env_default(environ, ENV_PREFIX + "LOCALSTACK", "auto"),
        help=(
            "auto: use a LocalStack named by LOCALSTACK_HOST or answering /_localstack/health "
            "at the localstack_client edge URL; off: never look (env ONCECHAT_LOCAL_LOCALSTACK; default: auto)"
        ),
    )
    _flag(parser, environ, "--idle-timeout", AWS_IDLE_TIMEOUT_S, float,
          "seconds without a client frame before the gateway closes a connection")
    _flag(parser, environ, "--max-connection-duration", AWS_MAX_CONNECTION_DURATION_S, float,
          "maximum seconds a connection stays open")
    _flag(parser, environ, "--max-message-bytes", AWS_MAX_MESSAGE_BYTES, int,
          "largest message in bytes; larger ones close the connection with 1009")
    _flag(
        parser,
        environ,
        "--sqs-retry-delay",
        None,
        int,
        "make a failed SQS batch visible again after N seconds instead of the queue's visibility "
        "timeout (differs from AWS; unset = faithful)",
    )
    _flag(parser, environ, "--sqs-concurrency", 4, int,
          "concurrent batches per SQS event source (Lambda runs several; FIFO groups stay in order)")
    _flag(parser, environ, "--sqs-wait-time", MAX_WAIT_TIME_S, _sqs_wait_time,
          f"seconds each receive of an SQS event source long-polls, 0..{MAX_WAIT_TIME_S} "
          f"(Lambda: {MAX_WAIT_TIME_S}; 0 polls short, pausing 1 s when the queue is empty)")
    _flag(parser, environ, "--schedule-speed", 1.0, float, "run schedules this many times faster")
    _flag(parser, environ, "--workers", 32, int, "threads for handler invocations")
    _flag(parser, environ, "--max-queued-frames", DEFAULT_MAX_QUEUED_FRAMES, int,
          "frames one WebSocket connection may have waiting; more are answered 'Too Many Requests'")
    _flag(parser, environ, "--frame-concurrency", DEFAULT_FRAME_CONCURRENCY, int,
          "frames of one WebSocket connection invoked at once")
    _flag(parser, environ, "--log-level", "INFO", str, "DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--faults",
        type=_fault_spec,
        default=_env_default(environ, ENV_PREFIX + "FAULTS", None, _fault_spec),
        metavar="SPEC",
        help=(
            "turn fault injection on: comma-separated kind=rate pairs (probability per opportunity, 0..1), "
            "all=RATE sets every kind, later pairs override, e.g. all=0.01,push_fail=0; "
            "all=0 installs the hooks with every rate 0, for PUT /_local/faults to raise later. Kinds: "
            + ", ".join(faults.KINDS)
            + "; and lose_push, a real loss that all= does not include (only to check the chaos checker)"
            + " (env ONCECHAT_LOCAL_FAULTS; default: off)"
        ),
    )
    _flag(parser, environ, "--fault-seed", None, int,
          "seed of the fault injection's random source, for reproducible runs")


def _sqs_wait_time(value: str) -> int:
    try:
        return check_wait_time(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of seconds from 0 to {MAX_WAIT_TIME_S} "
            f"(SQS's limit on WaitTimeSeconds), not {value!r}"
        ) from None


def _fault_spec(value: str) -> dict[str, float]:
    try:
        return faults.parse_spec(value)
    except faults.FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Start the local cloud, print its endpoints and serve until SIGINT or SIGTERM."""
    from infra.local.runtime import LocalCloud, Settings

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not log.isEnabledFor(logging.DEBUG):
        for noisy in ("botocore", "boto3", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings(
        project_dir=Path(args.project_dir),
        stage=args.stage,
        host=args.host,
        rest_port=args.rest_port,
        ws_port=args.ws_port,
        aws_port=args.aws_port,
        web_port=args.web_port,
        embed_origins=args.embed_origins,
        aws_endpoint=args.aws_endpoint,
        localstack_probe=args.localstack == "auto",
        idle_timeout_s=args.idle_timeout,
        max_connection_duration_s=args.max_connection_duration,
        max_message_bytes=args.max_message_bytes,
        sqs_retry_delay_s=args.sqs_retry_delay,
        sqs_concurrency=args.sqs_concurrency,
        sqs_wait_time_s=args.sqs_wait_time,
        schedule_speed=args.schedule_speed,
        workers=args.workers,
        max_queued_frames=args.max_queued_frames,
        frame_concurrency=args.frame_concurrency,
        faults=args.faults,
        fault_seed=args.fault_seed,
    )
    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    cloud = LocalCloud(settings)
    try:
        cloud.start()
        urls = cloud.urls()
        _print(f"REST API:        {urls['rest']}")
        _print(f"WebSocket API:   {urls['websocket']}")
        _print(f"Management API:  {urls['management']}")
        _print(f"AWS endpoint:    {urls['aws']}")
        if "widget" in urls:
            _print(f"Customer widget: {urls['widget']}")
            _print(f"Agent console:   {urls['console']}")
        if cloud.is_oncechat():
            # The token command mints oncechat's tokens; other projects have their own auth.
            _print("Dev token:       python -m infra.local token --sub alice --role customer   (or: make token)")
        _print(READY_LINE)
        while not stopping.wait(0.5):
            pass
        log.info("stopping")
    except Exception as exc:
        log.error("local cloud failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    finally:
        cloud.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def token(args: argparse.Namespace) -> int:
    """Print a development token for the project's stage."""
    secret: str | None = None
    try:
        from infra.local.runtime import load_config

        config = load_config(Path(args.project_dir), args.stage)
        secret = config.environment_variables.get("JWT_SECRET")
    except RuntimeError as exc:
        print(f"note: {exc}", file=sys.stderr)
    secret = secret or os.environ.get("JWT_SECRET")
    if not secret:
        print(
            f"no JWT_SECRET in the environment_variables of stage {args.stage!r} "
            "of .chalice/config.json, nor in the environment",
            file=sys.stderr,
        )
        return 2
    _print(tokens.mint_token(secret, sub=args.sub, role=args.role, name=args.name, ttl_s=args.ttl))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; ``run`` when none is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        # "run" is the default command, so the top-level help shows its flags too.
        build_parser().print_help()
        print("\nrun (the default command):\n")
        argv = ["run", "--help"]
    if not argv or argv[0] not in ("run", "token"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return token(args)
    return run(args)
