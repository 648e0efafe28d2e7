"""The agents table: presence, connection count and load."""

from __future__ import annotations

from typing import Any

from chalicelib.errors import OnceChatError
from chalicelib.models import (
    DEFAULT_CAPACITY,
    AgentRecord,
)
from chalicelib.storage.dynamodb.common import (
    DynamoBase,
    Item,
    Outcome,
    _backend,
    _from_item,
    _n,
    _s,
)
from chalicelib.storage.dynamodb.conditions import (
    AWAY,
    LAST_CONNECTION,
    NONE_LEFT,
    NOT_AWAY,
    ONE_OF_MANY,
    UNCHANGED_SINCE_READ,
)


class AgentsTable(DynamoBase):
    """chalicelib.storage.base.AgentStore on DynamoDB."""

    def agent_connected(self, agent_id: str, now: str) -> AgentRecord:
        # One atomic update: the counter and the presence move together, and
        # activeCount is created at 0 (an item without the index's range key
        # is left out of GSI byPresence) and capacity at the default. An away
        # agent stays away: the condition tells the two cases apart, so a
        # concurrent status change is never overwritten by a stale read.
        names = {
            "#presence": "presence",
            "#updatedAt": "updatedAt",
            "#activeCount": "activeCount",
            "#capacity": "capacity",
            "#connections": "connections",
        }
        values = {":now": _s(now), ":zero": _n(0), ":one": _n(1), ":cap": _n(DEFAULT_CAPACITY),
                  ":away": _s("away")}
        common = (" #updatedAt = :now, #activeCount = if_not_exists(#activeCount, :zero),"
                  " #capacity = if_not_exists(#capacity, :cap) ADD #connections :one")
        with _backend("agent_connected"):
            for _ in range(16):
                new = self._conditional_agent_update(
                    agent_id, "SET #presence = :online," + common,
                    NOT_AWAY,
                    names, values | {":online": _s("online")})
                if new is None:  # away: only count the connection
                    new = self._conditional_agent_update(
                        agent_id, "SET" + common, AWAY, names, values)
                if new is not None:
                    return new
        raise OnceChatError(f"agent_connected({agent_id}) kept racing; giving up")

    def agent_disconnected(self, agent_id: str, now: str) -> AgentRecord | None:
        # A read-then-write ("connections - 1, offline if that is 0") would
        # race with a concurrent connect:
        #   t0 disconnect reads connections=1
        #   t1 connect: connections 1 -> 2, online
        #   t2 disconnect writes connections=0, offline   <- wrong: 1 is open
        # So each step is a conditional update on the value it assumes:
        #   a) connections = 1  -> ADD -1 and SET offline, in one update
        #      (never a moment with 0 connections but still online);
        #   b) connections > 1  -> ADD -1 only;
        #   c) neither matched: b)'s refusal returns the agent (ALL_OLD);
        #      unknown agent -> None; already 0 -> SET offline with condition
        #      connections <= 0 (never below 0); otherwise the count moved
        #      under us: go round again.
        names = {"#connections": "connections", "#presence": "presence", "#updatedAt": "updatedAt"}
        last_one = (
            "SET #presence = :offline, #updatedAt = :now ADD #connections :minus",
            LAST_CONNECTION,
            names,
            {":one": _n(1), ":minus": _n(-1), ":offline": _s("offline"), ":now": _s(now)},
        )
        one_of_many = (
            "SET #updatedAt = :now ADD #connections :minus",
            ONE_OF_MANY,
            {"#connections": "connections", "#updatedAt": "updatedAt"},
            {":one": _n(1), ":minus": _n(-1), ":now": _s(now)},
        )
        already_zero = (
            "SET #presence = :offline, #updatedAt = :now, #connections = :zero",
            NONE_LEFT,
            names,
            {":zero": _n(0), ":offline": _s("offline"), ":now": _s(now)},
        )
        with _backend("agent_disconnected"):
            for _ in range(16):
                new = self._conditional_agent_update(agent_id, *last_one)
                if new is not None:
                    return new
                outcome = self._agent_update(agent_id, *one_of_many)
                if outcome.written and outcome.attributes:
                    return _from_item(AgentRecord, outcome.attributes)
                # Refused: ALL_OLD is the agent as it was (no read back).
                if outcome.old is None:
                    return None
                if _from_item(AgentRecord, outcome.old).connections > 0:
                    continue  # the count moved between our attempts: go round again
                new = self._conditional_agent_update(agent_id, *already_zero)
                if new is not None:
                    return new
        raise OnceChatError(f"agent_disconnected({agent_id}) kept racing; giving up")

    def _conditional_agent_update(
        self, agent_id: str, update: str, condition: str, names: dict[str, str], values: Item
    ) -> AgentRecord | None:
        """The agent after a conditional update, or None when the condition failed."""
        outcome = self._agent_update(agent_id, update, condition, names, values)
        return _from_item(AgentRecord, outcome.attributes) if outcome.written and outcome.attributes else None

    def _agent_update(
        self, agent_id: str, update: str, condition: str, names: dict[str, str], values: Item
    ) -> Outcome:
        """One conditional update of an agent, returning the agent after it (ALL_NEW)."""
        return self._conditional(
            "update",
            TableName=self._config.agents_table,
            Key={"agentId": _s(agent_id)},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )

    def set_agent_connections(self, agent_id: str, seen_updated_at: str, count: int, now: str) -> bool:
        # Conditional on updatedAt: every connect, disconnect and status
        # change rewrites it, so a correction computed from an older read
        # never overwrites what happened since.
        update = "SET #connections = :n, #updatedAt = :now"
        values: Item = {":n": _n(count), ":now": _s(now), ":seen": _s(seen_updated_at)}
        if count == 0:
            update += ", #presence = :offline"
            values[":offline"] = _s("offline")
        with _backend("set_agent_connections"):
            new = self._conditional_agent_update(
                agent_id, update, UNCHANGED_SINCE_READ,
                {"#connections": "connections", "#updatedAt": "updatedAt", "#presence": "presence"}
                if count == 0 else {"#connections": "connections", "#updatedAt": "updatedAt"},
                values)
        return new is not None

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with _backend("get_agent"):
            item = self._get(self._config.agents_table, {"agentId": _s(agent_id)})
        return _from_item(AgentRecord, item) if item else None

    def online_agents(self) -> list[AgentRecord]:
        # GSI byPresence is eventually consistent: an agent that just went
        # offline may still be listed. Harmless: an assignment is a lifecycle
        # step (apply_transition) whose +1 on the agent's activeCount re-checks
        # presence = online, and room, inside its transaction.
        with _backend("online_agents"):
            items = list(
                self._query_all(
                    TableName=self._config.agents_table,
                    IndexName="byPresence",
                    KeyConditionExpression="#presence = :online",
                    ExpressionAttributeNames={"#presence": "presence"},
                    ExpressionAttributeValues={":online": _s("online")},
                    ScanIndexForward=True,
                )
            )
        agents = [_from_item(AgentRecord, item) for item in items]
        # The index orders by activeCount only; ties are ordered by id here.
        return sorted(agents, key=lambda a: (a.active_count, a.agent_id))

    def list_agents(self) -> list[AgentRecord]:
        # A scan: the agents table holds one small item per agent.
        items: list[Item] = []
        kwargs: dict[str, Any] = {"TableName": self._config.agents_table, "ConsistentRead": True}
        with _backend("list_agents"):
            while True:
                page = self._db.scan(**kwargs)
                items.extend(page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted((_from_item(AgentRecord, i) for i in items), key=lambda a: a.agent_id)

    def set_agent_status(
        self, agent_id: str, presence: str | None, capacity: int | None, now: str
    ) -> AgentRecord:
        # One update; the fields not given keep their value (or get their
        # defaults on a new agent), so a concurrent connect is not undone.
        names = {"#updatedAt": "updatedAt", "#activeCount": "activeCount", "#capacity": "capacity",
                 "#connections": "connections", "#presence": "presence"}
        values: Item = {":now": _s(now), ":zero": _n(0)}
        sets = ["#updatedAt = :now", "#activeCount = if_not_exists(#activeCount, :zero)",
                "#connections = if_not_exists(#connections, :zero)"]
        if presence is None:
            sets.append("#presence = if_not_exists(#presence, :offline)")
            values[":offline"] = _s("offline")
        else:
            sets.append("#presence = :presence")
            values[":presence"] = _s(presence)
        if capacity is None:
            sets.append("#capacity = if_not_exists(#capacity, :cap)")
            values[":cap"] = _n(DEFAULT_CAPACITY)
        else:
            sets.append("#capacity = :cap")
            values[":cap"] = _n(capacity)
        with _backend("set_agent_status"):
            response = self._db.update_item(
                TableName=self._config.agents_table,
                Key={"agentId": _s(agent_id)},
                UpdateExpression="SET " + ", ".join(sets),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return _from_item(AgentRecord, response["Attributes"])
