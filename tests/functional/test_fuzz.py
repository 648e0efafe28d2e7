"""Seeded fuzzing of app.py's real handlers (moto in-process).

1,200 malformed frames and 360 malformed REST requests, each built from a
valid one by a mutation that makes it invalid whatever the random choices.
Every frame must be answered by exactly one ``bad_request`` (or
``payload_too_large``) error frame, every request by a 4xx JSON body with
a code; nothing is stored; the connection keeps working; nothing is
logged at ERROR or with a traceback.
"""

from __future__ import annotations

import json
import logging
import random


from tests.functional.test_handlers import chat, send, table_items  # noqa: F401

SEED = 20261130
FRAMES = 1200
REQUESTS = 360

BAD_IDS = ["", " ", "a b", "a#b", "a.b", "ü", "x" * 129, "\ud800", "a\udfffb", "😀", "a/b", "-\n"]
BAD_SEQS = [-1, 2**53, 10**40, 1.5, "1", True, None, [], {}, "NaN"]
WRONG_TYPES = [None, 1, -7, 1.25, True, [], {}, ["x"], {"a": 1}]


def deep(n: int, rng: random.Random) -> str:
    opens = "".join(rng.choice("[{") for _ in range(n))
    inner = "1"
    for c in reversed(opens):
        inner = f"[{inner}]" if c == "[" else f'{{"k":{inner}}}'
    return inner


def valid_frames(cid: str, rng: random.Random) -> dict:
    mid = f"m{rng.randrange(10**6)}"
    return rng.choice([
        {"action": "send", "conversationId": cid, "messageId": mid, "body": "hello"},
        {"action": "ack", "conversationId": cid, "seq": 1},
        {"action": "read", "conversationId": cid, "seq": 1},
        {"action": "typing", "conversationId": cid},
        {"action": "resume", "cursors": {cid: 1}},
    ])


