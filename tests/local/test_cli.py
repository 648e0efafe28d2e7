"""The command line: environment defaults and development tokens."""

from __future__ import annotations

import subprocess
import sys

import jwt

from infra.local.cli import build_parser
from tests.local_cloud import APPS_DIR, REPO_ROOT


def test_every_run_flag_has_an_environment_variable():
    environ = {
        "ONCECHAT_LOCAL_WS_PORT": "9001",
        "ONCECHAT_LOCAL_IDLE_TIMEOUT": "2.5",
        "ONCECHAT_LOCAL_SQS_RETRY_DELAY": "3",
        "ONCECHAT_LOCAL_LOCALSTACK": "off",
        "AWS_ENDPOINT_URL": "http://localhost:4566",
    }
    args = build_parser(environ).parse_args(["run"])
    assert (args.ws_port, args.idle_timeout, args.sqs_retry_delay) == (9001, 2.5, 3)
    assert args.localstack == "off"
    assert args.aws_endpoint == "http://localhost:4566"
    defaults = build_parser({}).parse_args(["run"])
    assert (defaults.rest_port, defaults.ws_port, defaults.aws_port) == (8000, 8001, 4566)
    assert defaults.sqs_retry_delay is None and defaults.aws_endpoint is None


def test_token_is_signed_with_the_stage_secret():
    output = subprocess.run(
        [sys.executable, "-m", "infra.local", "token", "--sub", "alice", "--role", "customer",
         "--name", "Alice", "--project-dir", str(APPS_DIR / "echo")],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    claims = jwt.decode(output, "echo-local-secret-used-only-by-the-tests", algorithms=["HS256"], audience="oncechat", issuer="oncechat")
    assert (claims["sub"], claims["role"], claims["name"]) == ("alice", "customer", "Alice")
    assert claims["exp"] - claims["iat"] == 3600


def test_token_without_a_secret_fails_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "token", "--sub", "a", "--role", "customer",
         "--project-dir", str(APPS_DIR / "bare")],
        cwd=REPO_ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr
