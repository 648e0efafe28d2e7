"""An exhaustive interleaving check of the send, lifecycle and replay protocols.

Small scenarios (two or three handlers at once, a handler that may die
after any step, a resume, a sweep, a lifecycle step, the clock passing the
sweep grace) run against the in-memory store. Each handler is its own
Lambda container (its own services, caches included) over the shared
store, queue and push channel, and runs the production drivers one storage
command at a time: ``Messaging.begin_send`` / ``SendRun`` for a send,
``Desk.execute`` for a lifecycle step, ``Messaging.replay_step`` for a
resume. The checker enumerates every order of those steps (and every point
where a mortal handler dies), depth first, merging states it has seen
(the store, the queue, the pushes, every handler's machine and caches).

After every step it asserts:

- a slot, once written, never changes (a void never overwrites a message);
- no message is visible without its claim (the claim names its seq);
- every message is stored at one seq at most;
- every ``accepted`` of a messageId names the same seq, and that slot
  holds the message (a retry answers the first seq; nothing accepted is lost);

and when nothing can run any more (the queue delivered, the clock past
the grace, each participant's device resumed as the protocol says):

- every reserved seq is stored or void;
- every participant's device, applying the client's seq rule
  (``client.core.Inbox``), processed every seq exactly once, in order,
  each holding what the store holds.

``python -m tests.property.interleavings`` runs the deeper scenarios
(``make interleavings``); tests/property/test_interleavings.py runs the
CI-sized ones and shows that a seeded bug is caught.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from chalicelib import core
from chalicelib.auth import mint_token
from chalicelib.config import Config
from chalicelib.core import lifecycle, replay
from chalicelib.core import send as send_protocol
from chalicelib.errors import OnceChatError
from chalicelib.models import MessageRecord, Principal, SendFrame
from chalicelib.ports import MemoryPusher, MemoryQueue
from chalicelib.services import Origin, Ports, Services, build_services
from chalicelib.services.desk import Desk
from chalicelib.services.messaging import SendRun
from chalicelib.storage.memory import MemoryStorage
from client.core import Inbox, Message

SECRET = "interleavings-secret-0123456789abcdef"
GRACE_S = 30
T0 = 1_800_000_000_000
CID = "conv1"
ALICE = Principal(user_id="alice", role="customer")
BOB = Principal(user_id="bob", role="agent")
WATCHERS = {"alice": "alice-watch", "bob": "bob-watch", "carol": "carol-watch"}

CONFIG = Config.from_env({
    "STAGE": "interleave", "JWT_SECRET": SECRET, "SWEEP_GRACE_SECONDS": str(GRACE_S),
    "REPLIES": "route", "PAGE_SIZE": "2", "REOPEN_WINDOW_SECONDS": "600",
    "RATE_USER_SENDS": "100000", "RATE_CONNECTION_SENDS": "100000", "RATE_USER_REQUESTS": "100000",
    "RATE_CONNECTION_FRAMES": "100000", "RATE_CONNECTION_RESUMES": "100000",
    "RATE_CONNECTION_ACKS": "100000", "RATE_CONNECTION_READS": "100000",
})

#: A send machine factory: production's (``Messaging.send_machine``) unless a test seeds a bug.
MachineFactory = Callable[..., send_protocol.SendProtocol]


class Violation(AssertionError):
    """An invariant failed; ``schedule`` is the order of steps that led there."""

    def __init__(self, message: str, schedule: Sequence[str]) -> None:
        super().__init__(f"{message}\n  after: {' -> '.join(schedule) or '(start)'}")
        self.reason = message
        self.schedule = list(schedule)


class InlineExecutor(Executor):
    """Runs what the fast path reads in the background at once, so every step is deterministic."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


# ------------------------------------------------------------------- the world


def _template() -> MemoryStorage:
    """alice (customer) and bob (agent) in an active conversation, each with a phone and a watching device; carol (agent) online."""
    storage, queue, pusher = MemoryStorage(), MemoryQueue(), MemoryPusher()
    s = build_services(CONFIG, Ports(storage, queue, pusher, clock=lambda: T0, new_id=lambda: CID))
    for user, role, devices in (("bob", "agent", ("bob-desk", "bob-watch")),
                                ("alice", "customer", ("alice-phone", "alice-tablet", "alice-watch"))):
        for device in devices:
            s.connections.connect(mint_token(SECRET, user, role), Origin(device, "gw", "api"))
    conv = s.desk.create_conversation(ALICE)
    assert (conv.status, conv.agent_id, conv.last_seq) == ("active", "bob", 1)
    # carol, a second agent online with room: who takes the conversation if bob leaves.
    s.connections.connect(mint_token(SECRET, "carol", "agent"), Origin("carol-watch", "gw", "api"))
    return storage


