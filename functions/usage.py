"""What a tenant used, against its plan: the platform function `usage`, for the tenant's members.

The current period is the calendar month (UTC). Counters are this month's sums of `usage_daily`; the
measured gauges (rows, storage, end users) are their latest measurement; each quota of the plan is shown
with its limit (None: unlimited) and the share used, beside the daily history. Figures are what the
gateways have flushed: at most one flush interval (`BACKSAAS_METER_FLUSH_SECONDS`) behind the requests.
Any member of the tenant (every membership role) may read it; platform admins read every tenant's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog, metering, quotas
from engine.hooks import HookContext, platform_function
from engine.plans import limit_of
from functions.access import MEMBERS, authorize

DEFAULT_DAYS = 31


def next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


async def tenant_usage(conn: AsyncConnection, slug: str, days: int = DEFAULT_DAYS) -> dict[str, Any]:
    """The tenant's current period against its plan's limits, and its daily history of the last `days` days."""
    t = catalog.platform_tables()
    tenants, plans, usage, warnings = t["tenants"], t["plans"], t["usage_daily"], t["quota_warnings"]
    tenant_id = await catalog.active_tenant_id(conn, slug)
    plan = (await conn.execute(sa.select(tenants.c.plan, plans.c.limits)
                               .select_from(tenants.outerjoin(plans, plans.c.code == tenants.c.plan))
                               .where(tenants.c.id == tenant_id))).one()
    today = datetime.now(UTC).date()
    start, since = quotas.month_start(today), today - timedelta(days=max(days, 1) - 1)
    rows = (await conn.execute(sa.select(usage.c.day, usage.c.metric, usage.c.value)
                               .where(usage.c.tenant_id == tenant_id, usage.c.day >= min(start, since))
                               .order_by(usage.c.day, usage.c.metric))).all()
    totals: dict[str, int] = {}
    for day, metric, value in rows:
        if day >= start:
            totals[metric] = value if metric in metering.GAUGES else totals.get(metric, 0) + value
    limits = plan.limits or {}
    period = quotas.period_of(today)
    warned = set((await conn.execute(sa.select(warnings.c.metric)
                                     .where(warnings.c.tenant_id == tenant_id, warnings.c.period == period))).scalars())
    standing = {}
    for limit in quotas.LIMITS:
        used = sum(totals.get(m, 0) for m in quotas.MONTHLY[limit]) if limit in quotas.MONTHLY \
            else totals.get(quotas.MEASURED[limit], 0)
        allowed = limit_of(limits, limit)
        standing[limit] = {"used": used, "limit": allowed,
                           "percent": quotas.percent(used, allowed) if allowed is not None else None,
                           "warned": limit in warned}
    return {
        "tenant": slug,
        "plan": plan.plan,
        "period": {"start": start.isoformat(), "end": next_month(start).isoformat()},
        "totals": totals,
        "quotas": standing,
        "daily": [{"day": day.isoformat(), "metric": metric, "value": value}
                  for day, metric, value in rows if day >= since],
    }


@platform_function
async def usage(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    await authorize(ctx, payload["tenant"], MEMBERS)
    async with ctx.data.db.engine.connect() as conn:
        return await tenant_usage(conn, payload["tenant"], int(payload.get("days") or DEFAULT_DAYS))
