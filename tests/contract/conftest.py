"""Fixtures of the storage contract: every test runs against each implementation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from chalicelib.storage.base import Storage
from chalicelib.storage.dynamodb import DynamoStorage
from chalicelib.storage.memory import MemoryStorage
from .cloud import config_for, deploy, serial_moto_server

STAGE = "contract"
_stages = itertools.count(1)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region; no endpoint, profile or real account can leak in."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One session for the whole run: its clients share loaded service models (fast)."""
    return boto3.session.Session(
        region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture
def moto_aws(aws_env: None, boto_session: boto3.session.Session) -> Iterator[None]:
    """moto in-process, with infra/template.yaml deployed for stage ``contract``."""
    with mock_aws():
        deploy(boto_session.client("cloudformation"), STAGE)
        yield


@pytest.fixture(params=["memory", "dynamodb", "dynamodb-local-cloud"])
def storage(request: pytest.FixtureRequest, boto_session: boto3.session.Session) -> Storage:
    """Each implementation of the Storage contract in turn.

    ``dynamodb-local-cloud`` is moto with the local cloud's own transaction
    implementation (infra/local/moto_patches.py), so the local cloud keeps
    DynamoDB's contract too.
    """
    if request.param == "memory":
        return MemoryStorage()
    if request.param == "dynamodb-local-cloud":
        from moto.dynamodb.models import DynamoDBBackend

        from infra.local import moto_patches

        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(DynamoDBBackend, "transact_write_items",
                            moto_patches.transact_write_items)
    request.getfixturevalue("moto_aws")
    # Clients are made after the mock started (test_dynamodb_adapter.py covers
    # the client DynamoStorage builds for itself when given none).
    return DynamoStorage(config_for(STAGE), boto_session.client("dynamodb"))


@pytest.fixture(scope="session")
def serial_moto_url() -> Iterator[str]:
    """A serialized moto server (see tests/contract/cloud.py) for concurrency tests."""
    with serial_moto_server() as url:
        yield url


@pytest.fixture(params=["memory", "dynamodb"])
def concurrent_storage(request: pytest.FixtureRequest, aws_env: None) -> Storage:
    """Each implementation, safe to call from many threads at once (moto only for DynamoDB)."""
    if request.param == "memory":
        return MemoryStorage()
    serial_moto_url: str = request.getfixturevalue("serial_moto_url")
    stage = f"concurrent-{next(_stages)}"
    cfn = boto3.client("cloudformation", endpoint_url=serial_moto_url)
    deploy(cfn, stage)
    # One client per storage; boto3 clients are thread-safe.
    return DynamoStorage(config_for(stage), boto3.client("dynamodb", endpoint_url=serial_moto_url))