_TEMPLATE: MemoryStorage | None = None


class World:
    """The shared store, queue, push channel and clock of one run, and what the handlers answered."""

    def __init__(self) -> None:
        global _TEMPLATE
        if _TEMPLATE is None:
            _TEMPLATE = _template()
        self.storage = MemoryStorage()
        for name, value in vars(_TEMPLATE).items():  # records are immutable: a shallow copy is a copy
            if name != "_lock":
                setattr(self.storage, name, copy.copy(value))
        self.queue = MemoryQueue()
        self.pusher = MemoryPusher()
        self.now = T0
        #: (sender, messageId) -> the seqs its accepted frames named.
        self.answers: dict[tuple[str, str], list[int]] = {}
        #: (conversation, seq) -> the first record seen in the slot.
        self.slots: dict[tuple[str, int], MessageRecord] = {}
        self.schedule: list[str] = []

    def clock(self) -> int:
        return self.now

    def container(self) -> Services:
        """A new Lambda container: its own services and caches over the shared ports."""
        services = build_services(CONFIG, Ports(self.storage, self.queue, self.pusher, clock=self.clock,
                                                new_id=lambda: CID, sleep=lambda _seconds: None))
        services.messaging._background = InlineExecutor()
        return services

    # ------------------------------------------------------------ checking

    def check(self) -> None:
        """The invariants that hold after every step."""
        st = self.storage
        holders: dict[tuple[str, str, str], list[int]] = {}
        for (cid, seq), record in st._messages.items():
            first = self.slots.setdefault((cid, seq), record)
            if first != record:
                self.fail(f"slot {seq} changed from {_show(first)} to {_show(record)}")
            conv = st._conversations[cid]
            if seq > conv.last_seq:
                self.fail(f"slot {seq} beyond lastSeq {conv.last_seq}")
            if record.void or record.sender_role == "system":
                continue
            holders.setdefault((record.sender_id, cid, record.message_id), []).append(seq)
            claim = st._idempotency.get(core.idempotency_key(record.sender_id, cid, record.message_id))
            if claim is None or claim.seq != seq:
                self.fail(f"message {record.message_id} visible at seq {seq} without its claim "
                          f"(claim: {None if claim is None else claim.seq})")
        for (sender, _cid, mid), seqs in holders.items():
            if len(seqs) > 1:
                self.fail(f"message {mid} of {sender} stored at seqs {sorted(seqs)}")
        for (sender, mid), seqs in self.answers.items():
            if len(set(seqs)) > 1:
                self.fail(f"message {mid} of {sender} accepted at seqs {seqs}")
            held = st._messages.get((CID, seqs[0]))
            if held is None or held.void or held.message_id != mid or held.sender_id != sender:
                self.fail(f"message {mid} accepted at seq {seqs[0]} but the slot holds {_show(held)}")

    def fail(self, message: str) -> None:
        raise Violation(message, self.schedule)

    def settle(self) -> dict[str, int]:
        """Quiescence: deliver the queue, pass the grace, let each participant's device catch up; check the end.

        Returns figures of what the devices saw (repeated frames, resumes).
        """
        services = self.container()
        while self.queue.items:
            services.consumer.deliver(d.to_json() for d in self.queue.drain())
        self.now += (GRACE_S + 1) * 1000
        figures = {"repeated": 0, "resumes": 0}
        for user, device in WATCHERS.items():
            origin = Origin(device, "gw", "api")
            inbox = Inbox({CID: 0})
            released: list[Message] = []
            read = 0
            for attempt in range(5):
                frames = self.pusher.frames(device)
                for frame in frames[read:]:
                    if frame["type"] == "message":
                        msg = Message.from_frame(frame)
                        if msg.seq <= inbox.last.get(CID, 0) or msg.seq in inbox.buffered(CID):
                            figures["repeated"] += 1
                        released.extend(inbox.receive(msg))
                    elif frame["type"] == "resumed":
                        inbox.note_latest(frame["conversations"])
                read = len(frames)
                if attempt and not inbox.behind():
                    break
                figures["resumes"] += 1
                principal = services.connections.principal_of(device)
                services.messaging.on_frame(origin, json.dumps({"action": "resume", "cursors": inbox.cursors()}))
                assert principal.user_id == user
            conv = self.storage._conversations[CID]
            seqs = [m.seq for m in released]
            if user in conv.participant_ids():
                if inbox.behind():
                    self.fail(f"{device} still behind after resuming: at {inbox.cursors()}, latest {inbox.latest}")
                if seqs != list(range(1, conv.last_seq + 1)):
                    self.fail(f"{device} processed seqs {seqs}, the conversation holds 1..{conv.last_seq}")
            elif seqs != list(range(1, len(seqs) + 1)):
                # Not (or no longer) a participant: what it processed is a prefix, once each, in order.
                self.fail(f"{device} (not a participant) processed seqs {seqs}")
            for m in released:
                held = self.storage._messages.get((CID, m.seq))
                if held is None or held.message_id != m.message_id or bool(held.void) != m.void:
                    self.fail(f"{device} processed {m.message_id} at {m.seq}; the store holds {_show(held)}")
        conv = self.storage._conversations[CID]
        for seq in range(1, conv.last_seq + 1):
            if (CID, seq) not in self.storage._messages:
                self.fail(f"seq {seq} reserved but neither stored nor void")
        self.check()
        return figures

    def fingerprint(self, actors: Sequence[Actor]) -> str:
        st = self.storage
        return repr((
            sorted(st._messages.items()), sorted(st._idempotency.items()), sorted(st._conversations.items()),
            sorted(st._participants.items()), sorted(st._agents.items()), sorted(st._active.items()),
            st._sweep_mark, [d.to_json() for d in self.queue.items], sorted(self.pusher.sent.items()),
            self.now, sorted(self.answers.items()), [a.fingerprint() for a in actors]))


