"""Chat from a terminal against a running oncechat (the local cloud by default).

    python -m client --user alice --role customer --new        # open a conversation and chat
    python -m client --user bob --role agent                   # answer whoever writes

Lines typed are sent to the current conversation (the one given, the new
one, or the one the last message came from). Incoming messages print as
``[conversation#seq] sender: body``; lifecycle events, typing and read
receipts print as ``* ...`` lines. Commands:

    /close                      close the current conversation
    /transfer AGENT             hand it to another agent (agents)
    /status online|away|offline [CAPACITY]   presence and capacity (agents)
    /queue                      the waiting queue (agents)
    /typing                     tell the others you are typing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client.protocol import ErrorFrame, connect
from client.sdk import request_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", required=True, help="user id (the token's sub)")
    p.add_argument("--role", choices=("customer", "agent"), default="customer")
    p.add_argument("--token", help="a token; by default one is signed with the local stage's secret")
    p.add_argument("--ws", default="ws://127.0.0.1:8001/api", help="WebSocket URL")
    p.add_argument("--rest", default="http://127.0.0.1:8000", help="REST base URL")
    p.add_argument("--conversation", help="conversation id to write to")
    p.add_argument("--new", action="store_true", help="open a new conversation first (customers)")
    return p.parse_args(argv)


def call(rest: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One REST call; the status and the JSON answer (errors included)."""
    return request_json(method, f"{rest}{path}", token, body, {})


def open_conversation(rest: str, token: str) -> dict[str, Any]:
    """``POST /conversations``."""
    status, body = call(rest, token, "POST", "/conversations")
    if status >= 400:
        raise SystemExit(f"cannot open a conversation: {body.get('code')}: {body.get('message')}")
    conversation: dict[str, Any] = body
    return conversation


def command(args: argparse.Namespace, token: str, current: str | None, line: str) -> str:
    """Run a ``/command``; the line to print."""
    name, *rest = line[1:].split()
    if name == "status" and rest:
        body: dict[str, Any] = {"status": rest[0]}
        if len(rest) > 1:
            body["capacity"] = int(rest[1]) if rest[1].isdigit() else rest[1]
        status, answer = call(args.rest, token, "PUT", "/agents/me/status", body)
    elif name == "queue":
        status, answer = call(args.rest, token, "GET", "/queue")
        if status == 200:
            return "* queue: " + (", ".join(
                f"{c['position']}. {c['conversationId'][:8]} ({c['customerId']})"
                for c in answer["conversations"]) or "empty")
    elif name in ("close", "transfer") and current is None:
        return "* no current conversation"
    elif name == "close":
        status, answer = call(args.rest, token, "POST", f"/conversations/{current}/close")
    elif name == "transfer" and rest:
        status, answer = call(args.rest, token, "POST", f"/conversations/{current}/transfer",
                              {"agentId": rest[0]})
    else:
        return f"* unknown command {line!r}"
    if status >= 400:
        return f"* error {answer.get('code')}: {answer.get('message')}"
    return f"* ok: {json.dumps(answer, separators=(',', ':'))}"


def describe(event: dict[str, Any]) -> str:
    """A ``typing``, ``read`` or ``conversation`` frame as a line."""
    cid = event["conversationId"][:8]
    if event["type"] == "typing":
        return f"* [{cid}] {event['userId']} is typing"
    if event["type"] == "read":
        return f"* [{cid}] {event['userId']} read up to #{event['seq']}"
    return f"* [{cid}] {event['event']}: now {event['status']}, agent {event['agentId']}"


async def chat(args: argparse.Namespace) -> None:
    token = args.token or mint_token(LOCAL_JWT_SECRET, args.user, args.role, ttl_seconds=8 * 3600)
    current = args.conversation
    if args.new:
        conv = open_conversation(args.rest, token)
        current = conv["conversationId"]
        print(f"* conversation {current} ({conv['status']}, agent {conv['agentId']})", flush=True)
    client = await connect(args.ws, token)
    resumed = await client.resume({current: 0} if current else {})
    print(f"* connected; conversations {resumed['conversations']}", flush=True)

    async def show() -> None:
        nonlocal current
        async for m in client.messages(idle_timeout=10**9):
            current = current or m["conversationId"]
            if args.role == "agent":
                current = m["conversationId"]
            if m["senderRole"] == "system":
                print(f"[{m['conversationId'][:8]}#{m['seq']}] * {m['body']}", flush=True)
            else:
                print(f"[{m['conversationId'][:8]}#{m['seq']}] {m['senderId']}: {m['body']}", flush=True)
            await client.ack(m["conversationId"], m["seq"])
            await client.read(m["conversationId"], m["seq"])

    async def events() -> None:
        while True:
            print(describe(await client.next_event(timeout=10**9)), flush=True)

    shower = asyncio.create_task(show())
    watcher = asyncio.create_task(events())
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("/"):
                if line.strip() == "/typing" and current:
                    await client.typing(current)
                    continue
                text = await loop.run_in_executor(None, command, args, token, current, line)
                print(text, flush=True)
                continue
            if current is None:
                print("* no conversation yet: wait for a message or pass --conversation", flush=True)
                continue
            try:
                acc = await client.send(current, line)
                print(f"  (#{acc['seq']} accepted)", flush=True)
            except ErrorFrame as err:
                print(f"* error {err.code}: {err.frame.get('message')}", flush=True)
    finally:
        shower.cancel()
        watcher.cancel()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    try:
        asyncio.run(chat(parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
