"""``make flood``: does one flooding connection hold back everybody else?

    python -m bench.flood                          # a local cloud it starts; 1,000 frames, 200 users
    python -m bench.flood --frames 5000 --users 500
    python -m bench.flood --ws-url wss://... --rest-url https://... --secret ...   # a deployment

One connection sends ``--frames`` frames as fast as the socket takes them
(acks, reads, resumes, typing and garbage, in turn) without waiting for
answers. While it floods, ``--users`` other customers, each with a
conversation opened beforehand, open a connection and send one message.
Printed: per-user connect time, send-to-accepted time and the total
(p50/p90/p99/max), how many of them got ``accepted``, and how the flood was
answered (rate_limited and other error frames). A measurement, not a test:
the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import urllib.request
import uuid
from typing import Any

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def rest_open(rest_url: str, token: str) -> str:
    req = urllib.request.Request(f"{rest_url}/conversations", method="POST", data=b"{}", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return str(json.loads(resp.read())["conversationId"])


async def flood(ws_url: str, token: str, cid: str, frames: int, stats: dict[str, Any]) -> None:
    import websockets

    kinds = [
        json.dumps({"action": "ack", "conversationId": cid, "seq": 0}),
        json.dumps({"action": "read", "conversationId": cid, "seq": 0}),
        json.dumps({"action": "resume", "cursors": {cid: 0}}),
        json.dumps({"action": "typing", "conversationId": cid}),
        "{garbage",
    ]
    async with websockets.connect(f"{ws_url}?token={token}", max_queue=None) as ws:
        async def read() -> None:
            with contextlib.suppress(Exception):
                async for raw in ws:
                    frame = json.loads(raw)
                    key = frame.get("code") or frame.get("type")
                    stats["replies"][key] = stats["replies"].get(key, 0) + 1

        reader = asyncio.create_task(read())
        started = time.monotonic()
        for i in range(frames):
            await ws.send(kinds[i % len(kinds)])
        stats["flood_send_s"] = time.monotonic() - started
        stats["flood_done"].set()
        await asyncio.sleep(5)  # let the answers come in
        reader.cancel()


async def one_user(ws_url: str, token: str, cid: str, out: list[dict[str, float]],
                   failures: list[str]) -> None:
    import websockets

    t0 = time.monotonic()
    try:
        async with websockets.connect(f"{ws_url}?token={token}", open_timeout=120) as ws:
            t1 = time.monotonic()
            await ws.send(json.dumps({"action": "send", "conversationId": cid,
                                      "messageId": "flood-1", "body": "hello during a flood"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame.get("type") == "accepted":
                    break
                if frame.get("type") == "error":
                    failures.append(frame.get("code", "error"))
                    return
            t2 = time.monotonic()
    except Exception as exc:  # a refused or timed-out connection is a result, not a crash
        failures.append(type(exc).__name__)
        return
    out.append({"connect": (t1 - t0) * 1000, "send": (t2 - t1) * 1000, "total": (t2 - t0) * 1000})


async def run(ws_url: str, rest_url: str, secret: str, frames: int, users: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    flooder = f"flooder-{run_id}"
    flood_token = mint_token(secret, flooder, "customer")
    flood_cid = rest_open(rest_url, flood_token)
    people = [(f"user-{run_id}-{i}", mint_token(secret, f"user-{run_id}-{i}", "customer"))
              for i in range(users)]
    loop = asyncio.get_running_loop()
    cids = await asyncio.gather(*(loop.run_in_executor(None, rest_open, rest_url, tok)
                                  for _, tok in people))
    stats: dict[str, Any] = {"replies": {}, "flood_done": asyncio.Event()}
    flooding = asyncio.create_task(flood(ws_url, flood_token, flood_cid, frames, stats))
    await asyncio.sleep(0.2)  # the flood is under way
    results: list[dict[str, float]] = []
    failures: list[str] = []
    started = time.monotonic()
    await asyncio.gather(*(one_user(ws_url, tok, cid, results, failures)
                           for (_, tok), cid in zip(people, cids, strict=True)))
    users_s = time.monotonic() - started
    await flooding
    return {"frames": frames, "users": users, "accepted": len(results), "failures": failures,
            "users_wall_s": users_s, "flood_send_s": stats.get("flood_send_s"),
            "flood_replies": stats["replies"], "timings": results}


def report(result: dict[str, Any]) -> None:
    print(f"flood: {result['frames']} frames sent in {result['flood_send_s']:.2f} s; "
          f"answers: {json.dumps(result['flood_replies'], sort_keys=True)}")
    print(f"users: {result['accepted']}/{result['users']} got accepted "
          f"(failures: {result['failures'] or 'none'}); all done in {result['users_wall_s']:.2f} s")
    for key in ("connect", "send", "total"):
        values = [t[key] for t in result["timings"]]
        if values:
            print(f"  {key:8s} ms  p50 {percentile(values, 50):8.1f}  p90 {percentile(values, 90):8.1f}"
                  f"  p99 {percentile(values, 99):8.1f}  max {max(values):8.1f}"
                  f"  mean {statistics.fmean(values):8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--ws-url")
    parser.add_argument("--rest-url")
    parser.add_argument("--secret", default=LOCAL_JWT_SECRET)
    parser.add_argument("--json", type=str, help="also write the result here")
    args = parser.parse_args(argv)
    if args.ws_url and args.rest_url:
        result = asyncio.run(run(args.ws_url, args.rest_url, args.secret, args.frames, args.users))
    else:
        from infra.local.launcher import REPO_ROOT, LocalCloud

        with LocalCloud(REPO_ROOT) as cloud:
            result = asyncio.run(run(cloud.websocket_url, cloud.rest_url, args.secret,
                                     args.frames, args.users))
    report(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if result["accepted"] == result["users"] else 1


if __name__ == "__main__":
    sys.exit(main())
