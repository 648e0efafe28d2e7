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