def _show(record: MessageRecord | None) -> str:
    if record is None:
        return "nothing"
    return "a void" if record.void else f"{record.message_id} of {record.sender_id}"


# ------------------------------------------------------------------ the actors


class Actor:
    """One handler (or the clock): a sequence of steps, each one storage command."""

    name = "actor"
    mortal = False

    def __init__(self) -> None:
        self.done = False
        self.dead = False
        self.steps = 0
        self.services: Services | None = None

    def step(self, world: World) -> None:
        if self.services is None:
            self.services = world.container()
        self.steps += 1
        self._step(world, self.services)

    def _step(self, world: World, services: Services) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        caches = ""
        if self.services is not None:
            caches = repr(list(self.services.messaging.accepted._items.items()))
        return f"{self.name}|{self.done}|{self.dead}|{self._state()}|{caches}"

    def _state(self) -> str:
        return str(self.steps)


class Send(Actor):
    """A send handler of ``user``'s ``mid`` from ``device``; ``mortal``: it may die after any step."""

    def __init__(self, user: Principal, device: str, mid: str, body: str = "hi", mortal: bool = False,
                 factory: MachineFactory | None = None) -> None:
        super().__init__()
        self.user, self.device, self.mid, self.body = user, device, mid, body
        self.name = f"send {mid}@{device}"
        self.mortal = mortal
        self.factory = factory
        self.machine: send_protocol.SendProtocol | None = None
        self.run: SendRun | None = None
        self.command: send_protocol.Command | None = None

    def _step(self, world: World, services: Services) -> None:
        m = services.messaging
        if self.machine is None:
            frame = SendFrame(action="send", conversation_id=CID, message_id=self.mid, body=self.body)
            self.machine, self.run = m.begin_send(self.user, Origin(self.device, "gw", "api"), frame)
            if self.factory is not None:
                self.machine = self.factory(self.machine)
            self.command = self.machine.start()
        assert self.run is not None and self.command is not None
        command = self.command
        if isinstance(command, send_protocol.Accept):
            answer = self.run.accept(command)
            world.answers.setdefault((self.user.user_id, self.mid), []).append(answer["seq"])
            self.done = True
        elif isinstance(command, send_protocol.Fail):
            self.done = True
        else:
            try:
                self.command = self.machine.advance(self.run.execute(command), world.clock())
            except OnceChatError:
                self.done = True  # e.g. the enqueue failed: the client retries
        if not self.done and isinstance(self.command, send_protocol.Fail):
            self.done = True

    def _state(self) -> str:
        return repr((self.machine, self.command))


