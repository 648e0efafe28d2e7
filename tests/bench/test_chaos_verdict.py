"""``make chaos`` gives the right verdict on a slow machine: the bench never gives up on progress.

A busy machine once made the CI-sized run report messages that both
recipients had processed as "never accepted": the bench waited at most
300 s for each send's ``accepted`` and counted a send still pending then as
unaccepted, while the SDK kept resending it and heard ``accepted`` later.
These tests run the bench's sending and draining on an event loop whose
clock the test moves forward, so "a long time" costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.chaos import Party, Run
from bench.checker import Accepted, Processed, check


class SkewedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test can move forward (timers then fire at once)."""

    skew = 0.0

    def time(self) -> float:
        return super().time() + self.skew


def run_skewed(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=SkewedLoop) as runner:
        return runner.run(coro)


def jump(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SkewedLoop)
    loop.skew += seconds


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


class FakeSdk:
    """The part of the SDK the bench uses to send: futures the test resolves."""

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.seq = 0

    def send(self, conversation_id: str, body: str, message_id: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = fut
        return fut

    def accept_one(self) -> None:
        """Answer the oldest send still waiting (nothing if the bench gave up on it)."""
        for message_id, fut in self.pending.items():
            if not fut.done():
                self.seq += 1
                fut.set_result(argparse.Namespace(seq=self.seq, message_id=message_id))
                return


def new_run(**overrides: Any) -> Run:
    args = argparse.Namespace(seed=7, window=2, max_inflight=0, stall_timeout=600.0, drain_timeout=180.0)
    for key, value in overrides.items():
        setattr(args, key, value)
    return Run(args, cloud=None)  # type: ignore[arg-type]


def test_a_send_accepted_after_a_long_wait_counts_as_accepted():
    async def scenario() -> Run:
        run = new_run()
        sdk = FakeSdk()
        talk = asyncio.create_task(run.talk("conv-1", Party("cust", "customer", sdk), 1, "c"))  # type: ignore[arg-type]
        await settle()
        jump(1000)  # a very busy machine: the answer takes 1,000 s
        await settle()
        sdk.accept_one()
        await talk
        return run

    run = run_skewed(scenario())
    assert run.failures == []
    assert [(a.message_id, a.seq) for a in run.accepted] == [("c-conv-1-0", 1)]


def test_sending_waits_as_long_as_any_send_makes_progress():
    async def scenario() -> Run:
        run = new_run(stall_timeout=600.0)
        slow, steady = FakeSdk(), FakeSdk()
        sending = asyncio.create_task(run.send_all([
            run.talk("conv-1", Party("a", "agent", slow), 1, "a"),  # type: ignore[arg-type]
            run.talk("conv-2", Party("c", "customer", steady), 10, "c"),  # type: ignore[arg-type]
        ]))
        await settle()
        for _ in range(10):  # one accepted every 300 s: 3,000 s in all
            jump(300)
            steady.accept_one()
            await settle()
        slow.accept_one()
        await sending
        return run

    run = run_skewed(scenario())
    assert run.failures == []
    assert len(run.accepted) == 11


def test_a_run_in_which_nothing_is_accepted_is_abandoned_and_fails():
    async def scenario() -> Run:
        run = new_run(stall_timeout=600.0)
        sending = asyncio.create_task(run.send_all([
            run.talk("conv-1", Party("c", "customer", FakeSdk()), 2, "c"),  # type: ignore[arg-type]
        ]))
        await settle()
        jump(601)
        await asyncio.wait_for(sending, 5)
        return run

    run = run_skewed(scenario())
    assert any("stalled" in failure for failure in run.failures)
    report = check(run.sent, run.accepted, {}, {"conv-1": ["c"]})
    assert not report.ok and report.unaccepted == 2


def test_draining_continues_while_recipients_make_progress():
    async def scenario() -> tuple[Run, bool]:
        run = new_run(drain_timeout=180.0)
        alice, bob = Party("alice", "customer", FakeSdk()), Party("bob", "agent", FakeSdk())  # type: ignore[arg-type]
        run.parties = {"alice": alice, "bob": bob}
        run.participants = {"conv-1": ["alice", "bob"]}
        run.accepted = [Accepted("alice", "conv-1", f"m{seq}", seq) for seq in range(1, 11)]
        draining = asyncio.create_task(run.drain())
        for seq in range(1, 11):  # one message every 100 s: 1,000 s in all
            jump(100)
            for party in (alice, bob):
                party.processed.append(Processed("conv-1", seq, f"m{seq}", "body"))
            await settle()
        await asyncio.wait_for(draining, 10)
        return run, run.drained()

    _, drained = run_skewed(scenario())
    assert drained


def test_draining_gives_up_once_nothing_moves():
    async def scenario() -> bool:
        run = new_run(drain_timeout=180.0)
        alice = Party("alice", "customer", FakeSdk())  # type: ignore[arg-type]
        run.parties = {"alice": alice}
        run.participants = {"conv-1": ["alice"]}
        run.accepted = [Accepted("bob", "conv-1", "m1", 1)]  # alice never gets it
        draining = asyncio.create_task(run.drain())
        await settle()
        jump(181)
        await asyncio.wait_for(draining, 10)
        return run.drained()

    assert run_skewed(scenario()) is False
