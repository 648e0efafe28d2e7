"""Property: any interleaving of sends, duplicate sends, lost and repeated
deliveries, acks, resumes and reconnects gives gapless sequences, and every
device that follows the protocol's client rule processes every message
exactly once, in order.

The system is the real services (messaging, desk, the consumer) on the in-memory
adapters; the network is a model that loses frames to dead connections,
delivers queue entries at least once, and lets a handler die between its
claim and its message, between its message and its push, or at its enqueue.
"""

from __future__ import annotations

import json

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chalicelib.auth import mint_token
from chalicelib.config import Config

#: The model checks exactly-once and the desk, not the per-connection limits
#: (tests/unit/test_limits.py, tests/functional/test_hardening.py): out of its way.
NO_FRAME_LIMITS = {"MAX_CONNECTIONS_PER_USER": "100000", "RATE_CONNECTION_FRAMES": "100000",
                   "RATE_CONNECTION_ACKS": "100000", "RATE_CONNECTION_READS": "100000",
                   "RATE_CONNECTION_RESUMES": "100000", "RATE_CONNECTION_TYPING": "100000",
                   "REPLIES": "route"}
from chalicelib.ports import Delivery, MemoryPusher, MemoryQueue
from chalicelib.services import DeliveryFailed, Origin, Ports, build_services
from chalicelib.storage.memory import MemoryStorage

SECRET = "property-test-secret-0123456789abcdef"
DEVICES = ("cust-phone", "cust-laptop", "agent-desk")
USERS = {"cust-phone": ("cust", "customer"), "cust-laptop": ("cust", "customer"),
         "agent-desk": ("agent", "agent")}


