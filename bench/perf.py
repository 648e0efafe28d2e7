"""``make bench``: what one delivered message costs, oncechat against two baselines, in one run.

    python -m bench.perf                 # the full run (the sizes of issue 9)
    python -m bench.perf --quick         # a smoke-sized run
    python -m bench.perf --only oncechat # skip the baselines

Three Chalice apps run one after the other on the same metered local cloud
(``bench.cloud``: moto behind the counting proxy ``bench.proxy``):
oncechat (this repository), **wschat** (the Chalice docs' WebSocket chat
pattern, ``bench/apps/wschat``) and **relay** (a frame pushed to the peer
with no storage: the at-most-once floor, ``bench/apps/relay``).

Scenarios:

1. paced 1:1: one conversation, both sides online, N messages each way at
   a fixed pace (SDK clients for oncechat, plain websockets clients for the
   baselines). AWS requests, write and read units per delivered message,
   by phase and by operation, and the cost per million delivered messages.
2. closed loop: C conversations, each a ping-pong of M messages (the next
   is sent when the previous arrived): send -> recipient latency p50/p99
   and delivered messages per second. Capacity units are not computed here
   (the proxy only counts), so the proxy adds as little time as it can.
3. burst (oncechat): B messages sent at once into one conversation by one
   SDK client (unordered): append transactions, cancellations, resends,
   time until the recipient has them all.
4. resume (oncechat): an agent with R closed memberships connects and
   resumes with no cursors: time, AWS requests, largest frame.
5. cold import: ``import app`` against ``import boto3`` in fresh
   interpreters, best of N.

Prints a table (figure, oncechat, wschat, relay, ratio, target, met?),
writes the whole result as JSON, exits 0 (targets missed are figures, not
failures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Callable

import websockets

from bench.cloud import MeteredCloud
from bench.prices import FLOOR_PER_MESSAGE, PRICES
from infra.local.launcher import REPO_ROOT

APPS = {
    "oncechat": REPO_ROOT,
    "wschat": REPO_ROOT / "bench" / "apps" / "wschat",
    "relay": REPO_ROOT / "bench" / "apps" / "relay",
}
STAGE = "local"
MAX_FRAME_BYTES = 128 * 1024
DEFAULT_MEMORY_MB = 128  # Chalice's default lambda_memory_size
PAD = "lorem ipsum dolor sit amet, consectetur adipiscing elit "  # a short chat line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (overrides the sizes below)")
    p.add_argument("--messages", type=int, default=200, help="paced 1:1: messages each way")
    p.add_argument("--pace", type=float, default=1.0, help="paced 1:1: seconds between a side's messages")
    p.add_argument("--conversations", type=int, default=10, help="closed loop: conversations")
    p.add_argument("--rounds", type=int, default=40, help="closed loop: messages per conversation")
    p.add_argument("--burst", type=int, default=400, help="burst: messages sent at once")
    p.add_argument("--memberships", default="1000,4000", help="resume: closed memberships of the agent")
    p.add_argument("--resume-timeout", type=float, default=120.0)
    p.add_argument("--imports", type=int, default=5, help="cold import: best of N")
    p.add_argument("--only", default="oncechat,wschat,relay", help="apps to run (comma-separated)")
    p.add_argument("--json", default="bench-report.json", help="where to write the result")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.pace, args.conversations, args.rounds = 10, 0.2, 3, 6
        args.burst, args.memberships, args.imports, args.resume_timeout = 30, "20,60", 2, 60.0
    args.only = [a for a in args.only.split(",") if a]
    args.memberships = [int(x) for x in str(args.memberships).split(",") if x]
    return args


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# --- clients --------------------------------------------------------------------------------


@dataclass
class Registry:
    """When each message id was sent and when its recipient got it."""

    sent_at: dict[str, float] = field(default_factory=dict)
    recv_at: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    max_frame: int = 0

    def received(self, mid: str) -> None:
        if mid not in self.recv_at:
            self.recv_at[mid] = time.perf_counter()
        event = self.waiters.get(mid)
        if event is not None:
            event.set()

    def wait_for(self, mid: str) -> asyncio.Event:
        event = self.waiters.setdefault(mid, asyncio.Event())
        if mid in self.recv_at:
            event.set()
        return event

    def latencies_ms(self) -> list[float]:
        return [(self.recv_at[m] - t) * 1000 for m, t in self.sent_at.items() if m in self.recv_at]


def body_for(mid: str) -> str:
    return f"{mid} {PAD}"


def mid_of(body: str) -> str:
    return body.split(" ", 1)[0]


class Endpoint:
    """One side of a conversation: send a message id, report the ids it receives."""

    conversation: str

    def send(self, mid: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PlainEndpoint(Endpoint):
    """A plain websockets client of the baselines (``?room=R&user=U``)."""

    def __init__(self, ws: Any, room: str, user: str, registry: Registry) -> None:
        self.ws = ws
        self.conversation = room
        self.user = user
        self.registry = registry
        self.sending: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, room: str, user: str, registry: Registry) -> PlainEndpoint:
        ws = await websockets.connect(f"{url}?room={room}&user={user}", max_size=None)
        return cls(ws, room, user, registry)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.registry.max_frame = max(self.registry.max_frame, len(raw))
                frame = json.loads(raw)
                if frame.get("type") == "message" and frame.get("from") != self.user:
                    self.registry.received(str(frame.get("id")))

    def send(self, mid: str) -> None:
        self.registry.sent_at[mid] = time.perf_counter()
        task = asyncio.create_task(self.ws.send(json.dumps({"action": "send", "room": self.conversation,
                                                            "id": mid, "body": body_for(mid)})))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


class SdkEndpoint(Endpoint):
    """An oncechat SDK client (client.sdk.OnceChatClient) in one conversation."""

    def __init__(self, sdk: Any, conversation: str, registry: Registry) -> None:
        self.sdk = sdk
        self.conversation = conversation
        self.registry = registry
        self.futures: list[asyncio.Future[Any]] = []

    def send(self, mid: str) -> None:
        self.registry.sent_at[mid] = time.perf_counter()
        self.futures.append(self.sdk.send(self.conversation, body_for(mid), message_id=mid))

    async def close(self) -> None:
        pass  # the SDK client is shared by its user's conversations: closed by OnceChatUsers


class OnceChatUsers:
    """SDK clients of oncechat users, each consuming its messages into a registry."""

    def __init__(self, cloud: MeteredCloud, registry: Registry) -> None:
        self.cloud = cloud
        self.registry = registry
        self.clients: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []
        #: (customer client, conversation) of every pair, closed at the end of the scenario.
        self.opened: list[tuple[Any, str]] = []

    async def user(self, name: str, role: str, **options: Any) -> Any:
        from chalicelib.auth import mint_token
        from chalicelib.config import LOCAL_JWT_SECRET
        from client import Backoff, OnceChatClient

        token = mint_token(LOCAL_JWT_SECRET, name, role, ttl_seconds=6 * 3600)
        sdk = OnceChatClient(self.cloud.websocket_url, token, rest_url=self.cloud.rest_url,
                             backoff=Backoff(base=0.05, cap=2.0), **options)
        await sdk.connect()
        self.clients[name] = sdk
        self.tasks.append(asyncio.create_task(self._consume(name, sdk)))
        return sdk

    async def _consume(self, name: str, sdk: Any) -> None:
        async for m in sdk.messages():
            if m.sender_id != name and not m.is_system:
                self.registry.received(mid_of(m.body))

    async def pairs(self, count: int, tag: str) -> list[tuple[Endpoint, Endpoint]]:
        """``count`` conversations, each a customer and the agent it was assigned to."""
        agents = [await self.user(f"{tag}-agent-{i}", "agent") for i in range(count)]
        await asyncio.sleep(0.5)
        for agent in agents:
            await agent.set_status("online", capacity=max(2, count))
        result = []
        for i in range(count):
            customer = await self.user(f"{tag}-cust-{i}", "customer")
            conv = await customer.open_conversation()
            if conv.agent_id is None:
                raise RuntimeError(f"conversation {conv.conversation_id} found no agent")
            agent = self.clients[conv.agent_id]
            self.opened.append((customer, conv.conversation_id))
            result.append((SdkEndpoint(customer, conv.conversation_id, self.registry),
                           SdkEndpoint(agent, conv.conversation_id, self.registry)))
        return result

    async def close(self) -> None:
        # The customers end their conversations: left open, an agent who leaves
        # would hand them to the queue, and the next scenario's agent would get them.
        for customer, conversation_id in self.opened:
            with contextlib.suppress(Exception):
                await customer.close_conversation(conversation_id)
        for sdk in self.clients.values():
            with contextlib.suppress(Exception):
                await sdk.close()
        for task in self.tasks:
            task.cancel()


async def make_pairs(app: str, cloud: MeteredCloud, count: int, tag: str,
                     registry: Registry) -> tuple[list[tuple[Endpoint, Endpoint]], Callable[[], Any]]:
    """``count`` two-party conversations of ``app``, and how to close them."""
    if app == "oncechat":
        users = OnceChatUsers(cloud, registry)
        pairs = await users.pairs(count, tag)
        return pairs, users.close
    pairs = []
    for i in range(count):
        room = f"{tag}-room-{i}"
        a = await PlainEndpoint.open(cloud.websocket_url, room, f"{tag}-a-{i}", registry)
        b = await PlainEndpoint.open(cloud.websocket_url, room, f"{tag}-b-{i}", registry)
        pairs.append((a, b))

    async def close() -> None:
        for a, b in pairs:
            await a.close()
            await b.close()

    return pairs, close


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


# --- meters -> figures ----------------------------------------------------------------------


def memory_mb(project_dir: Path, stage: str = STAGE) -> dict[str, int]:
    """``lambda_memory_size`` per function name (``*`` for the default) from .chalice/config.json."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    stage_cfg = config.get("stages", {}).get(stage, {})
    default = int(stage_cfg.get("lambda_memory_size", config.get("lambda_memory_size", DEFAULT_MEMORY_MB)))
    sizes = {"*": default}
    for scope in (config, stage_cfg):
        for name, fn in (scope.get("lambda_functions") or {}).items():
            if "lambda_memory_size" in fn:
                sizes[name] = int(fn["lambda_memory_size"])
    return sizes


