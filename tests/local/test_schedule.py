"""Schedule expressions: rate() and EventBridge's six-field cron()."""

from __future__ import annotations

import threading
from datetime import datetime, UTC

import pytest
from chalice.app import Cron, Rate

from infra.local.handlers import LambdaFunction
from infra.local.schedule import (
    CronSchedule,
    ScheduleRunner,
    UnsupportedScheduleError,
    expression_of,
    rate_seconds,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    "expression, seconds",
    [("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(2 hours)", 7200), ("rate(1 day)", 86400)],
)
def test_rate_periods(expression, seconds):
    assert rate_seconds(expression) == seconds


def test_chalice_expression_objects_become_strings():
    assert expression_of(Rate(5, unit=Rate.MINUTES)) == "rate(5 minutes)"
    assert expression_of(Cron(0, 18, "?", "*", "MON-FRI", "*")) == "cron(0 18 ? * MON-FRI *)"
    assert expression_of("rate(1 day)") == "rate(1 day)"


def test_cron_steps_and_weekday_ranges():
    cron = CronSchedule.parse("cron(0/15 * ? * MON-FRI *)")
    # Saturday 2024-06-01 10:07 -> Monday 00:00
    assert cron.next_after(utc(2024, 6, 1, 10, 7)) == utc(2024, 6, 3, 0, 0)
    assert cron.next_after(utc(2024, 6, 3, 0, 0)) == utc(2024, 6, 3, 0, 15)


def test_cron_lists_months_and_years():
    cron = CronSchedule.parse("cron(30 12 1 JAN,JUL ? 2030)")
    assert cron.next_after(utc(2024, 6, 1)) == utc(2030, 1, 1, 12, 30)
    assert cron.next_after(utc(2030, 1, 1, 12, 30)) == utc(2030, 7, 1, 12, 30)


def test_cron_hourly():
    assert CronSchedule.parse("cron(5 * * * ? *)").next_after(utc(2024, 6, 1, 0, 5)) == utc(2024, 6, 1, 1, 5)


@pytest.mark.parametrize("expression", ["cron(0 12 L * ? *)", "cron(0 12 ? * 6L *)", "cron(0 12 ? * 2#1 *)", "cron(0 12 15W * ? *)"])
def test_cron_l_w_and_hash_are_reported_unsupported(expression):
    with pytest.raises(UnsupportedScheduleError):
        CronSchedule.parse(expression)


def test_cron_needs_six_fields():
    with pytest.raises(ValueError):
        CronSchedule.parse("cron(* * * * *)")


def test_runner_fires_faster_with_speed():
    fired = threading.Event()
    calls: list[dict] = []

    def handler(event, context):
        calls.append(event)
        if len(calls) >= 2:
            fired.set()

    runner = ScheduleRunner(LambdaFunction("f", handler), "rate(1 minute)", "rule", speed=120)
    runner.start()
    try:
        assert fired.wait(60)
    finally:
        runner.stop()
    assert calls[0]["detail-type"] == "Scheduled Event"
