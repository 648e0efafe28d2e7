"""Start the local cloud (``python -m infra.local``) as a subprocess: for tests, benchmarks, tools.

Usage in a test module::

    from infra.local.launcher import LocalCloud

    @pytest.fixture(scope="module")
    def cloud():
        with LocalCloud(project_dir, "--schedule-speed", "60") as running:
            yield running

    def test_something(cloud):
        cloud.websocket_url        # ws://127.0.0.1:PORT/api
        cloud.client("sqs")        # boto3 client on the embedded AWS

Each instance picks free ports, waits for the ready line, and at exit kills
the whole process group (the moto server included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from collections.abc import Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "oncechat local cloud ready"

# Variables of the developer's shell that would change what the cloud talks to.
_SCRUBBED_ENV = ("AWS_ENDPOINT_URL", "LOCALSTACK_HOST", "AWS_PROFILE")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalCloud:
    """A running ``python -m infra.local`` for one Chalice project, on free ports.

    :param project_dir: the Chalice project (the directory holding ``app.py``).
    :param extra_args: more flags for ``run``, e.g. ``"--idle-timeout", "2"``.
    :param stage: the Chalice stage (default ``local``).
    :param env: extra environment variables for the subprocess.
    :param api_stage: the ``api_gateway_stage`` of the project (the WebSocket path).
    :param startup_timeout_s: how long to wait for the ready line.
    """

    def __init__(
        self,
        project_dir: str | os.PathLike[str],
        *extra_args: str,
        stage: str = "local",
        env: Mapping[str, str] | None = None,
        api_stage: str = "api",
        startup_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.extra_args: Sequence[str] = extra_args
        self.stage = stage
        self.host = host
        self.api_stage = api_stage
        self.startup_timeout_s = startup_timeout_s
        self.rest_port = free_port(host)
        self.ws_port = free_port(host)
        self.aws_port = free_port(host)
        self.web_port = free_port(host)
        self._extra_env = dict(env or {})
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read by log() until the end)

    # --- endpoints ------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.rest_port}"

    @property
    def websocket_url(self) -> str:
        """URL of the WebSocket API stage."""
        return f"ws://{self.host}:{self.ws_port}/{self.api_stage}"

    @property
    def management_endpoint(self) -> str:
        """``endpoint_url`` for a boto3 ``apigatewaymanagementapi`` client."""
        return f"http://{self.host}:{self.ws_port}/{self.api_stage}"

    @property
    def web_url(self) -> str:
        """Base URL of the pages (the widget demo at ``/``, the console at ``/console``)."""
        return f"http://{self.host}:{self.web_port}"

    @property
    def aws_endpoint(self) -> str:
        """URL of the embedded AWS (moto server)."""
        return f"http://{self.host}:{self.aws_port}"

    def client(self, service: str, **kwargs: Any) -> Any:
        """Return a boto3 client of ``service`` on the embedded AWS (or the management API)."""
        import boto3

        endpoint = self.management_endpoint if service == "apigatewaymanagementapi" else self.aws_endpoint
        # Any service by name: boto3-stubs types Session.client for literal names only.
        session: Any = boto3.session.Session()
        return session.client(
            service,
            endpoint_url=kwargs.pop("endpoint_url", endpoint),
            region_name=kwargs.pop("region_name", "us-east-1"),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            **kwargs,
        )

    # --- lifecycle ---------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line that starts this cloud."""
        return [
            sys.executable, "-m", "infra.local", "run",
            "--project-dir", str(self.project_dir),
            "--stage", self.stage,
            "--host", self.host,
            "--rest-port", str(self.rest_port),
            "--ws-port", str(self.ws_port),
            "--aws-port", str(self.aws_port),
            "--web-port", str(self.web_port),
            "--localstack", "off",
            *self.extra_args,
        ]

    def start(self) -> LocalCloud:
        """Start the subprocess and wait for the ready line; raise with its log if it fails."""
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and not k.startswith("ONCECHAT_LOCAL_")}
        env.update({"PYTHONUNBUFFERED": "1"}, **self._extra_env)
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # its own process group, killed as a whole
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"local cloud did not become ready:\n{log}")
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            if line.strip() == READY_LINE:
                self._ready.set()

    def log(self) -> str:
        """Everything the subprocess wrote so far (stdout, then stderr)."""
        self._stderr.flush()
        self._stderr.seek(0)
        return "\n".join(self.output) + "\n" + self._stderr.read()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything left in the group
        except ProcessLookupError:
            pass
        process.wait()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
