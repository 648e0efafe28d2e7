"""`GET /conversations/{id}` tells a waiting customer their place in the queue (the widget shows it)."""

from __future__ import annotations

from chalicelib.models import Principal
from tests.unit.test_lifecycle import make_chat


def customer(i: int) -> Principal:
    return Principal(user_id=f"cust-{i}", role="customer")


def test_a_waiting_conversation_knows_its_place_and_moves_up():
    chat = make_chat()
    convs = [chat.desk.open_conversation(customer(i))[0].conversation_id for i in range(3)]
    assert [chat.desk.get_conversation(customer(i), c)["position"] for i, c in enumerate(convs)] == [1, 2, 3]
    chat.desk.close(customer(0), convs[0])
    assert chat.desk.get_conversation(customer(2), convs[2])["position"] == 2
    assert "position" not in chat.desk.get_conversation(customer(0), convs[0])  # closed: no place in the queue
