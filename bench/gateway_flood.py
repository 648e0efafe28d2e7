"""``make bench-flood`` (bench/gateway_flood.py): gateway isolation under a flooding connection (a benchmark, not a test).

    python -m bench.gateway_flood                        # 2,000 flood frames, 200 new connections
    python -m bench.gateway_flood --flood 5000 --connections 500 --parallel 100

Starts the local cloud on a small app: ``--app bare`` (tests/apps/bare:
``$default`` posts each frame back through the management API) or ``--app
echo`` (tests/apps/echo: each flood frame also writes one DynamoDB item, so
invocations cost what a real handler's do). One client sends
``--flood`` frames as fast as the socket takes them; while it does, each of
``--connections`` new clients (``--parallel`` at a time) opens a connection,
sends one frame and waits for its answer. Prints the connect times (the
WebSocket handshake, ``$connect`` included) and the answer times of the new
connections, and what became of the flood: answered, or throttled with
``Too Many Requests`` when the connection's queue was full. Exits 1 if a new
connection failed or got no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import websockets

from infra.local.launcher import REPO_ROOT, LocalCloud

APPS = {
    # app: (project, api_gateway_stage, flood frame)
    "bare": (REPO_ROOT / "tests" / "apps" / "bare", "ws", None),
    "echo": (REPO_ROOT / "tests" / "apps" / "echo", "api", json.dumps({"action": "record"})),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flood", type=int, default=2000, help="frames the flooding client sends")
    p.add_argument("--connections", type=int, default=200, help="new connections opened during the flood")
    p.add_argument("--parallel", type=int, default=50, help="new connections opening at once")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on one new connection after this")
    p.add_argument("--app", choices=sorted(APPS), default="bare",
                   help="bare: echo only; echo: a DynamoDB write per flood frame")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("cloud_args", nargs="*", help="more flags for the local cloud (after --)")
    return p.parse_args(argv)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def flooder(url: str, frames: int, frame: str | None, started: asyncio.Event) -> dict[str, int]:
    answered = throttled = other = 0
    async with websockets.connect(url, max_queue=None) as ws:
        started.set()

        async def send() -> None:
            for i in range(frames):
                await ws.send(frame or f"flood {i}")

        sender = asyncio.create_task(send())
        while answered + throttled + other < frames:
            try:
                answer = await asyncio.wait_for(ws.recv(), 60)
            except TimeoutError:
                break
            if isinstance(answer, str) and (answer.startswith("flood ") or answer == "recorded"):
                answered += 1
            elif isinstance(answer, str) and "Too Many Requests" in answer:
                throttled += 1
            else:
                other += 1
        await sender
    return {"sent": frames, "answered": answered, "throttled": throttled, "other": other}


async def newcomer(url: str, n: int, timeout_s: float, gate: asyncio.Semaphore) -> tuple[float, float] | str:
    async with gate:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with websockets.connect(url) as ws:
                    connected = time.perf_counter()
                    await ws.send(f"hello {n}")
                    while (answer := await ws.recv()) != f"hello {n}":
                        if isinstance(answer, str) and "Too Many Requests" in answer:
                            return "throttled"
                    return connected - start, time.perf_counter() - connected
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            return f"{type(exc).__name__}: {exc}"


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    started = asyncio.Event()
    flood_task = asyncio.create_task(flooder(url, args.flood, APPS[args.app][2], started))
    await started.wait()
    gate = asyncio.Semaphore(max(1, args.parallel))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(newcomer(url, n, args.timeout, gate) for n in range(args.connections)))
    newcomers_s = time.perf_counter() - t0
    flood = await flood_task
    ok = [r for r in results if isinstance(r, tuple)]
    failures = [r for r in results if not isinstance(r, tuple)]
    connect_ms = [c * 1000 for c, _ in ok]
    answer_ms = [a * 1000 for _, a in ok]
    return {
        "app": args.app,
        "flood": flood,
        "connections": args.connections,
        "answered": len(ok),
        "failures": failures[:10],
        "failed": len(failures),
        "newcomers_wall_s": round(newcomers_s, 2),
        "connect_ms": {p: round(percentile(connect_ms, p), 1) for p in (50, 90, 99, 100)},
        "answer_ms": {p: round(percentile(answer_ms, p), 1) for p in (50, 90, 99, 100)},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    project, api_stage, _ = APPS[args.app]
    with LocalCloud(project, *args.cloud_args, api_stage=api_stage) as cloud:
        report = asyncio.run(measure(cloud.websocket_url, args))
    f, c, a = report["flood"], report["connect_ms"], report["answer_ms"]
    print(f"app {report['app']}; flood: {f['sent']} frames sent, {f['answered']} answered, {f['throttled']} throttled"
          f" (Too Many Requests), {f['other']} other")
    print(f"new connections: {report['answered']}/{report['connections']} answered,"
          f" {report['failed']} failed, in {report['newcomers_wall_s']} s")
    print(f"connect ms: p50 {c[50]}  p90 {c[90]}  p99 {c[99]}  max {c[100]}")
    print(f"answer ms:  p50 {a[50]}  p90 {a[90]}  p99 {a[99]}  max {a[100]}")
    for failure in report["failures"]:
        print(f"  failure: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
