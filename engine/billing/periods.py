"""Billing periods: a month or a year from a start, the way Stripe counts them (the same day of the month,
or the month's last day when it has fewer), and the share of a period left at a moment (for prorations)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

CYCLES = ("month", "year")


def add_months(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_end(start: datetime, cycle: str) -> datetime:
    """The end of the period of `cycle` (month | year) that starts at `start`."""
    return add_months(start, 12 if cycle == "year" else 1)


def remaining_share(start: datetime, end: datetime, at: datetime) -> float:
    """The part of [start, end) still ahead at `at`: 1.0 at the start, 0.0 at or after the end."""
    total = (end - start).total_seconds()
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (end - at).total_seconds() / total))


def now() -> datetime:
    return datetime.now(UTC)
