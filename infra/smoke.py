"""Black-box protocol check of any oncechat deployment: ``make smoke WS_URL=... REST_URL=...``.

Over the public endpoints only: a bad token is refused at the handshake;
a customer opens a conversation (REST), sends a message (``accepted``),
sends it again (``duplicate``, same seq), drops the connection, reconnects
and resumes (the message is replayed, then ``resumed``), reads the history
(REST), and closes the conversation. Exits non-zero on the first failure.

Tokens are minted with the stage's secret: ``--secret`` (or SMOKE_SECRET),
``--secret-parameter`` (an SSM SecureString, read with ``--region``), or
the local cloud's development secret. ``--local`` starts a local cloud
and checks it (what CI runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

TIMEOUT_S = 15.0


class SmokeFailure(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


class Smoke:
    def __init__(self, ws_url: str, rest_url: str, secret: str) -> None:
        self.ws_url = ws_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.secret = secret
        self.user = f"smoke-{uuid.uuid4().hex[:12]}"

    def token(self, user: str | None = None) -> str:
        from chalicelib.auth import mint_token

        return mint_token(self.secret, user or self.user, "customer", ttl_seconds=600)

    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        req = urllib.request.Request(self.rest_url + path, method=method, data=data, headers={
            "Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    async def connect(self, token: str) -> Any:
        import websockets

        return await websockets.connect(f"{self.ws_url}?token={token}", open_timeout=TIMEOUT_S)

    @staticmethod
    async def next_frame(ws: Any, *types: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            check(remaining > 0, f"no {'/'.join(types)} frame within {TIMEOUT_S} s")
            frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
            if frame.get("type") in types:
                return frame

    async def run(self) -> list[str]:
        import websockets

        passed = []
        try:
            ws = await self.connect("not-a-token")
            await ws.close()
            raise SmokeFailure("a bad token was accepted")
        except websockets.exceptions.InvalidStatus as err:
            check(err.response.status_code == 401, f"bad token: HTTP {err.response.status_code}")
        passed.append("bad token refused (401)")

        status, conv = self.rest("POST", "/conversations")
        check(status == 201, f"POST /conversations: {status} {conv}")
        cid = conv["conversationId"]
        passed.append(f"conversation opened ({cid})")

        send = {"action": "send", "conversationId": cid, "messageId": "smoke-1", "body": "smoke test"}
        ws = await self.connect(self.token())
        await ws.send(json.dumps(send))
        first = await self.next_frame(ws, "accepted", "error")
        check(first.get("type") == "accepted" and first["duplicate"] is False, f"send: {first}")
        seq = first["seq"]
        passed.append(f"send accepted (seq {seq})")

        await ws.send(json.dumps(send))
        again = await self.next_frame(ws, "accepted", "error")
        check(again.get("type") == "accepted" and again["duplicate"] is True and again["seq"] == seq,
              f"repeated send: {again}")
        passed.append("repeated send answered as a duplicate with the same seq")

        await ws.close()  # the drop
        ws = await self.connect(self.token())
        await ws.send(json.dumps({"action": "resume", "cursors": {cid: seq - 1}}))
        replayed = await self.next_frame(ws, "message", "error")
        check(replayed.get("type") == "message" and replayed["seq"] == seq
              and replayed["messageId"] == "smoke-1" and replayed["body"] == "smoke test",
              f"resume replay: {replayed}")
        resumed = await self.next_frame(ws, "resumed", "error")
        check(resumed.get("type") == "resumed" and resumed["conversations"].get(cid, 0) >= seq,
              f"resumed: {resumed}")
        await ws.close()
        passed.append("resume after a drop replayed the message, then resumed")

        status, page = self.rest("GET", f"/conversations/{cid}/messages?after={seq - 1}&limit=10")
        check(status == 200 and [m["messageId"] for m in page["messages"]][:1] == ["smoke-1"],
              f"history: {status} {page}")
        passed.append("history lists the message once")

        status, closed = self.rest("POST", f"/conversations/{cid}/close")
        check(status == 200 and closed["status"] == "closed", f"close: {status} {closed}")
        passed.append("conversation closed")
        return passed


def secret_from(args: argparse.Namespace) -> str:
    if args.secret:
        return str(args.secret)
    if args.secret_parameter:
        import boto3

        ssm = boto3.session.Session(region_name=args.region).client("ssm")
        return str(ssm.get_parameter(Name=args.secret_parameter, WithDecryption=True)["Parameter"]["Value"])
    from chalicelib.config import LOCAL_JWT_SECRET

    return LOCAL_JWT_SECRET


def run(ws_url: str, rest_url: str, secret: str) -> int:
    try:
        for line in asyncio.run(Smoke(ws_url, rest_url, secret).run()):
            print(f"ok   {line}")
    except SmokeFailure as err:
        print(f"FAIL {err}")
        return 1
    print("smoke test passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws-url", help="wss://<api>.execute-api.<region>.amazonaws.com/api")
    parser.add_argument("--rest-url", help="https://<api>.execute-api.<region>.amazonaws.com/api")
    parser.add_argument("--secret", default=os.environ.get("SMOKE_SECRET"))
    parser.add_argument("--secret-parameter", default=os.environ.get("SMOKE_SECRET_PARAMETER"))
    parser.add_argument("--region", default=os.environ.get("REGION"))
    parser.add_argument("--local", action="store_true", help="start a local cloud and check it")
    args = parser.parse_args(argv)
    if args.local:
        from infra.local.launcher import REPO_ROOT, LocalCloud

        with LocalCloud(REPO_ROOT) as cloud:
            return run(cloud.websocket_url, cloud.rest_url, secret_from(args))
    if not (args.ws_url and args.rest_url):
        parser.error("give --ws-url and --rest-url (or --local)")
    return run(args.ws_url, args.rest_url, secret_from(args))


if __name__ == "__main__":
    sys.exit(main())
