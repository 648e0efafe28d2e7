"""Embedded AWS helpers: endpoint resolution, environment, template parsing."""

from __future__ import annotations

from pathlib import Path

from infra.local import aws
from tests.local_cloud import APPS_DIR


def test_localstack_host_names_the_endpoint(monkeypatch):
    monkeypatch.setenv("LOCALSTACK_HOST", "localstack.internal:4566")
    assert aws.find_localstack({"LOCALSTACK_HOST": "localstack.internal:4566"}) == "http://localstack.internal:4566"


def test_app_environment_points_boto3_at_the_endpoint():
    env = aws.aws_environment("http://127.0.0.1:4566", {})
    assert env == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    kept = aws.aws_environment("http://x", {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "mine", "AWS_SECRET_ACCESS_KEY": "s"})
    assert kept["AWS_DEFAULT_REGION"] == "eu-west-1" and "AWS_ACCESS_KEY_ID" not in kept


def test_template_short_form_tags_are_parsed():
    template = aws.load_template(APPS_DIR / "echo" / "infra" / "template.yaml")
    queue = template["Resources"]["JobsQueue"]["Properties"]
    assert queue["QueueName"] == {"Fn::Sub": "echo-${Stage}-jobs.fifo"}
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}
    assert "Stage" in template["Parameters"]


def test_json_templates_load_too(tmp_path: Path):
    path = tmp_path / "template.json"
    path.write_text('{"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}')
    assert aws.load_template(path)["Resources"]["Q"]["Type"] == "AWS::SQS::Queue"
