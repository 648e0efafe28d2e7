"""JSON logs with correlation ids and EMF metrics, through app.py's middleware (moto in-process)."""

from __future__ import annotations

import io
import json
import time

import pytest

from chalicelib.auth import mint_token
from tests.functional.conftest import SECRET
from tests.functional.test_handlers import chat, send  # noqa: F401

BODY = "TOP-SECRET-BODY-4711"


@pytest.fixture
def observed(chat, monkeypatch, capsys):
    """A fresh Observability writing its logs to a buffer; EMF goes to stdout (capsys)."""
    from chalicelib import observability

    stream = io.StringIO()
    cloud = chat[0]
    monkeypatch.setattr(observability, "_current",
                        observability.Observability(cloud.mod.handlers.services.config, stream=stream))
    capsys.readouterr()

    def lines():
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    def emf():
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]

    yield chat, lines, emf, stream
    observability._current = None


def metric_values(blobs, name):
    values = []
    for blob in blobs:
        if name in blob:
            values += blob[name] if isinstance(blob[name], list) else [blob[name]]
            [directive] = blob["_aws"]["CloudWatchMetrics"]
            assert directive["Namespace"] == "oncechat"
            assert sorted(directive["Dimensions"][0]) == ["service", "stage"]
            assert blob["stage"] == "test"
    return values


def test_logs_are_json_with_correlation_ids_and_never_a_token_or_body(observed):
    (cloud, customer, agent, cid), lines, emf, stream = observed
    token = mint_token(SECRET, "cust-1", "customer")
    assert send(cloud, customer, cid, "m-obs", BODY)["type"] == "accepted"
    cloud.connect(None, token=token)
    cloud.rest("GET", f"/conversations/{cid}/messages", "cust-1")
    logged = lines()
    handled = [entry for entry in logged if entry["message"] == "handled"]
    [frame] = [h for h in handled if h.get("action") == "send"]
    assert frame["connection_id"] == customer and frame["conversation_id"] == cid
    assert frame["message_id"] == "m-obs" and frame["request_id"] and frame["level"] == "INFO"
    assert frame["route"] == "$default" and frame["outcome"] == "ok" and "duration_ms" in frame
    [rest] = [h for h in handled if h.get("route", "").startswith("GET")]
    assert rest["conversation_id"] == cid and rest["outcome"] == "200"
    assert [h for h in handled if h.get("route") == "$connect"]
    text = stream.getvalue()
    assert BODY not in text and token not in text and "Bearer" not in text


def test_metrics_accepted_duplicates_pushes_latency_and_410(observed):
    (cloud, customer, agent, cid), lines, emf, stream = observed
    send(cloud, customer, cid, "m1", BODY)
    send(cloud, customer, cid, "m1", BODY)
    blobs = emf()
    assert metric_values(blobs, "Accepted") == [1] and metric_values(blobs, "Duplicates") == [1]
    assert sum(metric_values(blobs, "Enqueued")) >= 1
    cloud.consume()
    blobs += emf()  # pushed by the sender's fast path, or by the consumer
    assert sum(metric_values(blobs, "Pushes")) >= 1
    latency = metric_values(blobs, "DeliveryLatency")
    assert latency and all(0 <= v < 600_000 for v in latency)
    assert BODY not in json.dumps(blobs)
    cloud.pushes.gone.add(agent)
    send(cloud, customer, cid, "m2", BODY)
    cloud.consume()
    assert sum(metric_values(emf(), "Gone410")) >= 1


def test_sweep_reports_enqueues_and_pending_past_the_bound(observed, monkeypatch):
    (cloud, customer, agent, cid), lines, emf, stream = observed
    from tests.functional.test_least_privilege import SWEEP_EVENT

    chat_service = cloud.mod.handlers.services
    monkeypatch.setattr(chat_service.fanout, "push_now", lambda *a: None)  # no fast path: queue it all
    monkeypatch.setattr(chat_service.queue, "enqueue", lambda d: (_ for _ in ()).throw(
        RuntimeError("queue down")))
    monkeypatch.setattr(chat_service.queue, "enqueue_many", lambda ds: (_ for _ in ()).throw(
        RuntimeError("queue down")))
    assert send(cloud, customer, cid, "stuck", BODY)["code"] == "internal"
    cloud.mod.sweep(SWEEP_EVENT, None)
    blobs = emf()
    assert metric_values(blobs, "PendingPastBound") == [0]
    cloud.clock.offset_ms += 10 * 60_000  # ten minutes later, still down
    with pytest.raises(RuntimeError):
        cloud.mod.sweep(SWEEP_EVENT, None)
    # the conversation of the stuck message: no sweep covered it
    [pending] = metric_values(emf(), "PendingPastBound")
    assert pending >= 1
    assert any(e["message"] == "conversations unswept past the sweep bound" and e["level"] == "ERROR"
               for e in lines())
    monkeypatch.undo()


def test_local_stage_logs_readable_text(monkeypatch):
    from chalicelib.config import Config
    from chalicelib.observability import readable

    local = Config.from_env({"STAGE": "local"})
    assert (local.log_format, local.metrics_enabled) == ("text", False)
    deployed = Config.from_env({"STAGE": "prod", "JWT_SECRET": "x" * 40})
    assert (deployed.log_format, deployed.metrics_enabled, deployed.log_level) == ("json", True, "INFO")
    line = readable({"timestamp": "2026-11-30 12:00:00,000", "level": "INFO", "message": "handled",
                     "connection_id": "c1", "conversation_id": "k", "outcome": "ok",
                     "duration_ms": 3.2, "service": "oncechat"})
    assert line == ("2026-11-30 12:00:00,000 INFO handled  [connection_id=c1 conversation_id=k "
                    "outcome=ok duration_ms=3.2]")
    time.sleep(0)
