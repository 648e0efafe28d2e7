"""Chat from a terminal against a running oncechat (the local cloud by default).

    python -m client --user alice --role customer --new        # open a conversation and chat
    python -m client --user bob --role agent                   # answer whoever writes

Lines typed are sent to the current conversation (the one given, the new
one, or the one the last message came from). Incoming messages print as
``[conversation#seq] sender: body``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
from typing import Any

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client.protocol import ErrorFrame, connect


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


def open_conversation(rest: str, token: str) -> dict[str, Any]:
    """``POST /conversations``."""
    req = urllib.request.Request(f"{rest}/conversations", method="POST", data=b"{}",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


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
            print(f"[{m['conversationId'][:8]}#{m['seq']}] {m['senderId']}: {m['body']}", flush=True)
            await client.ack(m["conversationId"], m["seq"])

    shower = asyncio.create_task(show())
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.rstrip("\n")
            if not line:
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
        await client.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    try:
        asyncio.run(chat(parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