class LifecycleStep(Actor):
    """One lifecycle step driven by ``Desk.execute``, then the queue runs (as the desk's callers do)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.machine: lifecycle.LifecycleProtocol | None = None
        self.command: lifecycle.Command | None = None

    def _machine(self, desk: Desk) -> lifecycle.LifecycleProtocol:
        raise NotImplementedError

    def _step(self, world: World, services: Services) -> None:
        desk = services.desk
        if self.machine is None:
            self.machine = self._machine(desk)
            self.command = self.machine.start()
        command = self.command
        assert command is not None
        if isinstance(command, lifecycle.Done | lifecycle.Fail):
            if isinstance(command, lifecycle.Done):
                desk.assign_waiting()
            self.done = True
            return
        self.command = self.machine.advance(desk.execute(command), world.clock())

    def _state(self) -> str:
        return repr((self.machine, self.command))


class Close(LifecycleStep):
    """``who`` closes the conversation (``Desk.close`` does the same)."""

    def __init__(self, who: Principal) -> None:
        super().__init__(f"close by {who.user_id}")
        self.who = who

    def _machine(self, desk: Desk) -> lifecycle.LifecycleProtocol:
        return desk.close_machine(self.who, CID)


class Requeue(LifecycleStep):
    """``agent`` left: their conversation goes back to the queue (``Desk.requeue_agent`` does the same)."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"requeue from {agent}")
        self.agent = agent

    def _machine(self, desk: Desk) -> lifecycle.LifecycleProtocol:
        return desk.requeue_machine(CID, self.agent)


class Resume(Actor):
    """``user``'s watching device replays the conversation from seq 0, one page or frame a step."""

    def __init__(self, user: str) -> None:
        super().__init__()
        self.device = WATCHERS[user]
        self.name = f"resume {self.device}"
        self.machine: replay.ReplayProtocol | None = None
        self.command: replay.Command | None = None

    def _step(self, world: World, services: Services) -> None:
        m = services.messaging
        origin = Origin(self.device, "gw", "api")
        if self.machine is None:
            conv = services.storage.get_conversation(CID)
            assert conv is not None
            self.machine = replay.ReplayProtocol(conv, 0, CONFIG.resume_max_messages, world.clock(),
                                                 CONFIG.sweep_grace_seconds, CONFIG.page_size,
                                                 CONFIG.resume_hole_wait_ms)
            self.command = self.machine.start()
            if isinstance(self.command, replay.Done):
                self.done = True
            return
        assert self.command is not None
        self.command = self.machine.advance(m.replay_step(origin, self.machine.conversation, self.command,
                                                          self.machine.now_ms))
        if isinstance(self.command, replay.Done):
            self.done = True

    def _state(self) -> str:
        return repr((self.machine, self.command))


class Sweep(Actor):
    """The scheduled sweeper, one whole sweep in one step."""

    name = "sweep"

    def _step(self, world: World, services: Services) -> None:
        services.sweeper.sweep()
        self.done = True


class Consume(Actor):
    """The SQS consumer takes everything queued so far, in one step."""

    name = "consume"

    def _step(self, world: World, services: Services) -> None:
        services.consumer.deliver(d.to_json() for d in world.queue.drain())
        self.done = True


class PassGrace(Actor):
    """The clock moves past the sweep grace: any send still running is, to readers, dead."""

    name = "grace passes"

    def _step(self, world: World, services: Services) -> None:
        world.now += (GRACE_S + 1) * 1000
        self.done = True


# ---------------------------------------------------------------- the explorer


@dataclass(frozen=True)
class Scenario:
    name: str
    actors: Callable[[], list[Actor]]


@dataclass
class Report:
    scenario: str
    states: int = 0
    ends: int = 0
    seconds: float = 0.0
    repeated_max: int = 0
    resumes_max: int = 0
    complete: bool = True
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.scenario}: {self.states} states, {self.ends} ends, "
                f"{'complete' if self.complete else 'budget reached'} in {self.seconds:.1f} s "
                f"(at most {self.repeated_max} repeated frames and {self.resumes_max} resumes per end)")


def _replay(scenario: Scenario, schedule: Sequence[tuple[int, str]]) -> tuple[World, list[Actor]]:
    world = World()
    actors = scenario.actors()
    for index, move in schedule:
        actor = actors[index]
        world.schedule.append(f"{'kill ' if move == 'kill' else ''}{actor.name}")
        if move == "kill":
            actor.dead = True
        else:
            actor.step(world)
        world.check()
    return world, actors


