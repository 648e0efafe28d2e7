"""The send, lifecycle and replay protocols over every interleaving of small scenarios (tests/property/interleavings.py).

``make interleavings`` runs deeper scenarios; this is the CI-sized set, and
the proof that the check catches a protocol bug.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from chalicelib.core import send as sp
from tests.property import interleavings as il


@pytest.mark.parametrize("scenario", il.CI_SCENARIOS, ids=lambda s: s.name)
def test_every_interleaving_keeps_every_invariant(scenario, capsys):
    report = il.explore(scenario, max_states=200_000)
    with capsys.disabled():
        print(f"\n  {report.line()}")
    assert report.complete and report.ends > 0
    assert report.states > 100  # the scenario really branches


@dataclass
class StoreBeforeClaim(sp.SendProtocol):
    """A seeded bug: a new message is stored first and claimed after (the claim would then be late)."""

    stored_unclaimed: bool = False

    def _reserved(self, conv):
        self.conversation = conv
        self.pending = self._new_message(conv)
        self.stored_unclaimed = True
        return self._go(sp.State.STORE, sp.Store(self.pending.message, tuple(conv.participant_ids())))

    def advance(self, outcome, now_ms=None):
        if self.state is sp.State.STORE and isinstance(outcome, sp.Stored) and self.stored_unclaimed:
            return self._go(sp.State.CLAIM, sp.Claim(self._pending().idem))
        if self.state is sp.State.CLAIM and isinstance(outcome, sp.Claimed) and self.stored_unclaimed:
            assert self.conversation is not None
            return self._accept(self._pending().message, self._pending().idem, duplicate=False, fast=True,
                                recipients=tuple(self.conversation.participant_ids()))
        return super().advance(outcome, now_ms)


def store_before_claim(machine: sp.SendProtocol) -> sp.SendProtocol:
    return StoreBeforeClaim(**{f.name: getattr(machine, f.name) for f in fields(machine)})


def test_the_check_catches_a_send_that_stores_before_claiming(capsys):
    def actors():
        return [il.Send(il.ALICE, "alice-phone", "m1", factory=store_before_claim),
                il.Send(il.ALICE, "alice-tablet", "m1", factory=store_before_claim)]

    with pytest.raises(il.Violation) as caught:
        il.explore(il.Scenario("store before claim", actors))
    with capsys.disabled():
        print(f"\n  seeded bug (store before claim) reported: {caught.value}")
    assert "without its claim" in caught.value.reason


def test_the_check_catches_a_send_that_answers_a_retry_without_reading_its_slot():
    """A second seeded bug: a settled claim is answered as stored although its slot is void."""

    @dataclass
    class TrustTheClaim(sp.SendProtocol):
        def _settle(self, claim):
            self.claim = claim
            return self._go(sp.State.READ_SLOT, sp.ReadSlot(claim.conversation_id, claim.seq))

        def advance(self, outcome, now_ms=None):
            if self.state is sp.State.READ_SLOT and isinstance(outcome, sp.Found) and outcome.record is not None:
                claim = self._claim()
                return self._accept(outcome.record, claim, duplicate=True, fast=False, recipients=None)
            return super().advance(outcome, now_ms)

    def trust(machine):
        return TrustTheClaim(**{f.name: getattr(machine, f.name) for f in fields(machine)})

    def actors():
        return [il.Send(il.ALICE, "alice-phone", "m1", mortal=True, factory=trust),
                il.Resume("bob"), il.PassGrace(), il.Send(il.ALICE, "alice-tablet", "m1", factory=trust)]

    with pytest.raises(il.Violation) as caught:
        il.explore(il.Scenario("trust the claim", actors))
    assert "accepted at seq" in caught.value.reason