def phase_of(label: str) -> str:
    """send / delivery / ack / other, from a request's invocation label."""
    if label in ("message:send",):
        return "send"
    if label in ("deliver", "event-source"):
        return "delivery"
    if label == "message:ack":
        return "ack"
    return "other"


def summarize(stats: dict[str, Any], delivered: int, memory: dict[str, int]) -> dict[str, Any]:
    """Per-delivered-message figures and the cost model from one window of meters."""
    d = max(1, delivered)
    aws = stats["aws"]["requests"]
    cloud = stats["cloud"]
    requests = sum(r.get("requests", 0) for r in aws)
    event_source = sum(r.get("requests", 0) for r in aws if r["phase"] == "event-source")
    ddb = [r for r in aws if r["service"] == "dynamodb"]
    sqs = [r for r in aws if r["service"] == "sqs"]
    wru = sum(r.get("wru", 0) + r.get("index_wru", 0) for r in ddb)
    failed_wru = sum(r.get("failed_wru", 0) for r in ddb)
    rru = sum(r.get("rru", 0) for r in ddb)
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_operation: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in aws:
        phase = phase_of(r["phase"])
        op = f"{r['service']}:{r['operation']}" + (f" [{r['detail']}]" if r.get("detail") else "")
        for target in (by_phase[phase], by_operation[f"{phase} {op}"]):
            target["requests"] += r.get("requests", 0)
            target["wru"] += r.get("wru", 0) + r.get("index_wru", 0)
            target["index_wru"] += r.get("index_wru", 0)
            target["rru"] += r.get("rru", 0)
            target["cancelled"] += r.get("cancelled_requests", 0)
            target["failed_wru"] += r.get("failed_wru", 0)
    per = lambda rows: {k: {m: round(v / d, 3) for m, v in row.items()} for k, row in sorted(rows.items())}
    lambdas = cloud["lambdas"]
    invocations = sum(v["invocations"] for v in lambdas.values())
    # Handler time minus the time its requests spent in the counting proxy
    # but not in AWS (parsing, the accounting's locks and item reads): what
    # the handler would take behind a plain endpoint. Requests made on the
    # handler's own threads are not subtracted (it was not waiting for
    # them). Billed per invocation in 1 ms steps.
    overhead: dict[str, float] = defaultdict(float)
    for r in aws:
        overhead[r["phase"]] += r.get("overhead_ms", 0)
    gb_seconds = 0.0
    handler_ms = 0.0
    for label, v in lambdas.items():
        fn = label.split(":", 1)[0]
        ms = max(0.0, v["ms"] - overhead.get(label, 0.0))
        handler_ms += ms
        billed = ms + v["invocations"] * 0.5  # rounding up to the next 1 ms, on average
        gb_seconds += billed / 1000 * memory.get(fn, memory["*"]) / 1024
    frames_in = sum(v["frames"] for v in cloud["frames_in"].values())
    units_in = sum(v["units"] for v in cloud["frames_in"].values())
    pushes = cloud["pushes"].get("frames", 0)
    route_responses = cloud.get("route_responses", {}).get("frames", 0)
    # API Gateway bills a route's response as a message sent, like a push.
    units_out = cloud["pushes"].get("units", 0) + cloud.get("route_responses", {}).get("units", 0)
    management = sum(v["calls"] for v in cloud["management"].values())
    connection_minutes = cloud["connections"].get("seconds", 0) / 60
    sqs_requests = sum(r.get("requests", 0) for r in sqs)
    cost = {
        "apigw_messages": (units_in + units_out) * PRICES["apigw_ws_message"].each,
        "apigw_connection_minutes": connection_minutes * PRICES["apigw_ws_connection_minute"].each,
        "lambda_requests": invocations * PRICES["lambda_request"].each,
        "lambda_duration": gb_seconds * PRICES["lambda_gb_second"].each,
        "dynamodb_writes": wru * PRICES["dynamodb_wru"].each,
        "dynamodb_reads": rru * PRICES["dynamodb_rru"].each,
        "sqs_requests": sqs_requests * PRICES["sqs_fifo_request"].each,
    }
    cost_per_million = {k: round(v / d * 1_000_000, 3) for k, v in cost.items()}
    total = sum(cost.values()) / d * 1_000_000
    return {
        "delivered": delivered,
        "aws_requests": round(requests / d, 3),
        "event_source_requests": round(event_source / d, 3),
        "wru": round(wru / d, 3),
        "failed_wru": round(failed_wru / d, 3),
        "rru": round(rru / d, 3),
        "management_calls": round(management / d, 3),
        "frames_in": round(frames_in / d, 3),
        "pushes": round(pushes / d, 3),
        "route_responses": round(route_responses / d, 3),
        "lambda_invocations": round(invocations / d, 3),
        "lambda_ms": round(handler_ms / d, 2),
        "lambda_ms_measured": round(sum(v["ms"] for v in lambdas.values()) / d, 2),
        "proxy_overhead_ms": round(sum(overhead.values()) / d, 2),
        "lambda_gb_seconds": round(gb_seconds / d, 6),
        "connection_minutes": round(connection_minutes / d, 5),
        "by_phase": per(by_phase),
        "by_operation": per(by_operation),
        "index_writes": stats["aws"].get("index_writes", []),
        "cost_per_million": cost_per_million,
        "cost_per_million_total": round(total, 2),
        "floor_per_million": round(FLOOR_PER_MESSAGE * 1_000_000, 2),
        "x_floor": round(total / (FLOOR_PER_MESSAGE * 1_000_000), 2),
        "raw": stats,
    }


