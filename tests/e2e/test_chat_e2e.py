"""oncechat end to end: real WebSocket clients over sockets, the local cloud, moto server over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import websockets

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import ErrorFrame, connect
from tests.local_cloud import REPO_ROOT, LocalCloud


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(REPO_ROOT, "--sqs-retry-delay", "1") as running:
        yield running


def token(user, role="customer"):
    return mint_token(LOCAL_JWT_SECRET, user, role)


def rest(cloud, method, path, user=None, role="customer"):
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = f"Bearer {token(user, role)}"
    req = urllib.request.Request(cloud.rest_url + path, method=method, headers=headers,
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def processed(frames, cid):
    """The messages a client following the protocol's rule processes, in order."""
    last, out = 0, []
    for f in frames:
        if f.get("type") == "message" and f["conversationId"] == cid and f["seq"] == last + 1:
            out.append(f)
            last = f["seq"]
    return out


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def pair(cloud):
    """A fresh agent (online first) and customer, connected, in one active conversation.

    The assignment is the conversation's seq 1, an "assigned" system message
    (``conv["lastSeq"]`` after it); both clients have processed it on return.
    """
    agent_id, customer_id = uid("agent"), uid("cust")
    agent = await connect(cloud.websocket_url, token(agent_id, "agent"))
    await agent.resume()  # the connect is recorded once the handshake is done
    status, conv = rest(cloud, "POST", "/conversations", customer_id)
    assert status == 201, conv
    assert conv["lastSeq"] == 1
    customer = await connect(cloud.websocket_url, token(customer_id))
    cid = conv["conversationId"]
    for client in (agent, customer):
        await client.resume({cid: 0})  # the customer connected after it: a replay (live copies are dropped)
        [system] = await client.collect(cid, conv["lastSeq"])
        assert system == {"type": "message", "conversationId": cid, "seq": 1, "messageId": "system-1",
                          "senderId": "system", "senderRole": "system", "body": system["body"],
                          "sentAt": system["sentAt"], "event": "assigned", "status": "active",
                          "agentId": agent_id}
    return agent, agent_id, customer, customer_id, conv


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def test_customer_and_agent_chat_both_ways(cloud):
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid, s = conv["conversationId"], conv["lastSeq"]
        assert conv["status"] == "active" and conv["agentId"] == agent_id
        acc = await customer.send(cid, "my parcel is late")
        assert acc["seq"] == s + 1 and acc["duplicate"] is False
        got = await agent.collect(cid, s + 1)
        assert [(m["seq"], m["body"], m["senderId"]) for m in got] == [(s + 1, "my parcel is late", customer_id)]
        await agent.ack(cid, s + 1)
        acc = await agent.send(cid, "let me check")
        assert acc["seq"] == s + 2
        got = await customer.collect(cid, s + 2)
        assert [(m["seq"], m["senderRole"]) for m in got] == [(s + 2, "agent")]
        status, page = rest(cloud, "GET", f"/conversations/{cid}/messages", customer_id)
        assert status == 200 and [m["senderRole"] for m in page["messages"][:s]] == ["system"] * s
        assert [m["body"] for m in page["messages"][s:]] == ["my parcel is late", "let me check"]
        await agent.close()
        await customer.close()

    run(scenario())


def test_duplicate_send_gives_one_delivery_and_same_seq(cloud):
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid, s = conv["conversationId"], conv["lastSeq"]
        first = await customer.send(cid, "once", message_id="dup-1")
        again = await customer.send(cid, "once", message_id="dup-1")
        assert again["seq"] == first["seq"] == s + 1 and again["duplicate"] is True
        with pytest.raises(ErrorFrame) as info:
            await customer.send(cid, "twice?", message_id="dup-1")
        assert info.value.code == "conflict"
        nxt = await customer.send(cid, "next")
        assert nxt["seq"] == s + 2
        got = await agent_collect_all(agent, cid, s + 2)
        assert [m["seq"] for m in got] == [s + 1, s + 2]
        await agent.close()
        await customer.close()

    run(scenario())


