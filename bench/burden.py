"""``make burden``: what a client written from the protocol alone has to cope with, fault-free.

    python -m bench.burden                      # before/after in one run: two local clouds, same load
    python -m bench.burden --rounds 100 --parallel 8

Each round, an agent and a customer connect (raw WebSockets, no SDK) and
the customer opens a conversation; then the customer's one connection
fires a burst of 12 ``send`` frames without waiting: 10 messages, two of
them repeated at once (the frame sent twice back to back, as a client
does that resends on a timeout). The agent applies nothing but the
protocol's client rule (docs/protocol.md): process ``seq == last + 1``,
drop ``seq <= last``, on a gap send ``resume``, and when ``resumed`` names
a later seq, resume again. Counted, per delivered message: the frames the
agent received, the repeated ones (dropped by the rule), the resumes it
sent (for a gap, and again after a ``resumed`` that stopped short), and
how many rounds needed a second resume.

The same load runs against two local clouds in one invocation: one with
a resume that stops at once at a seq still being stored
(``RESUME_HOLE_WAIT_MS=0``: the server as it was) and one with the default
bounded wait. The figures are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET

BURST = 10
REPEATED = (2, 5)  # these messages' frames are sent twice, back to back


def rest(rest_url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body or {}).encode() if method in ("POST", "PUT") else None
    req = urllib.request.Request(f"{rest_url}{path}", method=method, data=data,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


@dataclass
class RuleClient:
    """A recipient that knows only the protocol's client rule."""

    cid: str
    last: int = 0
    frames: int = 0
    repeated: int = 0
    gap_resumes: int = 0
    again_resumes: int = 0
    resuming: bool = False
    outbox: list[str] = field(default_factory=list)

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message" and frame.get("conversationId") == self.cid:
            self.frames += 1
            seq = frame["seq"]
            if seq <= self.last:
                self.repeated += 1
            elif seq == self.last + 1:
                self.last = seq
            elif not self.resuming:
                self.gap_resumes += 1
                self._resume()
        elif kind == "resumed":
            self.resuming = False
            latest = frame.get("conversations", {}).get(self.cid, 0)
            if latest > self.last:
                self.again_resumes += 1
                self._resume()

    def _resume(self) -> None:
        self.resuming = True
        self.outbox.append(json.dumps({"action": "resume", "cursors": {self.cid: self.last}}))


async def one_round(ws_url: str, rest_url: str, secret: str, tag: str) -> dict[str, int]:
    import websockets

    agent, customer = f"agent-{tag}", f"cust-{tag}"
    a_tok, c_tok = mint_token(secret, agent, "agent"), mint_token(secret, customer, "customer")
    async with websockets.connect(f"{ws_url}?token={a_tok}") as a_ws, \
            websockets.connect(f"{ws_url}?token={c_tok}") as c_ws:
        loop = asyncio.get_running_loop()
        conv = await loop.run_in_executor(None, rest, rest_url, c_tok, "POST", "/conversations")
        cid = conv["conversationId"]
        if conv.get("agentId") != agent:  # another round's agent had room: hand it over to ours
            holder = mint_token(secret, conv["agentId"], "agent")
            conv = await loop.run_in_executor(None, rest, rest_url, holder, "POST",
                                              f"/conversations/{cid}/transfer", {"agentId": agent})
        # What came before the burst is not counted: the agent starts at the latest seq.
        client = RuleClient(cid, last=conv["lastSeq"])
        done = asyncio.Event()
        target = {"seq": 10**9}

        async def agent_reads() -> None:
            async for raw in a_ws:
                client.on_frame(json.loads(raw))
                while client.outbox:
                    await a_ws.send(client.outbox.pop(0))
                if client.last >= target["seq"]:
                    done.set()

        reader = asyncio.create_task(agent_reads())
        await asyncio.sleep(0.5)  # the lifecycle pushes before the burst arrive first
        client.frames = client.repeated = client.gap_resumes = client.again_resumes = 0
        frames = []
        for i in range(BURST):
            frame = json.dumps({"action": "send", "conversationId": cid, "messageId": f"m{i}", "body": f"burst {i}"})
            frames.append(frame)
            if i in REPEATED:
                frames.append(frame)
        for frame in frames:
            await c_ws.send(frame)
        answers = 0
        while answers < len(frames):
            reply = json.loads(await asyncio.wait_for(c_ws.recv(), 60))
            if reply.get("type") in ("accepted", "error"):
                answers += 1
        latest = (await loop.run_in_executor(None, rest, rest_url, c_tok, "GET", f"/conversations/{cid}"))["lastSeq"]
        target["seq"] = latest
        if client.last >= latest:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            raise RuntimeError(f"round {tag} stalled: the agent is at {client.last} of {latest} "
                               f"({client})") from None
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # Away: later rounds' conversations go to their own agents.
            await loop.run_in_executor(None, rest, rest_url, a_tok, "PUT", "/agents/me/status", {"status": "away"})
    return {"messages": BURST, "seqs": latest, "frames": client.frames, "repeated": client.repeated,
            "gap_resumes": client.gap_resumes, "again_resumes": client.again_resumes,
            "rounds_resumed_again": int(client.again_resumes > 0), "complete": int(client.last >= latest)}


async def run(ws_url: str, rest_url: str, secret: str, rounds: int, parallel: int) -> dict[str, int]:
    run_id = uuid.uuid4().hex[:6]
    totals: dict[str, int] = {}
    gate = asyncio.Semaphore(parallel)

    async def guarded(i: int) -> None:
        async with gate:
            result = await one_round(ws_url, rest_url, secret, f"{run_id}-{i}")
        for key, value in result.items():
            totals[key] = totals.get(key, 0) + value

    await asyncio.gather(*(guarded(i) for i in range(rounds)))
    totals["rounds"] = rounds
    return totals


def measure(env: dict[str, str], rounds: int, parallel: int) -> dict[str, int]:
    from infra.local.launcher import REPO_ROOT, LocalCloud

    with LocalCloud(REPO_ROOT, env=env) as cloud:
        return asyncio.run(run(cloud.websocket_url, cloud.rest_url, LOCAL_JWT_SECRET, rounds, parallel))


def per_message(totals: dict[str, int], key: str) -> float:
    return totals[key] / totals["messages"]


def report(before: dict[str, int], after: dict[str, int]) -> str:
    lines = [f"{'per delivered message':34s} {'before':>10s} {'after':>10s}"]
    for key, label in (("frames", "frames received"), ("repeated", "repeated frames"),
                       ("gap_resumes", "resumes for a gap"), ("again_resumes", "resumes after a short resumed")):
        lines.append(f"{label:34s} {per_message(before, key):10.3f} {per_message(after, key):10.3f}")
    lines.append(f"{'rounds that resumed again':34s} {before['rounds_resumed_again']:>10d} "
                 f"{after['rounds_resumed_again']:>10d}   (of {after['rounds']})")
    lines.append(f"{'rounds complete':34s} {before['complete']:>10d} {after['complete']:>10d}")
    return "\n".join(lines)


OFF = {"RESUME_HOLE_WAIT_MS": "0"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burden", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4, help="rounds at once")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    before = measure(OFF, args.rounds, args.parallel)
    after = measure({}, args.rounds, args.parallel)
    print(f"{args.rounds} rounds of {BURST} messages in a burst of {BURST + len(REPEATED)} frames, "
          f"{args.parallel} at once, no faults")
    print(report(before, after))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"before": before, "after": after}, fh, indent=2)
    return 0 if before["complete"] == after["complete"] == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
