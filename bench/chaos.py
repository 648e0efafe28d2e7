"""``make chaos``: C conversations x M messages through the local cloud with every fault on.

    python -m bench.chaos                                   # the CI-sized run (~2,000 messages)
    python -m bench.chaos --conversations 250 --messages 200 --clients 50 --faults all=0.03

K clients (half customers, half agents) use the SDK (client.sdk) the way
an app would. Customers open C conversations; the server assigns them to
the agents; then, with faults switched on in the local cloud, each
conversation's customer and agent each send M/2 messages concurrently.
Faults are switched off, the system drains, and the independent checker
(bench/checker.py) compares what every sender was told with what every
recipient application processed. It prints a table, writes the same as
JSON, and exits 1 on any loss, duplicate or reorder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.checker import Accepted, Processed, Sent, check
from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import Backoff, OnceChatClient
from infra import dlq
from infra.local.faults import ALL_KINDS, KINDS
from infra.local.launcher import REPO_ROOT, LocalCloud

STAGE = "chaos"  # its own tables (oncechat-chaos-*) and a short sweeper grace


@dataclass
class Party:
    """One client application: its SDK and what it sent, was told and processed."""

    name: str
    role: str
    sdk: OnceChatClient
    processed: list[Processed] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", "-C", type=int, default=40)
    p.add_argument("--messages", "-M", type=int, default=50, help="messages per conversation")
    p.add_argument("--clients", "-K", type=int, default=20, help="concurrent clients (half agents)")
    p.add_argument("--faults", default="all=0.02,consumer_crash=0.25",
                   help="fault rates while sending (kind=rate,...; consumer_crash is per batch)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--window", type=int, default=2, help="unaccepted sends per client and conversation")
    p.add_argument("--max-inflight", type=int, default=0,
                   help="unaccepted sends in all (0: no cap, C x 2 x window); a cap keeps a large run's"
                        " answer times under the SDK's send timeout, so it is not resending"
                        " what the server is still working on")
    p.add_argument("--max-backlog", type=int, default=0,
                   help="hold new sends while the delivery queue holds more than this (0: never);"
                        " a consumer far behind finds every message already fetched by the"
                        " recipients' gap resumes, so its pushes (and consumer_crash) never happen")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="give up draining after this many seconds in which no recipient processed anything")
    p.add_argument("--stall-timeout", type=float, default=600.0,
                   help="give up sending after this many seconds in which no send was accepted;"
                        " a single send is never given up on while others make progress")
    p.add_argument("--json", default="chaos-report.json", help="where to write the report")
    p.add_argument("--workers", type=int, default=32, help="local cloud handler threads")
    p.add_argument("--sqs-concurrency", type=int, default=4,
                   help="concurrent batches of the local cloud's SQS event source")
    p.add_argument("--schedule-speed", type=float, default=6.0,
                   help="run the schedules (the sweeper) this many times faster")
    return p.parse_args(argv)


def fault_rates(spec: str) -> dict[str, float]:
    """``all=0.02,push_fail=0.05`` -> a rate for every kind (``all`` leaves out ``lose_push``, a real loss)."""
    rates = {kind: 0.0 for kind in ALL_KINDS}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, value = part.partition("=")
        for k in (KINDS if kind == "all" else [kind]):
            if k not in rates:
                raise SystemExit(f"unknown fault kind {k!r}; kinds: {', '.join(ALL_KINDS)}")
            rates[k] = float(value)
    return rates


def faults_call(cloud: LocalCloud, rates: dict[str, float] | None = None) -> dict[str, Any]:
    url = f"http://{cloud.host}:{cloud.ws_port}/_local/faults"
    data = json.dumps({"rates": rates}).encode() if rates is not None else None
    req = urllib.request.Request(url, data=data, method="PUT" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class Run:
    """One chaos run against a started local cloud."""

    def __init__(self, args: argparse.Namespace, cloud: LocalCloud) -> None:
        self.args = args
        self.cloud = cloud
        self.rng = random.Random(args.seed)
        self.sent: list[Sent] = []
        self.accepted: list[Accepted] = []
        self.participants: dict[str, list[str]] = {}
        self.parties: dict[str, Party] = {}
        self.failures: list[str] = []
        self.inflight = asyncio.Semaphore(args.max_inflight) if args.max_inflight > 0 else None
        self.open = asyncio.Event()  # cleared while the delivery queue is over --max-backlog
        self.open.set()
        self.backlog_peak = 0
        self.backlog_now: int | None = None

    def party(self, name: str, role: str) -> Party:
        token = mint_token(LOCAL_JWT_SECRET, name, role, ttl_seconds=6 * 3600)
        sdk = OnceChatClient(self.cloud.websocket_url, token, rest_url=self.cloud.rest_url,
                             backoff=Backoff(base=0.05, cap=2.0), send_timeout=5.0,
                             include_void=True)  # the checker accounts for every seq
        party = Party(name, role, sdk)
        self.parties[name] = party
        return party

    async def consume(self, party: Party) -> None:
        async for m in party.sdk.messages():
            party.processed.append(Processed(m.conversation_id, m.seq, m.message_id, m.body,
                                             m.sender_role == "system", m.void))

    async def setup(self) -> list[tuple[str, Party, Party]]:
        agents = [self.party(f"agent-{i:03d}", "agent") for i in range(max(1, self.args.clients // 2))]
        customers = [self.party(f"cust-{i:03d}", "customer")
                     for i in range(max(1, self.args.clients - len(agents)))]
        for p in self.parties.values():
            await p.sdk.connect()
            p.task = asyncio.create_task(self.consume(p))
        await asyncio.sleep(0.5)  # agents' $connect recorded: they are online
        # Room for every conversation: agents take 5 at a time unless told otherwise.
        capacity = -(-self.args.conversations // len(agents)) + 1
        for agent in agents:
            self.set_capacity(agent.name, capacity)
        conversations = []
        for i in range(self.args.conversations):
            customer = customers[i % len(customers)]
            conv = await customer.sdk.open_conversation()
            if conv.agent_id is None:
                raise SystemExit(f"conversation {conv.conversation_id} found no agent")
            agent = self.parties[conv.agent_id]
            self.participants[conv.conversation_id] = [customer.name, agent.name]
            conversations.append((conv.conversation_id, customer, agent))
        return conversations

    def set_capacity(self, agent: str, capacity: int) -> None:
        token = mint_token(LOCAL_JWT_SECRET, agent, "agent", ttl_seconds=600)
        req = urllib.request.Request(
            f"{self.cloud.rest_url}/agents/me/status", method="PUT",
            data=json.dumps({"capacity": min(capacity, 100)}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise SystemExit(f"could not set the capacity of {agent}: {resp.status}")

    async def talk(self, cid: str, sender: Party, count: int, tag: str) -> None:
        window = asyncio.Semaphore(self.args.window)

        async def one(i: int) -> None:
            async with window, (self.inflight or contextlib.nullcontext()):
                await self.open.wait()
                mid = f"{tag}-{cid[:12]}-{i}"  # the SDK wants messageIds unique per client
                body = f"{sender.name} {cid[:8]} #{i} {self.rng.random():.6f}"
                self.sent.append(Sent(sender.name, cid, mid, body))
                # No deadline of its own: like an app, wait until the SDK hears
                # `accepted` (it resends until then) or gives up with an error.
                # A busy machine makes answers slow, not lost; only a run in
                # which nothing is accepted for --stall-timeout is abandoned
                # (execute), and what was pending then counts as unaccepted.
                try:
                    acc = await sender.sdk.send(cid, body, message_id=mid)
                except Exception as exc:  # counted as unaccepted by the checker
                    self.failures.append(f"{sender.name} {cid} {mid}: {exc!r}")
                    return
                self.accepted.append(Accepted(sender.name, cid, mid, acc.seq))

        await asyncio.gather(*(one(i) for i in range(count)))

    def backlog(self) -> int:
        """Messages in the delivery queue (SQS's approximate count: visible + in flight)."""
        sqs = self.cloud.client("sqs")
        url = sqs.get_queue_url(QueueName=dlq.queue_names(STAGE)[0])["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    async def gate(self) -> None:
        """Hold new sends while the delivery queue is over ``--max-backlog``."""
        while True:
            depth = await asyncio.to_thread(self.backlog)
            self.backlog_peak = max(self.backlog_peak, depth)
            self.backlog_now = depth
            if depth > self.args.max_backlog:
                self.open.clear()
            else:
                self.open.set()
            await asyncio.sleep(1.0)

    def redrive_dlq(self) -> int:
        """Move whatever the delivery DLQ holds back to the delivery queue; return how many."""
        sqs = self.cloud.client("sqs")
        queue, dlq_name = dlq.queue_names(STAGE)
        dlq_url = sqs.get_queue_url(QueueName=dlq_name)["QueueUrl"]
        queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        return dlq.redrive(sqs, dlq_url, queue_url, 100_000)

    def progress(self, phase: str, started: float, final: bool = False) -> None:
        processed = sum(len(p.processed) for p in self.parties.values())
        expected = 2 * len(self.accepted)
        line = (f"[{time.monotonic() - started:6.1f}s] {phase:8} sent {len(self.sent)}"
                f" accepted {len(self.accepted)} processed {processed}/{expected}"
                + (f" queue {self.backlog_now}" if self.backlog_now is not None else ""))
        end = "\n" if final or not sys.stderr.isatty() else ""
        print(("\r" if sys.stderr.isatty() else "") + line, end=end, file=sys.stderr, flush=True)

    def drained(self) -> bool:
        """Every participant has processed up to the latest seq known in its conversation.

        Known: the latest accepted seq, and the latest seq any participant
        processed. A system message or a void after the last accepted
        message (the seq a losing retry reserved) is known only from a
        participant that processed it; the others must process it too, and
        may be getting it through the sweeper or an SQS redelivery.
        """
        latest: dict[str, int] = defaultdict(int)
        for a in self.accepted:
            latest[a.conversation_id] = max(latest[a.conversation_id], a.seq)
        for party in self.parties.values():
            for p in party.processed:
                latest[p.conversation_id] = max(latest[p.conversation_id], p.seq)
        for cid, names in self.participants.items():
            for name in names:
                got = {p.seq for p in self.parties[name].processed if p.conversation_id == cid}
                if len(got) < latest[cid]:
                    return False
        return True

    def processed_count(self) -> int:
        return sum(len(p.processed) for p in self.parties.values())

    async def send_all(self, talks: list[Any]) -> None:
        """Run every sender to the end; abandon them only when no send was accepted for ``--stall-timeout``."""
        loop = asyncio.get_running_loop()
        sending = asyncio.gather(*talks)
        seen, last_progress = -1, loop.time()
        while not sending.done():
            if len(self.accepted) != seen:
                seen, last_progress = len(self.accepted), loop.time()
            elif loop.time() - last_progress > self.args.stall_timeout:
                self.failures.append(f"no send accepted for {self.args.stall_timeout:.0f} s: stalled")
                sending.cancel()
                break
            await asyncio.wait([sending], timeout=0.25)
        with contextlib.suppress(asyncio.CancelledError):
            await sending

    async def drain(self) -> None:
        """Wait until every recipient processed every accepted message, as long as they make progress."""
        loop = asyncio.get_running_loop()
        seen, last_progress = -1, loop.time()
        while not self.drained():
            if self.processed_count() != seen:
                seen, last_progress = self.processed_count(), loop.time()
            elif loop.time() - last_progress > self.args.drain_timeout:
                break  # nothing processed for --drain-timeout: what is missing is lost
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # late duplicates, if any, would show up now

    async def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        conversations = await self.setup()
        half = self.args.messages // 2
        faults_call(self.cloud, fault_rates(self.args.faults))

        async def ticker(phase: str) -> None:
            while True:
                self.progress(phase, started)
                await asyncio.sleep(1 if sys.stderr.isatty() else 5)

        tick = asyncio.create_task(ticker("sending"))
        gate = asyncio.create_task(self.gate()) if self.args.max_backlog > 0 else None
        await self.send_all([
            coro for cid, customer, agent in conversations
            for coro in (self.talk(cid, customer, self.args.messages - half, "c"),
                         self.talk(cid, agent, half, "a"))])
        tick.cancel()
        if gate is not None:
            gate.cancel()
        faults_call(self.cloud, {kind: 0.0 for kind in ALL_KINDS})
        # A batch that failed maxReceiveCount times sits in the DLQ (its
        # messages are in DynamoDB; recipients would get them on their next
        # resume): the operator's redrive, as docs/reliability.md says.
        redriven = await asyncio.to_thread(self.redrive_dlq)
        tick = asyncio.create_task(ticker("draining"))
        await self.drain()
        tick.cancel()
        self.progress("done", started, final=True)
        wall = time.monotonic() - started
        faults = faults_call(self.cloud)["injected"]
        for p in self.parties.values():
            await p.sdk.close()
            if p.task:
                p.task.cancel()
        report = check(self.sent, self.accepted,
                       {name: p.processed for name, p in self.parties.items()}, self.participants)
        return {"params": vars(self.args), "report": report.to_dict(), "faults_injected": faults,
                "dlq_redriven": redriven, "delivery_backlog_peak": self.backlog_peak,
                "wall_seconds": round(wall, 1), "send_failures": self.failures[:20],
                "throughput_msgs_per_s": round(len(self.accepted) / wall, 1) if wall else 0.0}


def table(result: dict[str, Any]) -> str:
    r = result["report"]
    rows = [("conversations", r["conversations"]), ("sent", r["sent"]), ("accepted", r["accepted"]),
            ("delivered", f"{r['delivered']} / {r['expected_deliveries']}"), ("lost", r["lost"]),
            ("duplicated", r["duplicated"]), ("out of order", r["out_of_order"]),
            ("mismatched", r["mismatched"]), ("unaccepted", r["unaccepted"]),
            ("seq errors", r["seq_errors"]), ("system messages", r["system_messages"]),
            ("void seqs", r["void_seqs"])]
    rows += [(f"fault {k}", v) for k, v in result["faults_injected"].items()]
    rows += [("DLQ redriven", result["dlq_redriven"]), ("wall time", f"{result['wall_seconds']} s"),
             ("accepted msgs/s", result["throughput_msgs_per_s"]),
             ("verdict", "OK" if r["ok"] else "FAILED")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Schedules 6x faster by default: the sweeper runs every 10 s.
    flags = ["--faults", "all=0", "--fault-seed", str(args.seed), "--sqs-retry-delay", "1",
             "--schedule-speed", str(args.schedule_speed), "--workers", str(args.workers),
             "--sqs-concurrency", str(args.sqs_concurrency), "--log-level", "WARNING"]
    with LocalCloud(REPO_ROOT, *flags, stage=STAGE, startup_timeout_s=120) as cloud:
        result = asyncio.run(Run(args, cloud).execute())
    print(table(result))
    for example in result["report"]["examples"]:
        print("  !", example)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"report written to {args.json}")
    return 0 if result["report"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
