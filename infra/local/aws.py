"""Embedded AWS: endpoint resolution, the moto server subprocess, stack deployment."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

log = logging.getLogger("infra.local.aws")

DEFAULT_REGION = "us-east-1"
LOCALSTACK_HEALTH_PATH = "/_localstack/health"


class LocalAwsError(RuntimeError):
    """The embedded AWS could not be started or the stack could not be deployed."""


# --- endpoint resolution --------------------------------------------------------


def _answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return 200 <= status < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def find_localstack(environ: Mapping[str, str]) -> str | None:
    """Return LocalStack's edge URL if one is configured or answering, else None.

    Follows the ``localstack_client`` conventions: ``LOCALSTACK_HOST`` (and
    ``USE_SSL``) in the process environment name the edge endpoint; without
    them a LocalStack is recognised by its ``/_localstack/health`` resource
    at the default edge URL.
    """
    from localstack_client import config as localstack_config

    edge: str | None = localstack_config.get_service_endpoint("edge")
    if not edge:
        return None
    if environ.get("LOCALSTACK_HOST"):
        return edge
    return edge if _answers(edge.rstrip("/") + LOCALSTACK_HEALTH_PATH) else None


# --- moto server ------------------------------------------------------------------


def _prepare_child() -> None:
    """In the moto child, before exec: leave its lifetime to the local cloud.

    Ctrl-C reaches the whole foreground process group; the child ignores
    SIGINT so that the parent can stop its pollers before the endpoint goes
    away, then terminates it. Linux also sends the child SIGTERM if the
    parent dies without cleaning up (best effort).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class MotoServer:
    """A ``moto.server`` subprocess: every AWS API on one port, like LocalStack's edge."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The URL of the server."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id of the server, once started."""
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers HTTP."""
        # Our launcher, not moto.server: it gives each request the atomicity AWS gives it.
        command = [sys.executable, "-m", "infra.local.motoserver", "-H", self.host, "-p", str(self.port)]
        log.info("starting moto server: %s", " ".join(command[1:]))
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_prepare_child if os.name == "posix" else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalAwsError(
                    f"moto server exited with {self._process.returncode} (is port {self.port} free?)"
                )
            if _answers(self.endpoint + "/moto-api/data.json"):
                return
            time.sleep(0.1)
        self.stop()
        raise LocalAwsError(f"moto server did not answer on {self.endpoint} within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate the server and reap it."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- environment of the app -------------------------------------------------------


def aws_environment(endpoint: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the variables that make unmodified boto3 code reach ``endpoint``."""
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if not environ.get("AWS_ACCESS_KEY_ID"):
        env["AWS_ACCESS_KEY_ID"] = "testing"
    if not environ.get("AWS_SECRET_ACCESS_KEY"):
        env["AWS_SECRET_ACCESS_KEY"] = "testing"
    return env


# --- CloudFormation -----------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types (pyproject.toml)
    """A YAML loader that accepts CloudFormation's short-form tags (``!Ref``...)."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation template (JSON or YAML with short-form tags)."""
    loaded = yaml.load(path.read_text(), Loader=_CfnLoader)
    if not isinstance(loaded, dict):
        raise LocalAwsError(f"{path} is not a CloudFormation template")
    return loaded


@dataclass
class StackDeployer:
    """Create or update one CloudFormation stack and wait for it."""

    cloudformation: Any
    dynamodb: Any | None = None
    poll_s: float = 0.2
    timeout_s: float = 120.0

    def deploy(self, stack_name: str, template_path: Path, stage: str) -> dict[str, str]:
        """Deploy ``template_path`` as ``stack_name``; return the stack outputs."""
        template = load_template(template_path)
        parameters = []
        if "Stage" in (template.get("Parameters") or {}):
            parameters.append({"ParameterKey": "Stage", "ParameterValue": stage})
        body = template_path.read_text()
        kwargs = dict(
            StackName=stack_name,
            TemplateBody=body,
            Parameters=parameters,
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        if self._exists(stack_name):
            try:
                self.cloudformation.update_stack(**kwargs)
            except self.cloudformation.exceptions.ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                log.info("stack %s is up to date", stack_name)
                return self._outputs(stack_name)
            action = "UPDATE"
        else:
            self.cloudformation.create_stack(**kwargs)
            action = "CREATE"
        self._wait(stack_name, action)
        self._apply_time_to_live(stack_name, template)
        return self._outputs(stack_name)

    def _exists(self, stack_name: str) -> bool:
        try:
            stacks = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        except self.cloudformation.exceptions.ClientError:
            return False
        return any(s["StackStatus"] != "DELETE_COMPLETE" for s in stacks)

    def _wait(self, stack_name: str, action: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            stack = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
            status = stack["StackStatus"]
            if status == f"{action}_COMPLETE":
                log.info("stack %s: %s", stack_name, status)
                return
            if not status.endswith("_IN_PROGRESS"):
                raise LocalAwsError(
                    f"stack {stack_name} ended in {status}: {stack.get('StackStatusReason', '')}\n"
                    + self._events_text(stack_name)
                )
            if time.monotonic() > deadline:
                raise LocalAwsError(f"stack {stack_name} still {status}\n" + self._events_text(stack_name))
            time.sleep(self.poll_s)

    def _events_text(self, stack_name: str) -> str:
        events = self.cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
        lines = [
            f"  {e.get('LogicalResourceId')} {e.get('ResourceType')} {e.get('ResourceStatus')}"
            f" {e.get('ResourceStatusReason') or ''}".rstrip()
            for e in reversed(events)
        ]
        return "stack events:\n" + "\n".join(lines)

    def _outputs(self, stack_name: str) -> dict[str, str]:
        stack = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def _apply_time_to_live(self, stack_name: str, template: Mapping[str, Any]) -> None:
        """Apply ``TimeToLiveSpecification`` of tables, which moto's CloudFormation ignores.

        Knowingly differs from AWS either way: moto records the TTL setting
        but never deletes expired items (AWS deletes them lazily, up to days
        late), so code must check expiry timestamps itself.
        """
        if self.dynamodb is None:
            return
        resources = self.cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
        for logical_id, resource in (template.get("Resources") or {}).items():
            if resource.get("Type") != "AWS::DynamoDB::Table":
                continue
            spec = (resource.get("Properties") or {}).get("TimeToLiveSpecification")
            if not spec or logical_id not in physical:
                continue
            enabled = spec.get("Enabled")
            if isinstance(enabled, str):
                enabled = enabled.lower() == "true"
            table = physical[logical_id]
            current = self.dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
            if (current.get("TimeToLiveStatus") == "ENABLED") == bool(enabled):
                continue
            self.dynamodb.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": bool(enabled), "AttributeName": spec["AttributeName"]},
            )