def malformed_frame(cid: str, rng: random.Random, max_body: int) -> str:
    frame = valid_frames(cid, rng)
    fields = [k for k in frame if k != "action"]
    kind = rng.randrange(14)
    if kind == 0:  # a required field removed (resume's cursors are optional)
        required = [k for k in fields if k != "cursors"]
        if required:
            del frame[rng.choice(required)]
        else:
            del frame["action"]
    elif kind == 1:  # a field of the wrong type
        key = rng.choice(fields)
        frame[key] = rng.choice([v for v in WRONG_TYPES if not isinstance(v, type(frame[key]))
                                 or isinstance(v, bool)])
    elif kind == 2:  # an id that is not an id
        if "conversationId" in frame:
            frame["conversationId"] = rng.choice(BAD_IDS)
        else:
            frame["cursors"] = {rng.choice(BAD_IDS): 1}
    elif kind == 3:  # a seq out of range or of the wrong type
        if "seq" in frame:
            frame["seq"] = rng.choice(BAD_SEQS)
        elif "cursors" in frame:
            frame["cursors"] = {cid: rng.choice(BAD_SEQS)}
        else:
            frame["action"] = rng.choice(["Send", "SEND", "", "fly", "ack ", None, 1, ["send"]])
    elif kind == 4:  # an unknown action
        frame["action"] = rng.choice(["Send", "SEND", "", "fly", "ack ", None, 1, ["send"], "$default"])
    elif kind == 5:  # lone surrogates anywhere
        key = rng.choice(list(frame))
        frame[key if key != "cursors" else "cursors"] = rng.choice(["\ud800", "x\udbff", "\udc00y"])
    elif kind == 6:  # nested too deep, in an ignored field
        text = json.dumps(frame)
        return text[:-1] + ', "extra": ' + deep(rng.choice([17, 40, 500, 1000, 3000]), rng) + "}"
    elif kind == 7:  # not an object
        return json.dumps(rng.choice([[frame], "send", 1, None, True, [], 1.5]))
    elif kind == 8:  # truncated JSON
        text = json.dumps(frame)
        return text[: rng.randrange(1, len(text) - 1)]
    elif kind == 9:  # garbage text
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(1, 60)))
    elif kind == 10:  # a send with a bad body
        frame = {"action": "send", "conversationId": cid, "messageId": "m1",
                 "body": rng.choice(["", 5, None, ["x"], {"t": "x"}, "x" * (max_body + 1),
                                     "é" * (max_body // 2 + 1), "a\ud834"])}
    elif kind == 11:  # too many cursors
        frame = {"action": "resume", "cursors": {f"c{i}": 0 for i in range(101)}}
    elif kind == 12:  # JSON syntax errors
        return rng.choice(["{", "}", "{'action':'ack'}", '{"action":"ack",}', "NaN", "",
                           '{"action":"ack" "seq":1}', "\x00", "[1,]", '{"a":1}{"b":2}'])
    else:  # duplicate keys whose last value is invalid
        text = json.dumps(frame)
        return text[:-1] + ', "action": "nope"}'
    return json.dumps(frame, ensure_ascii=rng.random() < 0.5)


def test_fuzz_frames(chat, monkeypatch, caplog):
    cloud, customer, agent, cid = chat
    from chalicelib.handlers import Handlers

    for var in ("RATE_CONNECTION_FRAMES", "RATE_CONNECTION_ACKS", "RATE_CONNECTION_READS",
                "RATE_CONNECTION_RESUMES", "RATE_CONNECTION_TYPING"):
        monkeypatch.setenv(var, "100000")
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    max_body = cloud.mod.handlers.services.config.max_body_bytes
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    before = {t: len(table_items(t)) for t in ("messages", "idempotency", "participants")}
    codes: dict[str, int] = {}
    for i in range(FRAMES):
        raw = malformed_frame(cid, rng, max_body)
        count = len(cloud.pushes.of(customer))
        reply = cloud.frame(customer, raw)
        assert len(cloud.pushes.of(customer)) == count + 1, (i, raw[:200])
        assert reply["type"] == "error" and reply["code"] in ("bad_request", "payload_too_large"), (
            i, raw[:200], reply)
        codes[reply["code"]] = codes.get(reply["code"], 0) + 1
        if i % 200 == 0:
            assert send(cloud, customer, cid, f"ok{i}", "still here")["type"] == "accepted"
            before["messages"] += 1
            before["idempotency"] += 1
    assert {t: len(table_items(t)) for t in before} == before
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad[:5]]
    assert codes["bad_request"] > FRAMES * 0.8


def malformed_request(cid: str, rng: random.Random) -> tuple[str, str, dict | None, str | None]:
    """(method, path, headers, body) of a request that must be refused with a 4xx."""
    kind = rng.randrange(9)
    if kind == 0:
        body = rng.choice(["{", "[]", "1", '"x"', "null", '{"status":"busy"}', '{"capacity":-1}',
                           '{"capacity":101}', '{"capacity":"3"}', '{"status":"online","x":1}',
                           '{"capacity":1.5}', "{}", '{"status":"\\ud800"}', '{"status":true}',
                           deep(rng.choice([20, 999, 1000, 2500]), rng)])
        return "PUT", "/agents/me/status", None, body
    if kind == 1:
        body = rng.choice(["{", "[]", "{}", '{"agentId":""}', '{"agentId":7}', '{"agentId":"a#b"}',
                           '{"agentId":"' + "x" * 129 + '"}', '{"agentId":"\\udc00"}',
                           deep(rng.choice([17, 1000]), rng)])
        return "POST", f"/conversations/{cid}/transfer", None, body
    if kind == 2:
        bad = rng.choice(["a.b", "x" * 129, "a,b", "~", "a$b", "a%20b", "a!", "a'b", "%E2%82%AC"])
        suffix = rng.choice(["", "/messages", "/close", "/transfer"])
        method = "POST" if suffix in ("/close", "/transfer") else "GET"
        return method, f"/conversations/{bad}{suffix}", None, '{"agentId":"x"}'
    if kind == 3:
        query = rng.choice([
            f"after={rng.choice(['-1', 'x', '1e3', '9007199254740992', '1' * 40, '', '%201'])}",
            f"before={rng.choice(['0', '-5', 'y', '9007199254740992', '2.5'])}",
            f"limit={rng.choice(['0', '101', '-1', 'many', '1.0'])}",
            "after=1&before=3"])
        return "GET", f"/conversations/{cid}/messages?{query}", None, None
    if kind == 4:
        query = rng.choice(["status=open", "status=", "limit=0", "limit=1000", "limit=x"])
        return "GET", f"/conversations?{query}", None, None
    if kind == 5:
        return "GET", f"/queue?limit={rng.choice(['0', '101', 'x', '-3'])}", None, None
    if kind == 6:  # bad credentials on any route
        auth = rng.choice(["", "Bearer", "Bearer ", "Basic abc", "Bearer x.y.z", "bearer " + "a" * 9000,
                           "Token abc"])
        path = rng.choice(["/conversations", f"/conversations/{cid}", "/agents", "/queue"])
        return "GET", path, {"Authorization": auth}, None
    if kind == 7:
        key = rng.choice(["a b", "x" * 129, "ü", "a/b", "#", "a,b"])
        return "POST", "/conversations", {"Idempotency-Key": key}, None
    return "GET", "/agents", None, None  # a customer asking for the agents: 403


def test_fuzz_requests(chat, monkeypatch, caplog):
    cloud, customer, agent, cid = chat
    from chalicelib.handlers import Handlers

    monkeypatch.setenv("RATE_USER_REQUESTS", "100000")
    monkeypatch.setattr(cloud.mod, "handlers", Handlers(cloud.mod.app))
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED + 1)
    before = {t: table_items(t) for t in ("conversations", "messages", "agents", "idempotency")}
    statuses: dict[int, int] = {}
    for i in range(REQUESTS):
        method, path, headers, body = malformed_request(cid, rng)
        user, role = ("cust-1", "customer") if path in ("/agents", "/conversations") else (
            "agent-1", "agent")
        if headers and "Authorization" in headers:
            user = None
        status, resp = cloud.rest(method, path, user, role, headers=headers, body=body)
        assert 400 <= status < 500, (i, method, path, body and body[:100], status, resp)
        assert isinstance(resp, dict) and resp.get("code") and resp.get("message"), (i, path, resp)
        statuses[status] = statuses.get(status, 0) + 1
    assert {t: table_items(t) for t in before} == before
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad[:5]]
    assert statuses.get(400, 0) > REQUESTS * 0.6
    status, _ = cloud.rest("GET", f"/conversations/{cid}/messages", "cust-1")
    assert status == 200
