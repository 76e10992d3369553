"""The operator's figures, computed from the platform's rows (never kept anywhere else, so never stale):
tenants by status and plan, recurring revenue, growth and churn over a period, usage, and per tenant the
error rate and the 95th percentile of latency the gateway measured.

Definitions (the period is the days `start` to `end`, both included, UTC):
- MRR: the monthly price of every `active`, uncomped subscription, a yearly one counting its yearly price
  / 12; ARR = 12 x MRR; per currency.
- new tenants: created in the period; churned tenants: whose subscription was canceled, or who were
  deleted, in the period; revenue churn: the MRR of the subscriptions canceled in the period, and its
  rate against the MRR at the start of the period, taken as today's MRR plus that churned MRR.
- API calls: `rest_calls + graphql_calls + auth_calls + function_calls` of `usage_daily` in the period;
  storage: each tenant's latest `storage_bytes` measurement up to the period's end.
- error rate: `errors_5xx` / requests, where requests are the latency buckets' counts (each request is in
  exactly one); p95: the upper bound (ms) of the bucket where 95% of the requests are reached (None for
  the open bucket beyond the last bound, or without requests).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from engine.storage.naming import SYSTEM_TENANT

API_METRICS = ("rest_calls", "graphql_calls", "auth_calls", "function_calls")
LATENCY_BOUNDS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)
LATENCY_BUCKETS = (*(f"latency_ms_le_{b}" for b in LATENCY_BOUNDS), "latency_ms_le_inf")
TOP = 10


def p95(counts: dict[str, int]) -> int | None:
    """The upper bound of the latency bucket holding the 95th percentile request (None: beyond the last
    bound, or no requests)."""
    total = sum(counts.get(bucket, 0) for bucket in LATENCY_BUCKETS)
    if total == 0:
        return None
    seen = 0
    for bound, bucket in zip((*LATENCY_BOUNDS, None), LATENCY_BUCKETS, strict=True):
        seen += counts.get(bucket, 0)
        if seen >= 0.95 * total:
            return bound
    return None


def _monthly(subs: sa.Table, plans: sa.Table) -> sa.ColumnElement[Any]:
    return sa.case((subs.c.cycle == "year", plans.c.price_yearly_cents / sa.literal(12.0)),
                   else_=sa.cast(plans.c.price_monthly_cents, sa.Numeric))


async def figures(db: Database, start: date, end: date, *, top: int = TOP) -> dict[str, Any]:
    tables = catalog.platform_tables()
    tenants, subs, plans, usage = tables["tenants"], tables["subscriptions"], tables["plans"], tables["usage_daily"]
    since = datetime.combine(start, time.min, UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, UTC)
    customers = tenants.c.slug != SYSTEM_TENANT
    async with db.engine.connect() as conn:
        by_status = dict((await conn.execute(sa.select(tenants.c.status, sa.func.count()).where(customers)
                                             .group_by(tenants.c.status))).all())
        by_plan = dict((await conn.execute(sa.select(tenants.c.plan, sa.func.count())
                                           .where(customers, tenants.c.status != "deleted")
                                           .group_by(tenants.c.plan))).all())
        monthly = _monthly(subs, plans)
        live = sa.and_(subs.c.status == "active", subs.c.comped.is_(False))
        mrr = {currency: round(float(total)) for currency, total in (await conn.execute(
            sa.select(plans.c.currency, sa.func.coalesce(sa.func.sum(monthly), 0))
            .select_from(subs.join(plans, plans.c.id == subs.c.plan_id)).where(live)
            .group_by(plans.c.currency))).all()}
        canceled = sa.and_(subs.c.canceled_at >= since, subs.c.canceled_at < until)
        churned_mrr = {currency: round(float(total)) for currency, total in (await conn.execute(
            sa.select(plans.c.currency, sa.func.coalesce(sa.func.sum(monthly), 0))
            .select_from(subs.join(plans, plans.c.id == subs.c.plan_id))
            .where(canceled, subs.c.comped.is_(False)).group_by(plans.c.currency))).all()}
        new = await conn.scalar(sa.select(sa.func.count()).where(customers, tenants.c.created_at >= since,
                                                                tenants.c.created_at < until))
        churned = await conn.scalar(sa.select(sa.func.count(sa.distinct(tenants.c.id)))
                                    .select_from(tenants.outerjoin(subs, subs.c.tenant_id == tenants.c.id))
                                    .where(customers, sa.or_(canceled, sa.and_(tenants.c.deleted_at >= since,
                                                                                tenants.c.deleted_at < until))))
        in_period = sa.and_(usage.c.day >= start, usage.c.day <= end)
        per_tenant: dict[str, dict[str, int]] = defaultdict(dict)
        rows = await conn.execute(
            sa.select(tenants.c.slug, usage.c.metric, sa.func.sum(usage.c.value))
            .select_from(usage.join(tenants, tenants.c.id == usage.c.tenant_id))
            .where(in_period, usage.c.metric.in_((*API_METRICS, "errors_5xx", *LATENCY_BUCKETS)))
            .group_by(tenants.c.slug, usage.c.metric))
        for slug, metric, total in rows:
            per_tenant[slug][metric] = int(total)
        latest = (sa.select(usage.c.tenant_id, usage.c.value,
                            sa.func.row_number().over(partition_by=usage.c.tenant_id,
                                                      order_by=usage.c.day.desc()).label("n"))
                  .where(usage.c.metric == "storage_bytes", usage.c.day <= end).subquery())
        storage = dict((await conn.execute(
            sa.select(tenants.c.slug, latest.c.value).join(tenants, tenants.c.id == latest.c.tenant_id)
            .where(latest.c.n == 1))).all())
    calls = {slug: sum(m.get(name, 0) for name in API_METRICS) for slug, m in per_tenant.items()}
    ranked = sorted((slug for slug in calls if calls[slug]), key=lambda slug: (-calls[slug], slug))[:top]
    health = []
    for slug in sorted(per_tenant):
        counts = per_tenant[slug]
        requests = sum(counts.get(bucket, 0) for bucket in LATENCY_BUCKETS) or calls[slug]
        errors = counts.get("errors_5xx", 0)
        health.append({"tenant": slug, "requests": requests, "errors_5xx": errors,
                       "error_rate": round(errors / requests, 6) if requests else 0.0, "p95_ms": p95(counts)})
    start_mrr = {c: mrr.get(c, 0) + churned_mrr.get(c, 0) for c in {*mrr, *churned_mrr}}
    return {
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "tenants": {"by_status": by_status, "by_plan": by_plan, "total": sum(by_status.values())},
        "revenue": {"mrr_cents": mrr, "arr_cents": {c: v * 12 for c, v in mrr.items()},
                    "churned_mrr_cents": churned_mrr,
                    "revenue_churn_rate": {c: round(churned_mrr.get(c, 0) / v, 6) if v else 0.0
                                           for c, v in start_mrr.items()}},
        "growth": {"new_tenants": int(new or 0), "churned_tenants": int(churned or 0)},
        "usage": {"api_calls": sum(calls.values()),
                  "api_calls_by_surface": {name: sum(m.get(name, 0) for m in per_tenant.values()) for name in API_METRICS},
                  "storage_bytes": sum(int(v) for v in storage.values()),
                  "top_tenants": [{"tenant": slug, "api_calls": calls[slug], "storage_bytes": int(storage.get(slug, 0))}
                                  for slug in ranked]},
        "health": health,
    }