def _moves(actors: Sequence[Actor]) -> Iterator[tuple[int, str]]:
    for i, actor in enumerate(actors):
        if actor.done or actor.dead:
            continue
        yield i, "step"
        if actor.mortal and actor.steps:
            yield i, "kill"


def explore(scenario: Scenario, max_states: int | None = None) -> Report:
    """Every interleaving of the scenario's actors, depth first, merging states already seen."""
    report = Report(scenario.name)
    start = time.monotonic()
    seen: set[str] = set()
    stack: list[tuple[tuple[int, str], ...]] = [()]
    while stack:
        schedule = stack.pop()
        world, actors = _replay(scenario, schedule)
        fp = world.fingerprint(actors)
        if fp in seen:
            continue
        seen.add(fp)
        report.states += 1
        if max_states is not None and report.states >= max_states:
            report.complete = False
            break
        moves = list(_moves(actors))
        if not moves:
            figures = world.settle()
            report.ends += 1
            report.repeated_max = max(report.repeated_max, figures["repeated"])
            report.resumes_max = max(report.resumes_max, figures["resumes"])
            continue
        stack.extend((*schedule, move) for move in reversed(moves))
    report.seconds = time.monotonic() - start
    return report


# --------------------------------------------------------------- the scenarios


def _twice_plus_one() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1"), Send(ALICE, "alice-tablet", "m1"), Send(BOB, "bob-desk", "b1")]


def _dies_then_retried() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1", mortal=True), Send(ALICE, "alice-tablet", "m1"), PassGrace()]


def _resume_and_sweep() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1", mortal=True), Resume("bob"), Sweep(), PassGrace()]


def _close_races_send() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1"), Close(BOB)]


def _close_races_two_sends() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1"), Close(BOB), Send(BOB, "bob-desk", "b1")]


def _agent_leaves_while_sending() -> list[Actor]:
    return [Requeue("bob"), Send(BOB, "bob-desk", "b1")]


def _agent_leaves_while_both_send() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1"), Requeue("bob"), Send(BOB, "bob-desk", "b1")]


def _agent_leaves_races_a_dying_send() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1", mortal=True), Requeue("bob"), Send(ALICE, "alice-tablet", "m1"),
            PassGrace()]


def _dies_retried_and_another() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1", mortal=True), Send(ALICE, "alice-tablet", "m1"),
            Send(BOB, "bob-desk", "b1"), PassGrace(), Consume()]


def _dies_retried_resume_sweep() -> list[Actor]:
    return [Send(ALICE, "alice-phone", "m1", mortal=True), Send(ALICE, "alice-tablet", "m1", mortal=True),
            Resume("bob"), Sweep(), PassGrace()]


#: Run by `make test` (tests/property/test_interleavings.py).
CI_SCENARIOS = (
    Scenario("same messageId twice at once, plus another message", _twice_plus_one),
    Scenario("a handler dies after any step, its retry races it", _dies_then_retried),
    Scenario("a resume and a sweep interleaved with a dying send", _resume_and_sweep),
    Scenario("a close races a send (which may reopen)", _close_races_send),
    Scenario("the agent leaves (requeue) while sending", _agent_leaves_while_sending),
)
#: Also run by `make interleavings`.
DEEP_SCENARIOS = (
    Scenario("a close races two sends", _close_races_two_sends),
    Scenario("a dying send, its retry and another message, the consumer anywhere", _dies_retried_and_another),
    Scenario("two dying sends of one messageId, a resume and a sweep", _dies_retried_resume_sweep),
    Scenario("the agent leaves while a dying send and its retry run", _agent_leaves_races_a_dying_send),
    Scenario("the agent leaves (requeue) while the customer and the agent send", _agent_leaves_while_both_send),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.property.interleavings",
                                     description="Every interleaving of the send, lifecycle and replay protocols.")
    parser.add_argument("--ci", action="store_true", help="only the scenarios `make test` runs")
    parser.add_argument("--max-states", type=int, default=None, help="stop each scenario after this many states")
    args = parser.parse_args(argv)
    scenarios = CI_SCENARIOS if args.ci else CI_SCENARIOS + DEEP_SCENARIOS
    total = 0
    for scenario in scenarios:
        try:
            report = explore(scenario, args.max_states)
        except Violation as violation:
            print(f"{scenario.name}: VIOLATION {violation}")
            return 1
        total += report.states
        print(report.line(), flush=True)
    print(f"{total} states explored, every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
