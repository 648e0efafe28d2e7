"""Deploy oncechat to AWS as one CloudFormation stack: ``make deploy STAGE=prod REGION=... ...``.

Packages (infra/package.py), uploads the deployment package and the
template to an S3 bucket you own, then creates or updates the stack
``oncechat-<stage>`` through a change set and waits for it. The region is
never guessed: ``--region`` is required and is the only one used.

Prerequisites (docs: README "Deploying to AWS"): credentials allowed to
run CloudFormation with IAM capabilities; an S3 bucket in that region for
the artifacts; an SNS topic for the alarms; the JWT secret as an SSM
SecureString named ``/oncechat/<stage>/jwt-secret``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any

import yaml

from infra.package import ROOT, package


def point_code_at(template: dict[str, Any], bucket: str, key: str) -> dict[str, Any]:
    """Every function's CodeUri at the uploaded deployment package."""
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = {"Bucket": bucket, "Key": key}
    return template


def stack_parameters(stage: str, alarm_topic_arn: str, extra: list[str]) -> list[dict[str, str]]:
    params = {"Stage": stage, "AlarmTopicArn": alarm_topic_arn}
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--parameter wants NAME=VALUE, got {item!r}")
        params[name] = value
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]


def deploy(stage: str, region: str, bucket: str, alarm_topic_arn: str,
           extra: list[str], session: Any = None) -> dict[str, str]:
    import boto3

    session = session or boto3.session.Session(region_name=region)
    out = ROOT / "build" / stage
    sam = package(stage, out, region)
    zip_path = out / "deployment.zip"
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()[:16]
    key = f"oncechat/{stage}/deployment-{digest}.zip"
    s3 = session.client("s3")
    s3.upload_file(str(zip_path), bucket, key)
    template = point_code_at(yaml.safe_load(sam.read_text()), bucket, key)
    body = yaml.safe_dump(template, sort_keys=False)
    template_key = f"oncechat/{stage}/template-{hashlib.sha256(body.encode()).hexdigest()[:16]}.yaml"
    s3.put_object(Bucket=bucket, Key=template_key, Body=body.encode())
    url = f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}"
    cfn = session.client("cloudformation")
    name = f"oncechat-{stage}"
    try:
        cfn.describe_stacks(StackName=name)
        change_type = "UPDATE"
    except cfn.exceptions.ClientError:
        change_type = "CREATE"
    change_set = f"{name}-{digest}-{template_key[-21:-5]}"
    cfn.create_change_set(
        StackName=name, ChangeSetName=change_set, ChangeSetType=change_type, TemplateURL=url,
        Parameters=stack_parameters(stage, alarm_topic_arn, extra),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    try:
        cfn.get_waiter("change_set_create_complete").wait(StackName=name, ChangeSetName=change_set)
    except Exception:
        reason = cfn.describe_change_set(StackName=name, ChangeSetName=change_set).get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            print(f"{name}: no changes")
            return _outputs(cfn, name)
        raise SystemExit(f"change set failed: {reason}") from None
    cfn.execute_change_set(StackName=name, ChangeSetName=change_set)
    waiter = "stack_create_complete" if change_type == "CREATE" else "stack_update_complete"
    cfn.get_waiter(waiter).wait(StackName=name, WaiterConfig={"Delay": 15, "MaxAttempts": 240})
    return _outputs(cfn, name)


def _outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--region", required=True, help="the AWS region; nothing else is assumed")
    parser.add_argument("--bucket", required=True, help="S3 bucket (in --region) for the artifacts")
    parser.add_argument("--alarm-topic-arn", required=True, help="SNS topic the alarms notify")
    parser.add_argument("--parameter", action="append", default=[],
                        help="another stack parameter NAME=VALUE (infra/aws.yaml), repeatable")
    args = parser.parse_args(argv)
    outputs = deploy(args.stage, args.region, args.bucket, args.alarm_topic_arn, args.parameter)
    for key in ("WebSocketURL", "RestURL"):
        print(f"{key}: {outputs.get(key)}")
    print(f"smoke test: make smoke WS_URL={outputs.get('WebSocketURL')} REST_URL={outputs.get('RestURL')}"
          f" SMOKE_SECRET_PARAMETER=/oncechat/{args.stage}/jwt-secret REGION={args.region}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