async def agent_collect_all(client, cid, upto):
    """Process under the client rule; resume if the live stream missed anything."""
    try:
        return await client.collect(cid, upto, timeout=15)
    except TimeoutError:
        await client.resume({cid: client.last.get(cid, 0)})
        return await client.collect(cid, upto, timeout=60)


def test_vanished_recipient_gets_message_on_resume(cloud):
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid, s = conv["conversationId"], conv["lastSeq"]
        await customer.send(cid, "first")
        assert [m["seq"] for m in await agent.collect(cid, s + 1)] == [s + 1]
        await agent.ack(cid, s + 1)
        # the customer's network dies: no close frame
        customer.ws.transport.abort()
        await agent.send(cid, "are you there?")
        await agent.send(cid, "hello?")
        back = await connect(cloud.websocket_url, token(customer_id))
        resumed = await back.resume({cid: 0})
        assert resumed["conversations"][cid] == s + 3
        replay = processed(back.frames, cid)  # live copies may race the replay: the rule drops them
        assert [m["seq"] for m in replay] == list(range(1, s + 4))
        assert [m["senderRole"] for m in replay[:s]] == ["system"] * s
        assert [m["body"] for m in replay[s:]] == ["first", "are you there?", "hello?"]
        await agent.close()
        await back.close()

    run(scenario())


def test_message_sent_while_agent_offline_arrives_on_resume(cloud):
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid, s = conv["conversationId"], conv["lastSeq"]
        await customer.send(cid, "before")
        await agent.collect(cid, s + 1)
        await agent.ack(cid, s + 1)
        await wait_ack(cloud, agent_id, cid, s + 1)  # acks have no reply; one racing a close may be lost
        await agent.close()
        await customer.send(cid, "while you were away")
        agent2 = await connect(cloud.websocket_url, token(agent_id, "agent"))
        resumed = await agent2.resume()  # no cursors: from the stored ack cursor
        assert resumed["conversations"][cid] == s + 2
        replay = [f for f in agent2.frames if f.get("type") == "message"]
        assert {(m["seq"], m["body"]) for m in replay} == {(s + 2, "while you were away")}
        await agent2.close()
        await customer.close()

    run(scenario())


@pytest.mark.parametrize("tok", [None, "junk", "EXPIRED", "WRONGSECRET"])
def test_bad_token_gets_401(cloud, tok):
    if tok == "EXPIRED":
        tok = mint_token(LOCAL_JWT_SECRET, "u", "customer", now=time.time() - 7200)
    elif tok == "WRONGSECRET":
        tok = mint_token("not-the-local-secret-0123456789abcdef", "u", "customer")

    async def scenario():
        url = cloud.websocket_url + (f"?token={tok}" if tok else "")
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url)
        assert info.value.response.status_code == 401

    run(scenario())


def test_malformed_frame_gets_error_and_connection_keeps_working(cloud):
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid = conv["conversationId"]
        for raw, code in (("{oops", "bad_request"), ('{"action":"teleport"}', "bad_request"),
                          (json.dumps({"action": "ack", "conversationId": cid, "seq": "7"}), "bad_request"),
                          (json.dumps({"action": "send", "conversationId": cid, "messageId": "big",
                                       "body": "x" * 20000}), "payload_too_large")):
            await customer.send_raw(raw)
            if code == "payload_too_large":
                err = await wait_frame(customer, lambda f: f.get("messageId") == "big")
            else:
                err = await customer.next_error()
            assert err["type"] == "error" and err["code"] == code
        acc = await customer.send(cid, "still here")
        assert acc["seq"] == conv["lastSeq"] + 1
        await agent.close()
        await customer.close()

    run(scenario())


async def wait_ack(cloud, user, cid, seq, timeout=60):
    ddb = cloud.client("dynamodb")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = ddb.get_item(TableName="oncechat-local-participants", ConsistentRead=True,
                            Key={"userId": {"S": user}, "conversationId": {"S": cid}}).get("Item")
        if item and int(item["ackSeq"]["N"]) >= seq:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("ack not stored")


