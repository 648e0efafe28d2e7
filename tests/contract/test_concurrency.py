"""The races the Storage contract settles, run with real threads against every implementation.

DynamoStorage runs against a serialized moto server here: moto's DynamoDB is
not safe under concurrent requests (see tests/contract/cloud.py and
test_moto_threaded_server_loses_transactions_under_concurrency below).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from chalicelib.models import Principal
from chalicelib.storage.base import Storage

from .records import NOW_EPOCH, connection, conversation, idem_for, message, store_message

THREADS = 8
APPENDS_PER_THREAD = 25


def run_together(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` for i in range(n) on n threads released at the same moment."""
    start = threading.Barrier(n)

    def go(i: int) -> object:
        start.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


def send(storage: Storage, conversation_id: str, sender: str, message_id: str) -> int:
    """The service's send: reserve the next seq (never retried), store the message there."""
    conv = storage.reserve_seq(conversation_id, Principal(user_id="cust1", role="customer"),
                               NOW_EPOCH * 1000)
    msg = message(conv.last_seq, conversation_id, message_id=message_id, sender_id=sender)
    store_message(storage, msg, idem_for(msg), NOW_EPOCH)
    return msg.seq


def test_concurrent_appends_number_messages_gapless_and_unique(concurrent_storage: Storage) -> None:
    storage = concurrent_storage
    storage.create_conversation(conversation("c1"))

    def sender(worker: int) -> list[int]:
        return [
            send(storage, "c1", f"user{worker}", f"m{worker}-{i}") for i in range(APPENDS_PER_THREAD)
        ]

    won = [seq for seqs in run_together(THREADS, sender) for seq in seqs]  # type: ignore[union-attr]
    total = THREADS * APPENDS_PER_THREAD
    assert sorted(won) == list(range(1, total + 1))
    stored = storage.messages_after("c1", 0, total + 10)
    assert [m.seq for m in stored] == list(range(1, total + 1))
    assert len({(m.sender_id, m.message_id) for m in stored}) == total
    conv = storage.get_conversation("c1")
    assert conv is not None and conv.last_seq == total
    # every stored message is the one its idempotency record points to
    for m in stored:
        idem = storage.get_idempotency(m.sender_id, "c1", m.message_id, NOW_EPOCH)
        assert idem is not None and idem.seq == m.seq


def test_concurrent_deletes_hand_the_connection_record_to_exactly_one_caller(
    concurrent_storage: Storage,
) -> None:
    storage = concurrent_storage
    for n in range(5):
        storage.put_connection(connection(f"conn-{n}"))
        results = run_together(THREADS, lambda _i, n=n: storage.delete_connection(f"conn-{n}"))
        assert [r for r in results if r is not None] == [connection(f"conn-{n}")]
