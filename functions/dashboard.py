"""The operator's dashboard as a platform operation, for platform admins only: the figures of
engine/billing/dashboard.py over a period (`from`, `to`: dates, both included; the last 30 days by default)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from engine.billing.dashboard import figures
from engine.errors import Forbidden, InvalidInput, Problem
from engine.hooks import HookContext, platform_function
from functions.access import in_platform, is_platform_admin

DEFAULT_DAYS = 30
MAX_DAYS = 3660


def _day(payload: dict[str, Any], name: str, default: date) -> date:
    if name not in payload:
        return default
    try:
        return date.fromisoformat(str(payload[name])[:10])
    except ValueError:
        raise InvalidInput(f"{name} must be a date (YYYY-MM-DD)",
                           details=[Problem(name, f"'{payload[name]}' is not a date")]) from None


@platform_function
async def dashboard(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    in_platform(ctx)
    if not is_platform_admin(ctx):
        raise Forbidden("the dashboard is for platform admins")
    end = _day(payload, "to", datetime.now(UTC).date())
    start = _day(payload, "from", end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise InvalidInput("from must not be after to", details=[Problem("from", "is after to")])
    if (end - start).days > MAX_DAYS:
        raise InvalidInput(f"the period is at most {MAX_DAYS} days", details=[Problem("from", "too far back")])
    return await figures(ctx.data.db, start, end)
