"""bench.scale counts real AWS requests; these pin the costs that must not grow."""

from __future__ import annotations

import pytest

from bench import scale


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    for key, value in {"AWS_DEFAULT_REGION": scale.REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def test_a_send_and_its_delivery_cost_the_same_whatever_the_history():
    row = scale._row("send", 1, 6, scale.send_and_deliver_after_messages)
    small, large = row["at_small"]["by_operation"], row["at_large"]["by_operation"]
    assert small == large
    # reserve, claim, store, the recipients' connections, the push; nothing queued
    assert small == {"dynamodb:UpdateItem": 1, "dynamodb:PutItem": 2, "dynamodb:BatchGetItem": 1,
                     "push": 1}


def test_a_resume_without_cursors_reads_no_closed_history():
    row = scale._row("resume", 1, 4, scale.resume_after_closed_memberships)
    assert row["at_small"]["requests"] == row["at_large"]["requests"] <= 4


def test_more_connections_mean_more_pushes_not_more_reads():
    row = scale._row("connections", 1, 3, scale.deliver_to_connections)
    assert row["at_small"]["requests"] == row["at_large"]["requests"]
    assert (row["at_small"]["pushes"], row["at_large"]["pushes"]) == (1, 3)
