"""`chalice package` of the app, merged with infra/template.yaml, into a temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_chalice_package_merges_app_and_data_stack(tmp_path):
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
    chalice = Path(sys.executable).with_name("chalice")
    out = tmp_path / "out"
    subprocess.run(
        [str(chalice), "package", "--stage", "prod", "--template-format", "yaml",
         "--merge-template", "infra/template.yaml", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=600,
    )
    assert (out / "deployment.zip").stat().st_size > 0
    template = yaml.load((out / "sam.yaml").read_text(), Loader=_CfnLoader)
    resources = template["Resources"]
    types = [r["Type"] for r in resources.values()]
    assert types.count("AWS::DynamoDB::Table") == 7
    assert types.count("AWS::SQS::Queue") == 2
    routes = {r["Properties"]["RouteKey"] for r in resources.values()
              if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert routes == {"$connect", "$default", "$disconnect"}
    source = resources["Deliver"]["Properties"]["Events"]["DeliverSqsEventSource"]["Properties"]
    assert source["Queue"]["Fn::Sub"].endswith(":oncechat-prod-delivery.fifo")
    assert source["BatchSize"] == 10
    env_vars = resources["Deliver"]["Properties"]["Environment"]["Variables"]
    assert env_vars["STAGE"] == "prod" and env_vars["MESSAGES_TABLE"] == "oncechat-prod-messages"
    assert env_vars["LIMITS_TABLE"] == "oncechat-prod-limits"
    paths = resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    assert {(p, m) for p, ops in paths.items() for m in ops if m != "options"} >= {
        ("/conversations", "post"), ("/conversations", "get"), ("/conversations/{conversation_id}", "get"),
        ("/conversations/{conversation_id}/messages", "get"),
        ("/conversations/{conversation_id}/close", "post"),
        ("/conversations/{conversation_id}/transfer", "post"),
        ("/agents/me/status", "put"), ("/agents", "get"), ("/queue", "get")}


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Sub, !GetAtt, ...) as plain values."""


def _any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}


_CfnLoader.add_multi_constructor("!", _any_tag)


# ------------------------------------------------- the deployable stack (make package)

import pytest

DATA_TABLES = ("ConversationsTable", "MessagesTable", "IdempotencyTable", "ParticipantsTable",
               "AgentsTable")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    from infra.package import package

    sam = package("prod", tmp_path_factory.mktemp("prod"), "us-east-1")
    return yaml.load(sam.read_text(), Loader=_CfnLoader), sam


def test_packaged_stack_keeps_data_safe_and_encrypted(packaged):
    template, _ = packaged
    resources = template["Resources"]
    for name in DATA_TABLES:
        table = resources[name]
        assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
        props = table["Properties"]
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] == {
            "Fn::If": ["IsDeployedStage", True, False]}
        assert props["DeletionProtectionEnabled"] == {"Fn::If": ["IsDeployedStage", True, False]}
        assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS"}
    for name in ("ConnectionsTable", "LimitsTable"):
        assert "SSEEnabled" in resources[name]["Properties"]["SSESpecification"]
    for name in ("DeliveryQueue", "DeliveryDeadLetterQueue"):
        assert resources[name]["Properties"]["SqsManagedSseEnabled"] is True
    assert template["Conditions"]["IsLocalStage"]


def test_packaged_stack_alarms_notify_the_topic_parameter(packaged):
    template, _ = packaged
    assert "AlarmTopicArn" in template["Parameters"]
    alarms = {k: v["Properties"] for k, v in template["Resources"].items()
              if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {"DeadLetterQueueNotEmptyAlarm", "PendingPastSweepBoundAlarm",
                           "HandlerErrorsAlarm", "ThrottlesAlarm"}
    for props in alarms.values():
        assert props["AlarmActions"] == [{"Ref": "AlarmTopicArn"}]
    assert alarms["PendingPastSweepBoundAlarm"]["MetricName"] == "PendingPastBound"
    functions = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    watched = {m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"]
               for m in alarms["HandlerErrorsAlarm"]["Metrics"] if "MetricStat" in m}
    assert watched == functions


def test_packaged_functions_have_named_log_groups_roles_and_throttling(packaged):
    template, _ = packaged
    resources = template["Resources"]
    names = {resources[f]["Properties"]["FunctionName"]["Sub"] if "Sub" in resources[f]["Properties"][
        "FunctionName"] else resources[f]["Properties"]["FunctionName"]["Fn::Sub"]
        for f in resources if resources[f]["Type"] == "AWS::Serverless::Function"}
    groups = {r["Properties"]["LogGroupName"].get("Sub") or r["Properties"]["LogGroupName"]["Fn::Sub"]
              for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"}
    assert groups == {f"/aws/lambda/{n}" for n in names}
    for role in (r for r in resources.values() if r["Type"] == "AWS::IAM::Role"):
        [policy] = role["Properties"]["Policies"]
        text = str(policy)
        assert "logs:CreateLogGroup" not in text and "dynamodb:Scan" in text
        assert "${WebsocketAPI}/api/POST/@connections/*" in text
    stage = resources["WebsocketAPIStage"]["Properties"]["DefaultRouteSettings"]
    assert set(stage) == {"ThrottlingRateLimit", "ThrottlingBurstLimit"}
    assert resources["RestAPI"]["Properties"]["MethodSettings"][0]["ThrottlingRateLimit"]


def test_deploy_points_every_function_at_the_uploaded_package(packaged):
    from infra.deploy import point_code_at, stack_parameters

    template, _ = packaged
    moved = point_code_at(template, "my-bucket", "oncechat/prod/deployment-1.zip")
    codes = [r["Properties"]["CodeUri"] for r in moved["Resources"].values()
             if r["Type"] == "AWS::Serverless::Function"]
    assert len(codes) == 6 and all(c == {"Bucket": "my-bucket", "Key": "oncechat/prod/deployment-1.zip"}
                                   for c in codes)
    assert stack_parameters("prod", "arn:aws:sns:eu-west-1:123456789012:ops", ["LogRetentionDays=90"]) == [
        {"ParameterKey": "Stage", "ParameterValue": "prod"},
        {"ParameterKey": "AlarmTopicArn", "ParameterValue": "arn:aws:sns:eu-west-1:123456789012:ops"},
        {"ParameterKey": "LogRetentionDays", "ParameterValue": "90"}]


def test_packaged_template_passes_cfn_lint(packaged):
    _, sam = packaged
    lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(lint), str(sam)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
