"""Scaling schedules: a minimum replica count for recurring time windows, in a named time zone.

A window is cron-like: `days` uses cron's day-of-week syntax (`*`, `1-5`, `0,6`; 0 and 7 are Sunday; `5-1` wraps),
`start`/`end` are local `HH:MM` times in `timeZone` (an IANA name, so daylight saving is handled). A window
whose end is not after its start runs past midnight into the next day, and belongs to its start day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ScheduleWindow", "parse_days", "schedule_minimum"]

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DAY_RANGE = re.compile(r"^([0-7])(?:-([0-7]))?$")


def parse_days(days: str) -> frozenset[int]:
    """Parse a cron day-of-week field into ISO weekdays (Monday 1 ... Sunday 7).

    Raises:
        ValueError: For anything but `*`, digits 0-7, ranges and commas.
    """
    if days.strip() == "*":
        return frozenset(range(1, 8))
    out: set[int] = set()
    for part in days.split(","):
        match = _DAY_RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"days {days!r}: use cron day-of-week syntax such as '1-5', '0,6' or '*'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        # A range that runs backwards wraps around the week (5-1: Friday to Monday).
        span = range(first, last + 1) if last >= first else [*range(first, 8), *range(0, last + 1)]
        out.update(7 if d in (0, 7) else d for d in span)
    return frozenset(out)


def _minutes(value: str) -> int:
    match = _TIME.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a 24-hour HH:MM time")
    return int(match.group(1)) * 60 + int(match.group(2))


class ScheduleWindow(BaseModel):
    """One recurring window and the replicas it keeps at least."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    days: str = Field(default="*", description="Cron day-of-week field: '*', '1-5', '0,6' (0 and 7: Sunday).")
    start: str = Field(description="Local start time, HH:MM.")
    end: str = Field(description="Local end time, HH:MM; at or before start means the next day.")
    time_zone: str = Field(default="UTC", alias="timeZone", description="IANA time zone, e.g. Europe/Berlin.")
    min_replicas: int = Field(ge=0, alias="minReplicas", description="Replicas kept at least inside the window.")

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        parse_days(value)
        return value

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        _minutes(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from exc
        return value

    @model_validator(mode="after")
    def _nonempty(self) -> ScheduleWindow:
        if self.start == self.end:
            raise ValueError("start equals end: give the window a length")
        return self

    def active(self, when: dt.datetime) -> bool:
        """Whether the window covers an aware datetime."""
        local = when.astimezone(ZoneInfo(self.time_zone))
        minute = local.hour * 60 + local.minute
        start, end = _minutes(self.start), _minutes(self.end)
        days = parse_days(self.days)
        if start < end:
            return local.isoweekday() in days and start <= minute < end
        # Past midnight: the evening part belongs to today, the morning part to yesterday's window.
        yesterday = (local - dt.timedelta(days=1)).isoweekday()
        return (local.isoweekday() in days and minute >= start) or (yesterday in days and minute < end)


def schedule_minimum(windows: Sequence[ScheduleWindow], now: float) -> tuple[int | None, int | None]:
    """Return the largest minimum of the windows active at a Unix time and its window index (None, None if none)."""
    when = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    best: tuple[int | None, int | None] = (None, None)
    for index, window in enumerate(windows):
        if window.active(when) and (best[0] is None or window.min_replicas > best[0]):
            best = (window.min_replicas, index)
    return best
