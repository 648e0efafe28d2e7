"""Property: whatever customers and agents do, in any order, assignment stays fair and safe.

Customers open, close and reopen conversations; agents connect and
disconnect (several devices), go away or online, change capacity and
transfer. After every step:

- no agent holds more active conversations than its capacity, and each
  agent's ``active_count`` is exactly the number of active conversations
  assigned to it;
- nothing waits while an online agent has room (the queue is served);
- every conversation's sequence is gapless and its system messages replay
  its status history (assigned / transferred / closed / reopened);
- conversations were assigned oldest-waiting first: whatever a step
  assigned had waited longer than anything it left waiting.

The system is the real services (build_services) on the in-memory adapters.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chalicelib.auth import mint_token
from chalicelib.config import Config

#: The model checks exactly-once and the desk, not the per-connection limits
#: (tests/unit/test_limits.py, tests/functional/test_hardening.py): out of its way.
NO_FRAME_LIMITS = {"MAX_CONNECTIONS_PER_USER": "100000", "RATE_CONNECTION_FRAMES": "100000",
                   "RATE_CONNECTION_ACKS": "100000", "RATE_CONNECTION_READS": "100000",
                   "RATE_CONNECTION_RESUMES": "100000", "RATE_CONNECTION_TYPING": "100000"}
from chalicelib.errors import Conflict, Forbidden, OnceChatError
from chalicelib.models import Principal
from chalicelib.ports import MemoryPusher, MemoryQueue
from chalicelib.services import Origin, Ports, build_services
from chalicelib.storage.memory import MemoryStorage

SECRET = "property-test-secret-0123456789abcdef"
AGENTS = ("ann", "ben", "cat")
CUSTOMERS = ("c1", "c2", "c3")


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000_000

    def __call__(self) -> int:
        self.t += 7
        return self.t


class Desk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = Config.from_env({"STAGE": "test", "JWT_SECRET": SECRET,
                                  "REOPEN_WINDOW_SECONDS": "3600", **NO_FRAME_LIMITS})
        ids = iter(f"conv{i:03d}" for i in range(10_000))
        self.chat = build_services(config, Ports(MemoryStorage(), MemoryQueue(), MemoryPusher(),
                                                 clock=Clock(), new_id=lambda: next(ids)))
        self.connections: dict[str, list[str]] = {a: [] for a in AGENTS}
        self.serial = 0
        self.assignments = 0
        self.loads: dict[str, int] = {}

    # ----------------------------------------------------------------- helpers
    def conversations(self):
        return [c for c in self.chat.storage._conversations.values()]

    def snapshot_waiting(self):
        self.loads = {a.agent_id: a.active_count for a in self.chat.storage.list_agents()}
        return {c.conversation_id: c.queue_position_key for c in self.conversations()
                if c.status == "waiting"}

    def track(self, before: dict) -> None:
        """Fairness of one step: what it assigned was older than anything it left waiting."""
        now = {c.conversation_id: c for c in self.conversations()}
        assigned = [key for cid, key in before.items() if now[cid].status == "active"]
        still_waiting = [key for cid, key in before.items() if now[cid].status == "waiting"]
        if assigned and still_waiting:
            assert max(assigned) < min(still_waiting), (assigned, still_waiting)
        self.assignments += len(assigned)
        for agent in self.chat.storage.list_agents():  # a load that grew stays within capacity
            if agent.active_count > self.loads.get(agent.agent_id, 0):
                assert agent.active_count <= agent.capacity, agent

    # ------------------------------------------------------------------- rules
    @rule(agent=st.sampled_from(AGENTS))
    def agent_connects(self, agent: str) -> None:
        before = self.snapshot_waiting()
        self.serial += 1
        conn = f"{agent}-{self.serial}"
        self.chat.connections.connect(mint_token(SECRET, agent, "agent"), Origin(conn, "gw", "api"))
        self.connections[agent].append(conn)
        self.track(before)

    @rule(agent=st.sampled_from(AGENTS))
    def agent_disconnects(self, agent: str) -> None:
        if self.connections[agent]:
            self.chat.connections.disconnect(self.connections[agent].pop(0))

    @rule(agent=st.sampled_from(AGENTS), status=st.sampled_from(["online", "away", "offline", None]),
          capacity=st.one_of(st.none(), st.integers(0, 3)))
    def agent_sets_status(self, agent: str, status: str | None, capacity: int | None) -> None:
        if status is None and capacity is None:
            return
        before = self.snapshot_waiting()
        self.chat.desk.set_agent_status(Principal(user_id=agent, role="agent"), status, capacity)
        self.track(before)
        if status in ("away", "offline"):  # nothing stays with an agent who left
            assert not [c.conversation_id for c in self.conversations()
                        if c.status == "active" and c.agent_id == agent]

    @rule(customer=st.sampled_from(CUSTOMERS))
    def customer_opens(self, customer: str) -> None:
        before = self.snapshot_waiting()
        conv = self.chat.desk.create_conversation(Principal(user_id=customer, role="customer"))
        before[conv.conversation_id] = conv.queue_position_key  # queued at its creation
        self.track(before)

    @rule(pick=st.integers(0, 50), by_agent=st.booleans())
    def someone_closes(self, pick: int, by_agent: bool) -> None:
        open_ = [c for c in self.conversations() if c.status != "closed"]
        if not open_:
            return
        conv = open_[pick % len(open_)]
        who = (Principal(user_id=conv.agent_id, role="agent") if by_agent and conv.agent_id
               else Principal(user_id=conv.customer_id, role="customer"))
        before = self.snapshot_waiting()
        self.chat.desk.close(who, conv.conversation_id)
        self.track(before)

    @rule(pick=st.integers(0, 50), to=st.sampled_from(AGENTS))
    def agent_transfers(self, pick: int, to: str) -> None:
        active = [c for c in self.conversations() if c.status == "active"]
        if not active:
            return
        conv = active[pick % len(active)]
        before = self.snapshot_waiting()
        try:
            self.chat.desk.transfer(Principal(user_id=conv.agent_id, role="agent"), conv.conversation_id, to)
        except (Conflict, Forbidden, OnceChatError):
            pass  # to oneself, or no room: refused, nothing changed (checked by the invariants)
        self.track(before)

    @rule(pick=st.integers(0, 50))
    def customer_writes_to_a_closed_one(self, pick: int) -> None:
        closed = [c for c in self.conversations() if c.status == "closed"]
        if not closed:
            return
        conv = closed[pick % len(closed)]
        self.serial += 1
        conn = f"{conv.customer_id}-{self.serial}"
        origin = Origin(conn, "gw", "api")
        self.chat.connections.connect(mint_token(SECRET, conv.customer_id, "customer"), origin)
        before = self.snapshot_waiting()
        self.chat.messaging.on_frame(origin, '{"action":"send","conversationId":"%s","messageId":"m%d","body":"x"}'
                           % (conv.conversation_id, self.serial))
        self.chat.connections.disconnect(conn)
        reopened = self.chat.storage.get_conversation(conv.conversation_id)
        assert reopened.status != "closed"
        before[conv.conversation_id] = reopened.queue_position_key  # queued at its reopening
        self.track(before)

    # -------------------------------------------------------------- invariants
    @invariant()
    def capacity_and_load_agree(self) -> None:
        storage = self.chat.storage
        for agent in storage.list_agents():
            mine = [c for c in self.conversations() if c.status == "active" and c.agent_id == agent.agent_id]
            assert agent.active_count == len(mine), agent
            # Lowering a capacity never takes conversations away, so the load
            # may exceed a capacity set later; an assignment never exceeded it.
        for c in self.conversations():
            if c.status == "active":
                assert c.agent_id is not None

    @invariant()
    def nothing_waits_while_an_agent_has_room(self) -> None:
        waiting = [c for c in self.conversations() if c.status == "waiting"]
        if waiting:
            assert not [a for a in self.chat.storage.list_agents() if a.has_room]

    @invariant()
    def sequences_are_gapless_and_replay_the_status(self) -> None:
        for c in self.conversations():
            messages = self.chat.storage.messages_after(c.conversation_id, 0, 10_000)
            assert [m.seq for m in messages] == list(range(1, c.last_seq + 1))
            status, agent = "waiting", None
            for m in messages:
                if m.event is not None:
                    status, agent = m.status, m.agent_id
            assert (status, agent) == (c.status, c.agent_id)


TestDesk = Desk.TestCase
TestDesk.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