async def wait_frame(client, pred, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in client.frames:
            if pred(f):
                return f
        await asyncio.sleep(0.05)
    raise TimeoutError


def test_stale_connection_record_is_pruned_on_410(cloud):
    """A connection whose $disconnect never ran: the consumer's push gets 410 and removes it."""
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid = conv["conversationId"]
        ddb = cloud.client("dynamodb")
        stale = {
            "connectionId": {"S": "stale-conn-1="}, "userId": {"S": agent_id}, "role": {"S": "agent"},
            "connectedAt": {"S": "2026-01-01T00:00:00.000Z"},
            "domainName": {"S": f"127.0.0.1:{cloud.ws_port}"}, "stage": {"S": "api"},
            "expiresAt": {"N": str(int(time.time()) + 3600)}}
        ddb.put_item(TableName="oncechat-local-connections", Item=stale)
        ddb.update_item(TableName="oncechat-local-connections",  # and in the agent's list
                        Key={"connectionId": {"S": f"user#{agent_id}"}},
                        UpdateExpression="SET #c = :c", ExpressionAttributeNames={"#c": "c#stale-conn-1="},
                        ExpressionAttributeValues={":c": {"M": stale}})
        s = conv["lastSeq"]
        await customer.send(cid, "ping")
        assert [m["seq"] for m in await agent.collect(cid, s + 1)] == [s + 1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            item = ddb.get_item(TableName="oncechat-local-connections",
                                Key={"connectionId": {"S": "stale-conn-1="}}).get("Item")
            if item is None:
                break
            await asyncio.sleep(0.1)
        assert item is None
        listed = ddb.get_item(TableName="oncechat-local-connections",
                              Key={"connectionId": {"S": f"user#{agent_id}"}})["Item"]
        assert "c#stale-conn-1=" not in listed
        await agent.close()
        await customer.close()

    run(scenario())


def test_rest_errors_are_json(cloud):
    assert rest(cloud, "POST", "/conversations") == (401, {"code": "unauthorized", "message": "missing token"})
    status, body = rest(cloud, "POST", "/conversations", "agent-x", "agent")
    assert status == 403 and body["code"] == "forbidden"
    status, body = rest(cloud, "GET", "/conversations/nope/messages", "cust-x")
    assert status == 404 and body["code"] == "not_found"


def test_concurrent_senders_over_sockets_get_gapless_seqs(cloud):
    """Many clients racing in one conversation: distinct, gapless seqs, each message stored once."""
    async def scenario():
        agent, agent_id, customer, customer_id, conv = await pair(cloud)
        cid, s = conv["conversationId"], conv["lastSeq"]
        phones = [await connect(cloud.websocket_url, token(customer_id)) for _ in range(3)]
        senders = [customer, agent, *phones]

        async def burst(client, n, tag):
            return [await client.send(cid, f"{tag}-{i}", message_id=f"{tag}-{i}") for i in range(n)]

        # Every sender fires at once; two of them also race duplicates of each other's ids.
        results = await asyncio.gather(*(burst(c, 15, f"s{k}") for k, c in enumerate(senders)),
                                       burst(phones[0], 15, "s0"))
        accepted = [a for r in results for a in r]
        by_id = {}
        for a in accepted:
            by_id.setdefault(a["messageId"], set()).add(a["seq"])
        assert all(len(s) == 1 for s in by_id.values())  # a duplicate always gets the same seq
        seqs = sorted(next(iter(s)) for s in by_id.values())
        assert len(seqs) == len(set(seqs)) == 5 * 15
        # Stored: every seq from 1 to the last, each a message answered with it,
        # or a void (the seq a losing duplicate reserved); nothing twice.
        status, page = rest(cloud, "GET", f"/conversations/{cid}/messages?limit=100", customer_id)
        stored = page["messages"]
        while page["next"] is not None:
            status, page = rest(cloud, "GET", f"/conversations/{cid}/messages?limit=100&after={page['next']}",
                                customer_id)
            stored += page["messages"]
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
        assert [m["seq"] for m in stored[s:] if not m.get("void")] == seqs
        assert [m["senderRole"] for m in stored[:s]] == ["system"] * s
        for c in senders:
            await c.close()

    run(scenario())
