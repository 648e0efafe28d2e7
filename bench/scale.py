"""How the cost of a send, a delivery, a resume and a sweep grows: AWS requests, counted.

    python -m bench.scale [--json scale.json] [--large N]

Runs the real services (chalicelib) on DynamoDB and SQS FIFO (moto, in
process, deployed from infra/template.yaml) and counts every AWS request
each operation makes through botocore's event hooks, for a small and a
large value of one dimension at a time:

- messages already in the conversation (a send and its delivery);
- conversations in the tables (a send and its delivery);
- closed memberships of an agent (a ``resume`` without cursors);
- open connections of the recipient (a delivery: requests and pushes);
- messages in the sweeper's window, and conversations active in it (one sweep).

Pushes go to an in-memory pusher and are counted on their own line (on AWS
each is one ``PostToConnection``). The state each scenario needs is
written first, uncounted. Counts, not times: the same on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REGION = "us-east-1"
STAGE = "scale"
ROOT = Path(__file__).resolve().parents[1]


class Meter:
    """Counts AWS requests by operation while ``counting`` is on."""

    def __init__(self) -> None:
        self.counting = False
        self.calls: Counter[str] = Counter()

    def hook(self, event_name: str, **_: Any) -> None:
        if self.counting:
            _, service, operation = event_name.split(".", 2)
            self.calls[f"{service}:{operation}"] += 1

    @contextmanager
    def measure(self) -> Iterator[Counter[str]]:
        self.calls = Counter()
        self.counting = True
        try:
            yield self.calls
        finally:
            self.counting = False


class World:
    """oncechat's services on moto, with a meter on every AWS client they use."""

    def __init__(self) -> None:
        import boto3

        from chalicelib.config import Config
        from chalicelib.ports import MemoryPusher, SqsDeliveryQueue
        from chalicelib.services import Ports, build_services
        from chalicelib.storage.dynamodb import DynamoStorage

        self.meter = Meter()
        session = boto3.session.Session(region_name=REGION)
        session.events.register("before-call.*.*", self.meter.hook)
        cfn = session.client("cloudformation")
        cfn.create_stack(StackName=f"oncechat-{STAGE}",
                         TemplateBody=(ROOT / "infra" / "template.yaml").read_text(),
                         Parameters=[{"ParameterKey": "Stage", "ParameterValue": STAGE}])
        self.config = Config.from_env({  # limits out of the way: this counts requests
            "STAGE": STAGE, "JWT_SECRET": "scale-bench-secret-0123456789abcdef",
            "RATE_USER_REQUESTS": "1000000", "RATE_USER_SENDS": "1000000",
            "RATE_CONNECTION_SENDS": "1000000"})
        self.clock_ms = 1_800_000_000_000
        self.pusher = MemoryPusher()
        self.queue = SqsDeliveryQueue(self.config.delivery_queue_name, session.client("sqs"))
        self.chat = build_services(self.config, Ports(DynamoStorage(self.config, session.client("dynamodb")),
                                                      self.queue, self.pusher, clock=lambda: self.clock_ms))
        self.sqs = session.client("sqs")
        self.queue_url = self.sqs.get_queue_url(QueueName=self.config.delivery_queue_name)["QueueUrl"]
        self._n = 0

    def uid(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def connect(self, user: str, role: str) -> Any:
        from chalicelib.auth import mint_token
        from chalicelib.services import Origin

        origin = Origin(self.uid("conn"), "gw.example", "api")
        self.chat.connections.connect(mint_token(self.config.jwt_secret, user, role), origin)
        return origin

    def conversation(self) -> tuple[Any, Any, str]:
        """A customer and an agent, both connected, in an active conversation."""
        agent, customer = self.uid("agent"), self.uid("cust")
        a = self.connect(agent, "agent")
        c = self.connect(customer, "customer")
        conv = self.chat.desk.create_conversation(self.chat.connections.principal_of(c.connection_id))
        self.drain()
        return c, a, conv.conversation_id

    def send(self, origin: Any, cid: str) -> None:
        from chalicelib.models import SendFrame

        p = self.chat.connections.principal_of(origin.connection_id)
        self.chat.messaging.send(p, origin, SendFrame(action="send", conversation_id=cid,
                                            message_id=self.uid("m"), body="hello there"))
        self.clock_ms += 10

    def ack_all(self, cid: str, *origins: Any) -> None:
        """Each connection's user acks the conversation's latest seq."""
        from chalicelib.models import AckFrame

        last = self.chat.storage.get_conversation(cid).last_seq
        for origin in origins:
            self.chat.messaging.ack(self.chat.connections.principal_of(origin.connection_id),
                          AckFrame(action="ack", conversation_id=cid, seq=last))

    def drain(self) -> int:
        """Deliver everything queued, as the SQS event source would; return the batches."""
        batches = 0
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0).get("Messages", [])
            if not got:
                # The poll that found the queue empty is the event source's
                # idle polling, not this delivery's: uncount it.
                if self.meter.counting:
                    self.meter.calls["sqs:ReceiveMessage"] -= 1
                return batches
            self.chat.consumer.deliver(m["Body"] for m in got)
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            batches += 1


