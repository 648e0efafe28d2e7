"""Deploying infra/template.yaml to moto, in-process or behind a serialized server.

moto gaps these helpers work around (each is also pinned by a test in
test_template.py or test_concurrency.py):

* moto's CloudFormation ignores ``TimeToLiveSpecification``: ``deploy``
  reports what the template declares so a test can compare.
* moto's DynamoDB is not safe under concurrent requests. A transaction
  snapshots whole tables (``copy.deepcopy``) and restores the snapshot when it
  is cancelled, which wipes writes other threads committed in between; the
  in-process mock can also crash mid-copy ("dictionary changed size during
  iteration"). ``serial_moto_server`` serves one request at a time, which
  restores DynamoDB's per-request atomicity, so concurrency tests run there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from chalicelib.config import Config

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"


def config_for(stage: str) -> Config:
    """The Config a deployed function of ``stage`` builds (default resource names)."""
    return Config.from_env({"STAGE": stage, "JWT_SECRET": "contract-test-secret"})


def deploy(cloudformation: Any, stage: str) -> dict[str, str]:
    """Create the stack ``oncechat-<stage>`` from the template; return its outputs."""
    name = f"oncechat-{stage}"
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": "Stage", "ParameterValue": stage}],
    )
    stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log in tests
        pass


@contextmanager
def serial_moto_server() -> Iterator[str]:
    """A moto server on a free port that handles one request at a time; yields its URL.

    Unlike ``ThreadedMotoServer`` (and the ``moto_server`` command), which
    serve requests on concurrent threads, this server is not threaded.
    """
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=False,
        request_handler=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
