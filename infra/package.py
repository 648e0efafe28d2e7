"""Package oncechat as one CloudFormation (SAM) template: ``python -m infra.package --stage prod``.

1. merges infra/template.yaml (tables, queues) with infra/aws.yaml (function
   names, log groups, throttling, alarms) and the roles' policy, generated
   from .chalice/policy-<stage>.json with this API's id, the region and the
   account filled in, into build/<stage>/merge.yaml;
2. runs ``chalice package --merge-template build/<stage>/merge.yaml``, which
   writes build/<stage>/sam.yaml and build/<stage>/deployment.zip.

The template names no region: the stack takes the region it is deployed
to (``${AWS::Region}``). ``chalice package`` still wants a region in its
environment, so one is passed explicitly (``--region``, default us-east-1).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Chalice's logical ids of the functions' roles.
ROLES = ("ApiHandlerRole", "WebsocketConnectRole", "WebsocketMessageRole",
         "WebsocketDisconnectRole", "DeliverRole", "SweepRole")


def load_template(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template, short-form tags turned into the long form."""
    from chalice.package import YAMLTemplateSerializer

    loaded: dict[str, Any] = YAMLTemplateSerializer().load_template(path.read_text(), str(path))
    return loaded


def role_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy file with ``arn:aws:<svc>:*:*:`` bound to this partition, region and
    account, and the management API's ``*/api/`` bound to this stack's WebSocket API."""
    document = copy.deepcopy(policy)
    for statement in document["Statement"]:
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        bound = []
        for resource in resources:
            _, _, service, region, account, rest = resource.split(":", 5)
            if (region, account) != ("*", "*"):
                raise ValueError(f"policy resources name no region or account: {resource}")
            if service == "execute-api":
                if not rest.startswith("*/"):
                    raise ValueError(f"unexpected management API resource {resource}")
                rest = "${WebsocketAPI}" + rest[1:]
            bound.append({"Fn::Sub": f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:"
                                     f"${{AWS::AccountId}}:{rest}"})
        statement["Resource"] = bound
    return document


def merge_template(stage: str) -> dict[str, Any]:
    """infra/template.yaml + infra/aws.yaml + the roles' policies, ready for --merge-template."""
    merged = load_template(ROOT / "infra/template.yaml")
    overlay = load_template(ROOT / "infra/aws.yaml")
    for section, values in overlay.items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(values)
    policy = json.loads((ROOT / f".chalice/policy-{stage}.json").read_text())
    document = role_policy(policy)
    for role in ROLES:
        merged["Resources"][role] = {"Properties": {"Policies": [
            {"PolicyName": "oncechat", "PolicyDocument": document}]}}
    merged["Parameters"]["Stage"]["Default"] = stage
    return merged


def package(stage: str, out: Path, region: str) -> Path:
    """Write build/<stage>/{merge.yaml,sam.yaml,deployment.zip}; return sam.yaml's path."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    merge = out / "merge.yaml"
    merge.write_text(yaml.safe_dump(merge_template(stage), sort_keys=False))
    chalice = Path(sys.executable).with_name("chalice")
    env = dict(os.environ, AWS_DEFAULT_REGION=region)
    subprocess.run(
        [str(chalice), "package", "--stage", stage, "--template-format", "yaml",
         "--merge-template", str(merge), str(out)],
        cwd=ROOT, env=env, check=True,
    )
    return out / "sam.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.package", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help="a stage of .chalice/config.json")
    parser.add_argument("--out", type=Path, help="output folder (default build/<stage>)")
    parser.add_argument("--region", default="us-east-1",
                        help="region in chalice's environment while packaging (the template names none)")
    args = parser.parse_args(argv)
    sam = package(args.stage, args.out or ROOT / "build" / args.stage, args.region)
    print(sam)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
