"""A customer and an agent chat through the SDK, each with its own client.

    python -m client.examples.chat_pair                       # against `make run`
    python -m client.examples.chat_pair --ws ws://127.0.0.1:8001/api --rest http://127.0.0.1:8000

The agent comes online, the customer opens a conversation and asks three
questions, the agent answers each one. Both print their transcript as
their ``messages()`` iterator yields it: every message once, in seq order,
their own included. Tokens are signed with the local stage's development
secret; a real app gets them from its identity provider.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from chalicelib.auth import mint_token
from chalicelib.config import LOCAL_JWT_SECRET
from client import Message, OnceChatClient, SqliteStore

QUESTIONS = ["my parcel is late", "order 4711", "thanks!"]


def line(who: str, m: Message) -> str:
    """One transcript line."""
    return f"{who} sees [{m.seq}] {m.sender_role} {m.sender_id}: {m.body}"


async def agent_side(agent: OnceChatClient, out: list[str]) -> None:
    """Answer every customer message; stop after the last question is answered."""
    answered = 0
    async for m in agent.messages():
        out.append(line("agent", m))
        if m.sender_role == "customer":
            agent.send(m.conversation_id, f"re: {m.body}")  # the answer shows up in this same loop
        elif m.sender_id == agent.user_id:
            answered += 1
            if answered == len(QUESTIONS):
                return


async def main(ws_url: str, rest_url: str, store_dir: Path) -> list[str]:
    """Run the conversation; return both transcripts."""
    agent_id, customer_id = f"agent-{uuid.uuid4().hex[:6]}", f"cust-{uuid.uuid4().hex[:6]}"
    out: list[str] = []
    agent = OnceChatClient(ws_url, lambda: mint_token(LOCAL_JWT_SECRET, agent_id, "agent"))
    customer = OnceChatClient(ws_url, lambda: mint_token(LOCAL_JWT_SECRET, customer_id, "customer"),
                              rest_url=rest_url, store=SqliteStore(store_dir / f"{customer_id}.db"))
    async with agent, customer:  # connect() waits until the agent is online
        answering = asyncio.create_task(agent_side(agent, out))
        conv = await customer.open_conversation()
        print(f"conversation {conv.conversation_id} is {conv.status} with {conv.agent_id}")
        for question in QUESTIONS:
            accepted = await customer.send(conv.conversation_id, question)
            print(f"customer's {question!r} stored as seq {accepted.seq}")
        async for m in customer.messages():
            out.append(line("customer", m))
            # after the system messages already there (the assignment), the questions and answers
            if m.seq == conv.last_seq + 2 * len(QUESTIONS):
                break
        await answering
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws", default="ws://127.0.0.1:8001/api")
    parser.add_argument("--rest", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        transcript = asyncio.run(asyncio.wait_for(main(args.ws, args.rest, Path(tmp)), 60))
    print("\n".join(transcript))
    sys.exit(0)
