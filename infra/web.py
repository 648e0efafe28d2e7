"""Publish the widget, the console and the browser SDK of ``web/`` to the S3 bucket of ``infra/web.yaml``.

::

    python -m infra.web deploy --stage prod --stack oncechat-prod-web \\
        --token-url https://www.example.com/oncechat/token

writes every file of ``web/`` with its content type and cache lifetime,
plus ``config.json``: the stage's REST and WebSocket URLs (read from
Chalice's deployment record ``.chalice/deployed/<stage>.json``, or given
with ``--rest-url`` / ``--websocket-url``) and the token endpoint. The
pages read their URLs from that file and nowhere else. With a CloudFront
distribution (from the stack, or ``--distribution-id``) it then
invalidates the cached copies.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB_ROOT = REPO_ROOT / "web"

#: Pages and their configuration are re-read on every visit; code and styles for five minutes.
NO_CACHE = "no-cache"
SHORT_CACHE = "public, max-age=300"
#: Object keys under which a page is also served (CloudFront does not rewrite ``/console``).
ALIASES = {"console.html": "console"}


def deployed_urls(project_dir: Path, stage: str) -> dict[str, str]:
    """The REST and WebSocket URLs ``chalice deploy`` recorded for ``stage``."""
    record = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    if not record.is_file():
        raise SystemExit(f"no {record}: run `chalice deploy --stage {stage}` first, "
                         "or give --rest-url and --websocket-url")
    urls: dict[str, str] = {}
    for resource in json.loads(record.read_text())["resources"]:
        if resource.get("resource_type") == "rest_api":
            urls["restUrl"] = resource["rest_api_url"]
        elif resource.get("resource_type") == "websocket_api":
            urls["websocketUrl"] = resource["websocket_api_url"]
    if set(urls) != {"restUrl", "websocketUrl"}:
        raise SystemExit(f"{record} lacks a REST or WebSocket API")
    return urls


def web_config(rest_url: str, websocket_url: str, token_url: str, stage: str) -> dict[str, Any]:
    """The pages' ``config.json`` (the same keys the local cloud serves)."""
    return {
        "restUrl": rest_url.rstrip("/"),
        "websocketUrl": websocket_url.rstrip("/"),
        "tokenUrl": token_url,
        "stage": stage,
        "devSignIn": False,
    }


def files_to_upload(root: Path) -> list[tuple[str, Path, str, str]]:
    """``(key, path, content type, cache control)`` of every file of ``root``."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if key == "config.json" or key.startswith("."):
            continue  # config.json is written from the deployment, never from a file
        kind = "text/javascript" if path.suffix == ".js" else (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        cache = NO_CACHE if path.suffix == ".html" else SHORT_CACHE
        out.append((key, path, kind, cache))
        if key in ALIASES:
            out.append((ALIASES[key], path, kind, cache))
    return out


def publish(s3: Any, bucket: str, root: Path, config: dict[str, Any]) -> list[str]:
    """Upload ``root`` and ``config.json`` to ``bucket``; the keys written."""
    keys = []
    for key, path, kind, cache in files_to_upload(root):
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType=kind, CacheControl=cache)
        keys.append(key)
    s3.put_object(Bucket=bucket, Key="config.json", Body=json.dumps(config, indent=2).encode(),
                  ContentType="application/json", CacheControl=NO_CACHE)
    keys.append("config.json")
    return keys


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def deploy(args: argparse.Namespace) -> int:
    import boto3

    session = boto3.session.Session()
    bucket, distribution = args.bucket, args.distribution_id
    if args.stack:
        outputs = stack_outputs(session.client("cloudformation"), args.stack)
        bucket = bucket or outputs.get("WebBucketName")
        distribution = distribution or outputs.get("WebDistributionId")
    if not bucket:
        raise SystemExit("give --stack (infra/web.yaml deployed) or --bucket")
    if args.rest_url and args.websocket_url:
        urls = {"restUrl": args.rest_url, "websocketUrl": args.websocket_url}
    else:
        urls = deployed_urls(Path(args.project_dir), args.stage)
    config = web_config(urls["restUrl"], urls["websocketUrl"], args.token_url, args.stage)
    keys = publish(session.client("s3"), bucket, Path(args.web_root), config)
    print(f"published {len(keys)} objects to s3://{bucket}; config.json: {json.dumps(config)}")
    if distribution:
        session.client("cloudfront").create_invalidation(
            DistributionId=distribution,
            InvalidationBatch={"Paths": {"Quantity": 1, "Items": ["/*"]},
                               "CallerReference": f"oncechat-{int(time.time())}"})
        print(f"invalidated CloudFront distribution {distribution}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.web", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("deploy", help="upload web/ and its config.json")
    d.add_argument("--stage", default="prod", help="the Chalice stage (default: %(default)s)")
    d.add_argument("--stack", help="the CloudFormation stack of infra/web.yaml (bucket and distribution)")
    d.add_argument("--bucket", help="the bucket (instead of --stack)")
    d.add_argument("--distribution-id", help="the CloudFront distribution to invalidate")
    d.add_argument("--token-url", required=True,
                   help="the endpoint that answers a signed-in user's POST with {\"token\": JWT} (docs/web.md)")
    d.add_argument("--rest-url", help="the REST API's URL (default: from .chalice/deployed/STAGE.json)")
    d.add_argument("--websocket-url", help="the WebSocket API's URL (default: from .chalice/deployed/STAGE.json)")
    d.add_argument("--project-dir", default=str(REPO_ROOT), help="the Chalice project")
    d.add_argument("--web-root", default=str(WEB_ROOT), help="the files to publish")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return deploy(args)


if __name__ == "__main__":
    sys.exit(main())
