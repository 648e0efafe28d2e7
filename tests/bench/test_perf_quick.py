"""``make bench ARGS=--quick`` through the real path: the metered local cloud, the proxy, all three apps.

Checks what the figures must be whatever the server code does: every
message arrives, the baselines cost exactly what their code does per
message (wschat: one GetItem and one Query, 0.5 RRU each, one push;
relay: no AWS request at all), and the per-operation breakdown adds up to
the totals. No assertion depends on how fast anything is.
"""

import json

import pytest

from bench import perf


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "report.json"
    assert perf.main(["--quick", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_every_app_delivered_every_message(result):
    for app, figures in result["apps"].items():
        paced = figures["paced"]
        assert paced["complete"], app
        assert paced["delivered"] == paced["expected"] == 2 * result["params"]["messages"], app
        loop = figures["closed_loop"]
        assert loop["delivered"] == loop["conversations"] * loop["rounds"], app
        assert loop["timeouts"] == 0, app


def test_wschat_costs_exactly_one_get_one_query_and_one_push_per_message(result):
    paced = result["apps"]["wschat"]["paced"]
    assert paced["aws_requests"] == 2.0
    assert paced["rru"] == 1.0  # two eventually consistent reads of items under 4 KB
    assert paced["wru"] == 0.0
    assert paced["frames_in"] == paced["pushes"] == paced["management_calls"] == 1.0
    assert paced["lambda_invocations"] == 1.0
    ops = {k.split(" ", 1)[1]: v["requests"] for k, v in paced["by_operation"].items()}
    assert ops == {"dynamodb:GetItem [wschat-local-connections]": 1.0,
                   "dynamodb:Query [wschat-local-connections.byRoom]": 1.0}


def test_relay_makes_no_aws_request(result):
    paced = result["apps"]["relay"]["paced"]
    assert paced["aws_requests"] == paced["wru"] == paced["rru"] == 0.0
    assert paced["frames_in"] == paced["pushes"] == 1.0
    assert paced["cost_per_million_total"] >= paced["floor_per_million"]


def test_oncechat_breakdowns_add_up_to_the_totals(result):
    paced = result["apps"]["oncechat"]["paced"]
    phases = paced["by_phase"]
    assert sum(p["requests"] for p in phases.values()) == pytest.approx(paced["aws_requests"], abs=0.01)
    assert sum(p["wru"] for p in phases.values()) == pytest.approx(paced["wru"], abs=0.01)
    assert sum(o["requests"] for o in paced["by_operation"].values()) == pytest.approx(paced["aws_requests"], abs=0.01)
    assert phases["send"]["requests"] > 0
    assert paced["cost_per_million_total"] == pytest.approx(sum(paced["cost_per_million"].values()), abs=0.02)


def test_oncechat_burst_and_resumes_complete(result):
    burst = result["apps"]["oncechat"]["burst"]
    assert burst["delivered"] == burst["messages"] and burst["drained"]
    assert burst["append_writes"] >= burst["messages"]  # at least one committed append per message
    for r in result["apps"]["oncechat"]["resume"]:
        assert r["answered"], r
        assert r["aws_requests"] > 0


def test_the_table_has_every_figure_of_the_issue(result):
    figures = " | ".join(r["figure"] for r in result["table"])
    for needle in ("AWS requests / delivered msg", "WRU", "RRU", "cost $ / million", "latency p50", "latency p99",
                   "msgs/s", "burst", "resume", "cold import"):
        assert needle in figures
    assert result["imports"]["oncechat_ratio"] > 0


def test_oncechat_replies_by_route_response_and_they_are_billed_as_messages_out(result):
    paced = result["apps"]["oncechat"]["paced"]
    # Every accepted frame went back as the $default route's response (two-way
    # route): no management API call for it, and each billed as a message sent.
    answered = paced["raw"]["cloud"]["route_response_types"]
    assert answered.get("accepted", 0) >= result["params"]["messages"] * 2
    assert "accepted" not in paced["raw"]["cloud"]["push_types"]
    assert paced["route_responses"] >= 1.0
    replies = paced["raw"]["cloud"]["route_responses"]
    pushes = paced["raw"]["cloud"]["pushes"]
    # API Gateway messages = frames in + pushes + route responses, in 32 KB units.
    from bench.prices import PRICES

    units = sum(v["units"] for v in paced["raw"]["cloud"]["frames_in"].values())
    units += pushes["units"] + replies["units"]
    assert paced["cost_per_million"]["apigw_messages"] == pytest.approx(
        units * PRICES["apigw_ws_message"].each / paced["delivered"] * 1_000_000, abs=0.01)