class Device:
    """A client following docs/protocol.md: seq rule, own sends, resume on gaps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.generation = 0
        self.connection: str | None = None
        self.read = 0  # frames of the current connection already looked at
        self.last = 0
        self.own: dict[int, str] = {}  # accepted seq -> body
        self.processed: list[tuple[int, str]] = []

    def advance_own(self) -> None:
        while self.last + 1 in self.own:
            self.last += 1
            self.processed.append((self.last, self.own[self.last]))


class ExactlyOnce(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock_ms = 1_800_000_000_000
        config = Config.from_env({"STAGE": "prop", "JWT_SECRET": SECRET, "PAGE_SIZE": "3",
                                  "RESUME_MAX_MESSAGES": "4", **NO_FRAME_LIMITS})
        self.queue = MemoryQueue()
        self.pusher = MemoryPusher()
        self.chat = build_services(config, Ports(MemoryStorage(), self.queue, self.pusher,
                                                 clock=self.tick, new_id=lambda: "conv1", sleep=self.wait))
        self.devices = {name: Device(name) for name in DEVICES}
        self.in_flight: list[Delivery] = []  # taken from the queue, not yet deleted
        self.sent_bodies: dict[tuple[str, str], str] = {}  # (user, messageId) -> body
        self.accepted: dict[tuple[str, str], int] = {}  # (user, messageId) -> seq


    def on_frame(self, origin: Origin, raw: str) -> None:
        """A frame through the $default route; its response reaches the connection as the gateway sends it."""
        reply = self.chat.messaging.on_frame(origin, raw)
        if reply is not None:
            self.pusher.sent.setdefault(origin.connection_id, []).append(reply)
    def wait(self, seconds: float) -> None:
        """A resume waiting for a seq being stored: the clock moves on, nothing sleeps."""
        self.clock_ms += int(seconds * 1000)

    def tick(self) -> int:
        self.clock_ms += 7
        return self.clock_ms

    # ---------------------------------------------------------------- helpers
    def origin(self, device: Device) -> Origin:
        assert device.connection is not None
        return Origin(device.connection, "gw", "api")

    def connect(self, device: Device) -> None:
        device.generation += 1
        device.connection = f"{device.name}-{device.generation}"
        device.read = 0
        user, role = USERS[device.name]
        self.chat.connections.connect(mint_token(SECRET, user, role), self.origin(device))

    def pump_frames(self, device: Device) -> None:
        """The device reads what reached its current connection."""
        if device.connection is None:
            return
        frames = self.pusher.frames(device.connection)
        resumed = False  # one resume per look: a broken server must not loop us forever
        while device.read < len(frames):
            frame = frames[device.read]
            device.read += 1
            if frame["type"] == "accepted":
                key = (USERS[device.name][0], frame["messageId"])
                assert self.accepted.setdefault(key, frame["seq"]) == frame["seq"]
                device.own[frame["seq"]] = self.sent_bodies[key]
                device.advance_own()
            elif frame["type"] == "message":
                seq = frame["seq"]
                if seq == device.last + 1:
                    device.last = seq
                    device.processed.append((seq, frame["body"]))
                    device.advance_own()
                elif seq > device.last + 1 and not resumed:
                    resumed = True
                    self.on_frame(self.origin(device), json.dumps(
                        {"action": "resume", "cursors": {"conv1": device.last}}))
            elif frame["type"] == "error":
                assert frame["code"] == "internal", frame  # only injected enqueue failures

    # ------------------------------------------------------------------ rules
    @initialize()
    def setup(self) -> None:
        self.connect(self.devices["agent-desk"])
        for name in ("cust-phone", "cust-laptop"):
            self.connect(self.devices[name])
        conv = self.chat.desk.create_conversation(self.chat.connections.principal_of("cust-phone-1"))
        assert conv.agent_id == "agent"
        # the assignment is seq 1, a system message every device must process like any other
        system = self.chat.storage.get_message("conv1", 1)
        assert conv.last_seq == 1 and system is not None
        assert (system.sender_role, system.event, system.agent_id) == ("system", "assigned", "agent")

    @rule(device=st.sampled_from(DEVICES), n=st.integers(0, 5), body=st.sampled_from("abc"),
          enqueue_dies=st.booleans(), handler_dies=st.sampled_from([None, "after_claim", "after_store"]))
    def send(self, device: str, n: int, body: str, enqueue_dies: bool, handler_dies: str | None) -> None:
        """A send; its enqueue may fail, and its handler may die between the claim and the
        message or between the message and its push."""
        d = self.devices[device]
        if d.connection is None:
            return
        user = USERS[device][0]
        key = (user, f"m{n}")
        body = self.sent_bodies.setdefault(key, f"{user}:{n}:{body}")  # a retry repeats the body
        self.queue.fail_next = 1 if enqueue_dies else 0

        def die(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"handler died {handler_dies}")

        storage = self.chat.storage
        target, name = {"after_claim": (storage, "put_message"),
                        "after_store": (self.chat.fanout, "deliver_now")}.get(handler_dies or "", (None, ""))
        if target is not None:
            setattr(target, name, die)
        try:
            self.on_frame(self.origin(d), json.dumps(
                {"action": "send", "conversationId": "conv1", "messageId": f"m{n}", "body": body}))
        finally:
            if target is not None:
                delattr(target, name)  # the class's method again
        self.queue.fail_next = 0
        self.pump_frames(d)

    @rule(k=st.integers(1, 4), redeliver=st.booleans())
    def deliver(self, k: int, redeliver: bool) -> None:
        """The consumer takes up to k queue entries; SQS may hand them out again."""
        self.in_flight.extend(self.queue.drain())
        batch, self.in_flight = self.in_flight[:k], self.in_flight[k:]
        if not batch:
            return
        try:
            self.chat.consumer.deliver(d.to_json() for d in batch)
        except DeliveryFailed:
            redeliver = True
        if redeliver:  # at-least-once: the batch comes back
            self.in_flight = batch + self.in_flight
        for d in self.devices.values():
            self.pump_frames(d)

    @rule(device=st.sampled_from(DEVICES))
    def drop(self, device: str) -> None:
        """The network dies: pushes to the old connection answer 410; $disconnect may never run."""
        d = self.devices[device]
        if d.connection is not None:
            self.pusher.gone.add(d.connection)
            d.connection = None

    @rule(device=st.sampled_from(DEVICES), tell_server=st.booleans())
    def reconnect(self, device: str, tell_server: bool) -> None:
        d = self.devices[device]
        if d.connection is not None:
            self.pusher.gone.add(d.connection)
            if tell_server:
                self.chat.connections.disconnect(d.connection)
        self.connect(d)
        self.on_frame(self.origin(d), json.dumps(
            {"action": "resume", "cursors": {"conv1": d.last}}))
        self.pump_frames(d)

    @rule(device=st.sampled_from(DEVICES))
    def ack(self, device: str) -> None:
        d = self.devices[device]
        if d.connection is not None:
            self.on_frame(self.origin(d), json.dumps(
                {"action": "ack", "conversationId": "conv1", "seq": d.last}))

    @rule(device=st.sampled_from(DEVICES))
    def resume(self, device: str) -> None:
        d = self.devices[device]
        if d.connection is not None:
            self.on_frame(self.origin(d), json.dumps(
                {"action": "resume", "cursors": {"conv1": d.last}}))
            self.pump_frames(d)

    @rule()
    def sweep(self) -> None:
        # Past the sweep grace, but a run stays well inside the 24 h
        # idempotency window (a resend after it is a new message, by contract).
        self.clock_ms += 120_000
        self.chat.sweeper.sweep()

    # ------------------------------------------------------------- invariants
    @invariant()
    def stored_sequence_is_unique_and_accepted_seqs_hold_their_message(self) -> None:
        conv = self.chat.storage.get_conversation("conv1")
        if conv is None:
            return
        stored = self.chat.storage.messages_after("conv1", 0, 10_000)
        seqs = [m.seq for m in stored]
        # Ascending, unique, within the counter. A seq reserved by a handler
        # that died before storing stays empty until a resume past the grace
        # voids it (the teardown checks that every seq ends up filled).
        assert seqs == sorted(set(seqs)) and all(1 <= q <= conv.last_seq for q in seqs)
        ids = [(m.sender_id, m.message_id) for m in stored]
        assert len(ids) == len(set(ids))  # one seq per (sender, messageId)
        by_seq = {m.seq: m for m in stored}
        for (user, mid), seq in self.accepted.items():
            assert (by_seq[seq].sender_id, by_seq[seq].message_id) == (user, mid)

    @invariant()
    def every_device_processed_a_prefix_exactly_once(self) -> None:
        stored = {m.seq: m.body for m in self.chat.storage.messages_after("conv1", 0, 10_000)}
        for d in self.devices.values():
            assert [s for s, _ in d.processed] == list(range(1, len(d.processed) + 1))
            assert all(stored[s] == body for s, body in d.processed)

    def teardown(self) -> None:
        # Let everything settle: sweep, drain the queue, everyone reconnects and resumes.
        self.clock_ms += 3_600_000
        self.chat.sweeper.sweep()
        self.pusher.gone.clear()
        for d in self.devices.values():
            self.reconnect(d.name, tell_server=True)
        for _ in range(50):
            self.deliver(10, False)
            for d in self.devices.values():
                self.resume(d.name)
        last = self.chat.storage.get_conversation("conv1").last_seq
        stored = self.chat.storage.messages_after("conv1", 0, 10_000)
        assert [m.seq for m in stored] == list(range(1, last + 1))  # gapless once settled
        for d in self.devices.values():
            assert [s for s, _ in d.processed] == list(range(1, last + 1)), d.name
        super().teardown()


ExactlyOnce.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestExactlyOnce = ExactlyOnce.TestCase

