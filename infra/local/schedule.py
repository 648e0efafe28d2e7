"""Runner of ``@app.schedule`` handlers: EventBridge ``rate()`` and ``cron()`` rules.

Time runs ``speed`` times faster on a virtual clock that starts at the real
current time, so ``rate(1 minute)`` with speed 60 fires every real second
and cron rules keep their wall-clock pattern.

For parity: a ``rate()`` rule first fires one period after it is created,
cron rules fire at the start of each matching minute (UTC), and the event
is EventBridge's "Scheduled Event". Knowingly differs: EventBridge may fire
up to a minute late and, rarely, twice; this runner is punctual and exact.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from collections.abc import Callable

from infra.local import events
from infra.local.handlers import LambdaFunction
from infra.local.worker import Worker

log = logging.getLogger("infra.local.schedule")


class UnsupportedScheduleError(ValueError):
    """The expression is valid for EventBridge but not supported locally."""


_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$", re.I)
_CRON = re.compile(r"^cron\((.*)\)$", re.I)
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
# EventBridge numbers days of the week 1-7 from Sunday.
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}


def rate_seconds(expression: str) -> float | None:
    """Return the period of a ``rate()`` expression in seconds, or None if it is not one."""
    match = _RATE.match(expression.strip())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).lower().rstrip("s")
    if value <= 0:
        raise ValueError(f"{expression}: the rate must be positive")
    return float(value * _UNIT_S[unit])


def _parse_field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """Parse one cron field into the set of allowed values (None means any)."""
    if text in ("*", "?"):
        return None
    for token in re.split(r"[,\-/]", text):
        known = token in ("*", "?") or token.isdigit() or bool(names and token.upper() in names)
        if not known and any(mark in token.upper() for mark in ("L", "W", "#")):
            raise UnsupportedScheduleError(f"cron field {text!r}: L, W and # are not supported locally")
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.upper()
        if names and token in names:
            return names[token]
        value = int(token)
        if not low <= value <= high:
            raise ValueError(f"cron value {value} is outside {low}-{high}")
        return value

    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part in ("*", "?"):
            start, end = low, high
        elif "-" in part:
            first, last = part.split("-", 1)
            start, end = number(first), number(last)
        else:
            start = number(part)
            # AWS style "0/15": from the value to the end of the range.
            end = high if step != 1 else start
        values.update(range(start, end + 1, step))
    return values


@dataclass(frozen=True)
class CronSchedule:
    """A six-field EventBridge cron: minutes hours day-of-month month day-of-week year."""

    minutes: set[int] | None
    hours: set[int] | None
    days_of_month: set[int] | None
    months: set[int] | None
    days_of_week: set[int] | None
    years: set[int] | None

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse ``cron(...)``; raise UnsupportedScheduleError for L, W and #."""
        match = _CRON.match(expression.strip())
        if not match:
            raise ValueError(f"{expression!r} is not a cron() expression")
        fields = match.group(1).split()
        if len(fields) != 6:
            raise ValueError(f"{expression!r}: EventBridge cron has 6 fields")
        return cls(
            minutes=_parse_field(fields[0], 0, 59),
            hours=_parse_field(fields[1], 0, 23),
            days_of_month=_parse_field(fields[2], 1, 31),
            months=_parse_field(fields[3], 1, 12, _MONTHS),
            days_of_week=_parse_field(fields[4], 1, 7, _DAYS),
            years=_parse_field(fields[5], 1970, 2199),
        )

    @staticmethod
    def _ok(allowed: set[int] | None, value: int) -> bool:
        return allowed is None or value in allowed

    def _day_ok(self, moment: datetime) -> bool:
        weekday = (moment.isoweekday() % 7) + 1  # Sunday=1 ... Saturday=7
        return self._ok(self.days_of_month, moment.day) and self._ok(self.days_of_week, weekday)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first matching minute strictly after ``moment`` (UTC)."""
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = datetime(2200, 1, 1, tzinfo=candidate.tzinfo)
        while candidate < limit:
            if not self._ok(self.years, candidate.year):
                candidate = candidate.replace(year=candidate.year + 1, month=1, day=1, hour=0, minute=0)
                continue
            if not self._ok(self.months, candidate.month):
                year, month = divmod(candidate.month, 12)
                candidate = candidate.replace(year=candidate.year + year, month=month + 1, day=1, hour=0, minute=0)
                continue
            if not self._day_ok(candidate):
                candidate = (candidate + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if not self._ok(self.hours, candidate.hour):
                candidate = (candidate + timedelta(hours=1)).replace(minute=0)
                continue
            if not self._ok(self.minutes, candidate.minute):
                candidate += timedelta(minutes=1)
                continue
            return candidate
        raise ValueError("the cron expression matches no time before 2200")


def expression_of(schedule: object) -> str:
    """Return the string of a Chalice schedule expression (``str``, ``Rate`` or ``Cron``)."""
    if isinstance(schedule, str):
        return schedule
    to_string: Callable[[], str] | None = getattr(schedule, "to_string", None)
    if to_string is None:
        raise TypeError(f"unknown schedule expression {schedule!r}")
    return to_string()


class ScheduleRunner(Worker):
    """A thread that invokes one function on one schedule."""

    def __init__(self, function: LambdaFunction, expression: str, rule_name: str, speed: float = 1.0,
                 region: str = events.DEFAULT_REGION) -> None:
        if speed <= 0:
            raise ValueError("the schedule speed must be positive")
        self.function = function
        self.expression = expression
        self.rule_name = rule_name
        self.speed = speed
        self._region = region
        self._period_s = rate_seconds(expression)
        self._cron = None if self._period_s is not None else CronSchedule.parse(expression)
        super().__init__(f"schedule-{function.name}")
        self._real_start = time.time()

    def _virtual_now(self) -> float:
        return self._real_start + (time.time() - self._real_start) * self.speed

    def _next_fire(self, after: float) -> float:
        if self._period_s is not None:
            return after + self._period_s
        assert self._cron is not None
        moment = datetime.fromtimestamp(after, tz=UTC)
        return self._cron.next_after(moment).timestamp()

    def start(self) -> None:
        """Start the schedule in the background."""
        self._real_start = time.time()
        super().start()

    def _run(self) -> None:
        fire_at = self._next_fire(self._virtual_now())
        log.info("%s on %s (speed x%g)", self.function.name, self.expression, self.speed)
        while not self._stop.is_set():
            wait_real = (fire_at - self._virtual_now()) / self.speed
            if wait_real > 0 and self._stop.wait(wait_real):
                return
            try:
                self.function.invoke(events.scheduled_event(self.rule_name, int(fire_at * 1000), self._region))
            except Exception:
                log.exception("scheduled %s raised", self.function.name)
            fire_at = self._next_fire(fire_at)
            # A slow handler does not cause a burst of catch-up invocations.
            now = self._virtual_now()
            while fire_at < now:
                fire_at = self._next_fire(fire_at)