def _row(name: str, small: int, large: int, measure: Callable[[World, int], Counter[str]]) -> dict[str, Any]:
    from moto import mock_aws

    out: dict[str, Any] = {"scenario": name, "small": small, "large": large}
    for label, size in (("at_small", small), ("at_large", large)):
        with mock_aws():
            calls = measure(World(), size)
        out[label] = {"requests": sum(v for k, v in calls.items() if not k.startswith("push")),
                      "pushes": calls.get("push", 0),
                      "by_operation": dict(sorted((k, v) for k, v in calls.items() if v))}
    return out


def send_and_deliver_after_messages(world: World, messages: int) -> Counter[str]:
    c, a, cid = world.conversation()
    for _ in range(messages):
        world.send(c, cid)
    world.drain()
    return _send_and_deliver(world, c, cid)


def send_and_deliver_among_conversations(world: World, conversations: int) -> Counter[str]:
    for _ in range(conversations - 1):
        world.conversation()
    c, a, cid = world.conversation()
    return _send_and_deliver(world, c, cid)


def _send_and_deliver(world: World, c: Any, cid: str) -> Counter[str]:
    before = sum(len(v) for v in world.pusher.sent.values())
    with world.meter.measure() as calls:
        world.send(c, cid)
        world.drain()
    calls["push"] = sum(len(v) for v in world.pusher.sent.values()) - before
    return calls


def resume_after_closed_memberships(world: World, memberships: int) -> Counter[str]:
    from chalicelib.models import ResumeFrame

    agent = world.uid("agent")
    world.chat.storage.set_agent_status(agent, "online", 10**6, "2027-01-01T00:00:00.000Z")
    a = world.connect(agent, "agent")
    pa = world.chat.connections.principal_of(a.connection_id)
    for _ in range(memberships):
        c = world.connect(world.uid("cust"), "customer")
        conv = world.chat.desk.create_conversation(world.chat.connections.principal_of(c.connection_id))
        world.chat.desk.close(pa, conv.conversation_id)
    world.drain()
    open_c = world.connect(world.uid("cust"), "customer")
    world.chat.desk.create_conversation(world.chat.connections.principal_of(open_c.connection_id))  # one still open
    world.drain()
    before = len(world.pusher.sent.get(a.connection_id, []))
    with world.meter.measure() as calls:
        world.chat.messaging.resume(pa, a, ResumeFrame(action="resume"))
    calls["push"] = len(world.pusher.sent.get(a.connection_id, [])) - before
    return calls


def deliver_to_connections(world: World, connections: int) -> Counter[str]:
    c, a, cid = world.conversation()
    agent = world.chat.connections.principal_of(a.connection_id).user_id
    for _ in range(connections - 1):
        world.connect(agent, "agent")
    return _send_and_deliver(world, c, cid)


def sweep_window(world: World, messages: int) -> Counter[str]:
    world.chat.sweeper.sweep()  # the first sweep sets the watermark
    c, a, cid = world.conversation()
    for _ in range(messages):
        world.send(c, cid)
    world.drain()
    world.ack_all(cid, c, a)  # as clients do within seconds (ack_delay)
    world.clock_ms += (world.config.sweep_grace_seconds + 60) * 1000
    with world.meter.measure() as calls:
        world.chat.sweeper.sweep()
    return calls


def sweep_conversations(world: World, conversations: int) -> Counter[str]:
    world.chat.sweeper.sweep()  # the first sweep sets the watermark
    for _ in range(conversations):
        c, a, cid = world.conversation()
        world.send(c, cid)
        world.drain()
        world.ack_all(cid, c, a)
    world.clock_ms += (world.config.sweep_grace_seconds + 60) * 1000
    with world.meter.measure() as calls:
        world.chat.sweeper.sweep()
    return calls


SCENARIOS: list[tuple[str, int, Callable[[World, int], Counter[str]]]] = [
    ("send + delivery, by messages already in the conversation", 1, send_and_deliver_after_messages),
    ("send + delivery, by conversations in the tables", 1, send_and_deliver_among_conversations),
    ("resume without cursors, by the agent's closed memberships", 1, resume_after_closed_memberships),
    ("delivery, by the recipient's open connections", 1, deliver_to_connections),
    ("one sweep, by messages in its window", 1, sweep_window),
    ("one sweep, by conversations active in its window", 1, sweep_conversations),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=500, help="the large value of each dimension")
    parser.add_argument("--connections", type=int, default=10, help="the large number of connections")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    for key, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ[key] = value
    os.environ.pop("AWS_ENDPOINT_URL", None)
    rows = []
    for name, small, measure in SCENARIOS:
        large = args.connections if "connections" in name else args.large
        rows.append(_row(name, small, large, measure))
    width = max(len(r["scenario"]) for r in rows)
    print(f"{'scenario':<{width}}  {'n':>5} {'requests':>8} {'pushes':>6}   {'n':>5} {'requests':>8} {'pushes':>6}")
    for r in rows:
        s, big = r["at_small"], r["at_large"]
        print(f"{r['scenario']:<{width}}  {r['small']:>5} {s['requests']:>8} {s['pushes']:>6}"
              f"   {r['large']:>5} {big['requests']:>8} {big['pushes']:>6}")
    for r in rows:
        print(f"\n{r['scenario']}")
        for label in ("at_small", "at_large"):
            ops = ", ".join(f"{k} {v}" for k, v in r[label]["by_operation"].items() if k != "push")
            print(f"  n={r[label.replace('at_', '')]}: {ops}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