# --- scenarios --------------------------------------------------------------------------------


async def paced(app: str, cloud: MeteredCloud, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario 1: one conversation, N messages each way at a fixed pace."""
    registry = Registry()
    pairs, close = await make_pairs(app, cloud, 1, "paced", registry)
    (a, b), = pairs
    await asyncio.sleep(2.0)  # setup traffic (assignment, first resumes, acks) settles
    cloud.mode(sizes=True)
    cloud.reset()
    started = time.perf_counter()

    async def side(ep: Endpoint, tag: str, offset: float) -> None:
        await asyncio.sleep(offset)  # the two people take turns, they do not type in lockstep
        for i in range(args.messages):
            ep.send(f"{tag}{i}")
            await asyncio.sleep(args.pace)

    await asyncio.gather(side(a, "a", 0.0), side(b, "b", args.pace / 2))
    expected = 2 * args.messages
    complete = await wait_until(lambda: len(registry.recv_at) >= expected, 120)
    for ep in (a, b):
        if isinstance(ep, SdkEndpoint):
            await asyncio.wait(ep.futures, timeout=30)
    await asyncio.sleep(2.5)  # cumulative acks go out up to 1 s after the last message
    elapsed = time.perf_counter() - started
    stats = cloud.stats()
    await close()
    delivered = len(registry.recv_at)
    lat = registry.latencies_ms()
    result = summarize(stats, delivered, memory_mb(APPS[app]))
    result.update(expected=expected, complete=complete, seconds=round(elapsed, 1),
                  paced_latency_p50_ms=_r(percentile(lat, 50)), paced_latency_p99_ms=_r(percentile(lat, 99)))
    return result


async def closed_loop(app: str, cloud: MeteredCloud, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario 2: C ping-pong conversations; latency and throughput."""
    registry = Registry()
    pairs, close = await make_pairs(app, cloud, args.conversations, "loop", registry)
    await asyncio.sleep(2.0)
    cloud.mode(sizes=False)
    cloud.reset()
    timeouts = 0

    async def ping_pong(index: int, a: Endpoint, b: Endpoint) -> None:
        nonlocal timeouts
        for i in range(args.rounds):
            sender = a if i % 2 == 0 else b
            mid = f"L{index}x{i}"
            sender.send(mid)
            try:
                await asyncio.wait_for(registry.wait_for(mid).wait(), 60)
            except TimeoutError:
                timeouts += 1

    started = time.perf_counter()
    await asyncio.gather(*(ping_pong(i, a, b) for i, (a, b) in enumerate(pairs)))
    elapsed = time.perf_counter() - started
    stats = cloud.stats()
    cloud.mode(sizes=True)
    await close()
    lat = registry.latencies_ms()
    delivered = len(registry.recv_at)
    return {
        "conversations": args.conversations, "rounds": args.rounds, "delivered": delivered,
        "timeouts": timeouts, "seconds": round(elapsed, 2),
        "latency_p50_ms": _r(percentile(lat, 50)), "latency_p99_ms": _r(percentile(lat, 99)),
        "messages_per_second": round(delivered / elapsed, 2) if elapsed else None,
        "aws_requests_per_message": (round(sum(r.get("requests", 0) for r in stats["aws"]["requests"])
                                           / max(1, delivered), 3) if stats["aws"] else None),
    }


async def burst(cloud: MeteredCloud, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario 3 (oncechat): B unordered sends queued at once into one conversation."""
    registry = Registry()
    users = OnceChatUsers(cloud, registry)
    (customer, agent), = await users.pairs(1, "burst")
    await asyncio.sleep(2.0)
    cloud.mode(sizes=True)
    cloud.reset()
    started = time.perf_counter()
    for i in range(args.burst):
        customer.send(f"B{i}")
    assert isinstance(customer, SdkEndpoint)
    accepted_done = asyncio.gather(*customer.futures, return_exceptions=True)
    drained = await wait_until(lambda: len(registry.recv_at) >= args.burst, 600, step=0.1)
    drain_s = time.perf_counter() - started
    outcomes = await asyncio.wait_for(accepted_done, 60)
    stats = cloud.stats()
    await users.close()
    # The writes that commit a message to its slot, failed ones included:
    # PutItem on the messages table (a message, or a void) and, on an
    # older tree, the append transaction (cancellations counted).
    appends = cancelled = rate_limit_tx = 0.0
    for r in stats["aws"]["requests"]:
        if r["phase"] != "message:send":
            continue
        on_messages = r.get("detail", "").endswith("-messages")
        if r["operation"] == "TransactWriteItems":
            if "messages" in r.get("detail", ""):
                appends += r.get("requests", 0)
                cancelled += r.get("cancelled_requests", 0)
            else:
                rate_limit_tx += r.get("requests", 0)
        elif r["operation"] == "PutItem" and on_messages:
            appends += r.get("requests", 0)
            cancelled += r.get("condition_failed", 0)
    send_frames = stats["cloud"]["frames_in"].get("message:send", {}).get("frames", 0)
    sent = errors_sent(stats["cloud"])
    refused = sum(sent.values())
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    return {
        "messages": args.burst, "delivered": len(registry.recv_at), "drained": drained,
        "drain_seconds": round(drain_s, 1), "append_writes": int(appends),
        "append_failed": int(cancelled), "other_send_transactions": int(rate_limit_tx),
        "appends_per_message": round(appends / max(1, args.burst), 2),
        "send_frames": int(send_frames), "resends": int(send_frames - args.burst),
        "errors_sent": sent,
        "resends_after_timeout": int(max(0, send_frames - args.burst - refused)),
        "send_failures": len(failed),
        "aws_requests_per_message": round(sum(r.get("requests", 0) for r in stats["aws"]["requests"])
                                          / max(1, args.burst), 2),
    }


def errors_sent(cloud: dict[str, Any]) -> dict[str, int]:
    """Error frames the client was sent, by kind: pushed, or as a two-way route's response."""
    sent: dict[str, int] = defaultdict(int)
    for types in (cloud.get("push_types", {}), cloud.get("route_response_types", {})):
        for kind, count in types.items():
            if kind.startswith("error") or kind == "gateway error":
                sent[kind] += int(count)
    return dict(sorted(sent.items()))


def seed_memberships(cloud: MeteredCloud, agent: str, count: int, tag: str) -> float:
    """Give ``agent`` ``count`` closed conversations, written straight to moto (not counted)."""
    from chalicelib.config import Config
    from chalicelib.models import Conversation, Participant
    from chalicelib.storage.dynamodb import DynamoStorage

    storage = DynamoStorage(Config.from_env({"STAGE": STAGE}), client=cloud.client("dynamodb"))
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    started = time.perf_counter()

    def one(i: int) -> None:
        cid = uuid.uuid4().hex  # the server's id format, so frames listing them have their real size
        conv = Conversation(conversation_id=cid, customer_id=f"{tag}-cust-{i}", agent_id=agent, status="closed",
                            created_at=now, updated_at=now, closed_at=now, last_seq=0)
        storage.create_conversation(conv)
        storage.add_participant(Participant(user_id=agent, conversation_id=cid, role="agent", joined_at=now))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


async def resume(cloud: MeteredCloud, memberships: int, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario 4 (oncechat): an agent with closed memberships resumes with no cursors."""
    from chalicelib.auth import mint_token
    from chalicelib.config import LOCAL_JWT_SECRET

    agent = f"resume-agent-{memberships}"
    seed_s = await asyncio.to_thread(seed_memberships, cloud, agent, memberships, f"r{memberships}")
    token = mint_token(LOCAL_JWT_SECRET, agent, "agent", ttl_seconds=3600)
    connect_started = time.perf_counter()
    ws = await websockets.connect(f"{cloud.websocket_url}?token={token}", max_size=None, open_timeout=120)
    connect_s = time.perf_counter() - connect_started
    await asyncio.sleep(1.0)  # $connect's writes are not part of the resume
    cloud.mode(sizes=True)
    cloud.reset()
    largest = frames = 0
    answered = False
    closed: str | None = None
    errors: list[str] = []
    started = time.perf_counter()
    await ws.send(json.dumps({"action": "resume", "cursors": {}}))
    deadline = time.monotonic() + args.resume_timeout
    try:
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            frames += 1
            largest = max(largest, len(raw.encode() if isinstance(raw, str) else raw))
            frame = json.loads(raw)
            if frame.get("type") == "resumed":
                answered = True
                break
            if frame.get("type") == "error" or (frame.get("type") is None and "message" in frame):
                errors.append(str(frame)[:200])
    except TimeoutError:
        pass
    except websockets.ConnectionClosed as exc:
        closed = f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"
    elapsed = time.perf_counter() - started
    stats = cloud.stats()
    with contextlib.suppress(Exception):
        await ws.close()
    aws = stats["aws"]["requests"]
    by_op: dict[str, float] = defaultdict(float)
    for r in aws:
        if r["phase"] == "message:resume":
            by_op[f"{r['service']}:{r['operation']}"] += r.get("requests", 0)
    return {
        "memberships": memberships, "seed_seconds": round(seed_s, 1), "connect_seconds": round(connect_s, 1),
        "answered": answered,
        "seconds": round(elapsed, 1), "timeout_s": args.resume_timeout,
        "aws_requests": int(sum(r.get("requests", 0) for r in aws if r["phase"] == "message:resume")),
        "rru": round(sum(r.get("rru", 0) for r in aws if r["phase"] == "message:resume"), 1),
        "by_operation": dict(by_op), "frames": frames, "largest_frame_bytes": largest,
        "frame_limit_bytes": MAX_FRAME_BYTES, "errors": errors[:5], "closed": closed,
        "management_other": {k: v["calls"] for k, v in stats["cloud"]["management"].items()
                             if not k.startswith("POST 200")},
    }


def cold_import(project_dir: Path, module: str, runs: int, env: dict[str, str]) -> float:
    """Best-of-``runs`` seconds of ``import module`` in a fresh interpreter in ``project_dir``."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    best = math.inf
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], cwd=project_dir, env=env, capture_output=True,
                             text=True, check=True)
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


FOOTPRINT_CODE = """
import resource
import app
from chalicelib import aws
app.handlers.services  # the first event's imports: pydantic, PyJWT, services, storage
for service in ("dynamodb", "sqs", "apigatewaymanagementapi"):
    aws.client(service)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def footprint_mb(env: dict[str, str]) -> float:
    """Peak resident memory (MB) of a fresh interpreter that has done a cold start's work.

    ``import app``, the first event's lazy imports and the service, and the
    three AWS clients a handler uses: what a Lambda container holds before
    its per-event data (bounded caches). ``lambda_memory_size`` is set from it.
    """
    out = subprocess.run([sys.executable, "-c", FOOTPRINT_CODE], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)  # ru_maxrss is in KB on Linux


def imports(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    env.update(config["stages"][STAGE]["environment_variables"])
    env.update(AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="")
    result: dict[str, Any] = {"runs": args.imports}
    boto3_s = cold_import(REPO_ROOT, "boto3", args.imports, env)
    result["boto3_ms"] = round(boto3_s * 1000, 1)
    for app in args.only:
        app_env = dict(env)
        if app != "oncechat":
            app_cfg = json.loads((APPS[app] / ".chalice" / "config.json").read_text())
            app_env.update(app_cfg["stages"][STAGE].get("environment_variables", {}))
            app_env["PYTHONPATH"] = str(APPS[app])
        seconds = cold_import(APPS[app], "app", args.imports, app_env)
        result[f"{app}_ms"] = round(seconds * 1000, 1)
        result[f"{app}_ratio"] = round(seconds / boto3_s, 2)
    if "oncechat" in args.only:
        result["oncechat_footprint_mb"] = footprint_mb(env)
    return result


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- the run ----------------------------------------------------------------------------------


async def _scenario(result: dict[str, Any], name: str, coroutine: Any) -> Any:
    """Run one scenario; a failure is recorded in the result (and printed), the run goes on."""
    try:
        return await coroutine
    except Exception as exc:
        log(f"{name} failed: {exc!r}")
        result.setdefault("failures", []).append(f"{name}: {exc!r}")
        return None


async def run_app(app: str, args: argparse.Namespace) -> dict[str, Any]:
    flags = ("--log-level", "WARNING")
    result: dict[str, Any] = {}
    log(f"{app}: starting the metered local cloud")
    with MeteredCloud(APPS[app], *flags, stage=STAGE) as cloud:
        log(f"{app}: paced 1:1, {args.messages} messages each way every {args.pace} s")
        result["paced"] = await _scenario(result, "paced", paced(app, cloud, args))
        if app == "oncechat":
            log(f"oncechat: burst of {args.burst} unordered sends into one conversation")
            result["burst"] = await _scenario(result, "burst", burst(cloud, args))
            await asyncio.sleep(5.0)  # the burst's stragglers (acks, sweeps) finish before the resumes
            result["resume"] = []
            for n in args.memberships:
                log(f"oncechat: resume with {n} closed memberships")
                r = await _scenario(result, f"resume {n}", resume(cloud, n, args))
                if r is not None:
                    result["resume"].append(r)
    # Timing on a cloud of its own that talks to moto directly: the counting
    # proxy's work per request would load the machine in proportion to each
    # app's request count, and the closed loop is CPU-bound on 2 cores.
    with MeteredCloud(APPS[app], *flags, stage=STAGE, counted=False) as cloud:
        log(f"{app}: closed loop, {args.conversations} conversations x {args.rounds} messages")
        result["closed_loop"] = await _scenario(result, "closed loop", closed_loop(app, cloud, args))
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: one row per figure of issue 9."""
    apps = result["apps"]
    get = lambda app, *path: _dig(apps.get(app), *path)
    out: list[dict[str, Any]] = []

    def row(figure: str, path: tuple[str, ...], target: str, met: Callable[[Any, Any, Any], bool | None],
            ratio_to: str | None = "wschat") -> None:
        values = {app: get(app, *path) for app in ("oncechat", "wschat", "relay")}
        ratio = None
        if ratio_to and values["oncechat"] is not None and values.get(ratio_to):
            ratio = round(values["oncechat"] / values[ratio_to], 2)
        ok = None
        if values["oncechat"] is not None:
            ok = met(values["oncechat"], values["wschat"], values["relay"])
        out.append({"figure": figure, **values, "ratio": ratio, "ratio_to": ratio_to, "target": target, "met": ok})

    row("AWS requests / delivered msg", ("paced", "aws_requests"), "<= 6", lambda o, w, r: o <= 6)
    for phase in ("send", "delivery", "ack", "other"):
        row(f"  of which {phase}", ("paced", "by_phase", phase, "requests"), "", lambda o, w, r: None, None)
    row("  of which event source (SQS polls)", ("paced", "event_source_requests"), "", lambda o, w, r: None, None)
    row("DynamoDB WRU / delivered msg", ("paced", "wru"), "<= 6", lambda o, w, r: o <= 6)
    row("  of which failed writes (cancelled, condition)", ("paced", "failed_wru"), "", lambda o, w, r: None, None)
    row("DynamoDB RRU / delivered msg", ("paced", "rru"), "<= 4", lambda o, w, r: o <= 4)
    row("management API calls / msg", ("paced", "management_calls"), "", lambda o, w, r: None)
    row("WebSocket frames in / msg", ("paced", "frames_in"), "", lambda o, w, r: None)
    row("pushes out / msg", ("paced", "pushes"), "", lambda o, w, r: None)
    row("route responses out / msg", ("paced", "route_responses"), "", lambda o, w, r: None)
    row("Lambda invocations / msg", ("paced", "lambda_invocations"), "", lambda o, w, r: None)
    row("Lambda handler ms / msg", ("paced", "lambda_ms"), "", lambda o, w, r: None)
    row("cost $ / million delivered", ("paced", "cost_per_million_total"), "<= 3x floor ($6.00)",
        lambda o, w, r: o <= 3 * FLOOR_PER_MESSAGE * 1_000_000)
    for part in ("apigw_messages", "apigw_connection_minutes", "lambda_requests", "lambda_duration",
                 "dynamodb_writes", "dynamodb_reads", "sqs_requests"):
        row(f"  of which {part}", ("paced", "cost_per_million", part), "", lambda o, w, r: None, None)
    row("cost x floor ($2/M)", ("paced", "x_floor"), "<= 3", lambda o, w, r: o <= 3, None)
    row("latency p50 ms (closed loop)", ("closed_loop", "latency_p50_ms"), "<= 2x wschat",
        lambda o, w, r: None if w is None else o <= 2 * w)
    row("latency p99 ms (closed loop)", ("closed_loop", "latency_p99_ms"), "<= 3x wschat",
        lambda o, w, r: None if w is None else o <= 3 * w)
    row("delivered msgs/s (closed loop)", ("closed_loop", "messages_per_second"), ">= 0.5x wschat",
        lambda o, w, r: None if w is None else o >= 0.5 * w)
    b = apps.get("oncechat", {}).get("burst")
    if b:
        out.append({"figure": f"burst {b['messages']}: appends (slot writes) / msg", "oncechat": b["appends_per_message"],
                    "target": "<= 1.5", "met": b["appends_per_message"] <= 1.5})
        out.append({"figure": "  appends (failed)",
                    "oncechat": f"{b['append_writes']} ({b['append_failed']})", "target": "", "met": None})
        out.append({"figure": "  resends in all (after errors + after timeouts)",
                    "oncechat": f"{b['resends']} ({b['resends'] - b['resends_after_timeout']} + {b['resends_after_timeout']})",
                    "target": "no timeouts", "met": b["resends_after_timeout"] == 0})
        out.append({"figure": "  seconds to drain", "oncechat": b["drain_seconds"], "target": "", "met": None})
    resumes = apps.get("oncechat", {}).get("resume") or []
    for r in resumes:
        state = f"{r['seconds']} s" if r["answered"] else f"no answer in {r['timeout_s']:.0f} s"
        out.append({"figure": f"resume, {r['memberships']} memberships: time", "oncechat": state,
                    "target": "", "met": None})
        out.append({"figure": "  AWS requests", "oncechat": r["aws_requests"], "target": "", "met": None})
        out.append({"figure": "  largest frame bytes", "oncechat": r["largest_frame_bytes"],
                    "target": "< 131072", "met": r["answered"] and r["largest_frame_bytes"] < MAX_FRAME_BYTES})
    if len(resumes) >= 2:
        small, large = resumes[0], resumes[-1]
        flat = large["answered"] and small["answered"] and large["aws_requests"] <= 1.1 * small["aws_requests"] + 10
        out.append({"figure": f"resume cost {large['memberships']} vs {small['memberships']} memberships",
                    "oncechat": (round(large["aws_requests"] / small["aws_requests"], 2)
                                 if small["aws_requests"] and large["answered"] else "-"),
                    "target": "independent of closed history (<= 1.1x)", "met": flat})
    imp = result.get("imports") or {}
    if imp:
        out.append({"figure": "cold import app / import boto3", "oncechat": imp.get("oncechat_ratio"),
                    "wschat": imp.get("wschat_ratio"), "relay": imp.get("relay_ratio"), "target": "<= 1.5",
                    "met": None if imp.get("oncechat_ratio") is None else imp["oncechat_ratio"] <= 1.5})
    if imp.get("oncechat_footprint_mb"):
        configured = (result.get("memory_mb") or {}).get("oncechat", {}).get("*")
        out.append({"figure": "handler footprint MB / lambda_memory_size MB",
                    "oncechat": f"{imp['oncechat_footprint_mb']} / {configured}", "target": "", "met": None})
    return out


def _dig(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def table(table_rows: list[dict[str, Any]]) -> str:
    header = ("figure", "oncechat", "wschat", "relay", "ratio", "target", "met?")
    lines = [header]
    for r in table_rows:
        ratio = f"{r['ratio']}x {r['ratio_to']}" if r.get("ratio") is not None else ""
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        lines.append((r["figure"], _fmt(r.get("oncechat")), _fmt(r.get("wschat")), _fmt(r.get("relay")), ratio,
                      r.get("target", ""), met))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) if i < 5 else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(line, widths, strict=False))).rstrip()
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    result: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items()},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "prices": {k: vars(v) for k, v in PRICES.items()},
        "memory_mb": {app: memory_mb(APPS[app]) for app in args.only},
        "apps": {},
    }
    for app in args.only:
        result["apps"][app] = asyncio.run(run_app(app, args))
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")  # so far
    log("cold imports")
    result["imports"] = imports(args)
    result["seconds"] = round(time.time() - started, 1)
    result["table"] = rows(result)
    print(table(result["table"]))
    for app, figures in result["apps"].items():
        for failure in figures.get("failures", []):
            print(f"  ! {app}: {failure}")
    Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresult written to {args.json} ({result['seconds']} s)")
    return 0


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app.py", "chalicelib"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
