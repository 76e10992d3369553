"""The operator's dashboard (`/api/platform/functions/v1/dashboard`): figures from a seeded set of tenants,
subscriptions and usage, computed by hand here; and nobody but a platform admin gets them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from functions.users import create_platform_admin
from tests.server import running_gateway
from tests.test_platform import PASSWORD, bearer, call, create_tenant, platform, sign_in, sign_up

ADMIN_EMAIL = "dashboard-root@platform.example"
NOW = datetime.now(UTC)
TODAY = NOW.date()


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


# slug: (tenant status, tenant plan, created days ago, deleted days ago,
#        subscription (plan, cycle, status, comped, canceled days ago) or None)
TENANTS: dict[str, tuple[str, str, int, int | None, tuple[str, str, str, bool, int | None] | None]] = {
    "alpha": ("active", "starter", 40, None, ("starter", "month", "active", False, None)),   # MRR 2,500
    "bravo": ("active", "pro", 10, None, ("pro", "year", "active", False, None)),            # 99,000 / 12 = 8,250
    "charlie": ("active", "enterprise", 60, None, ("enterprise", "month", "active", True, None)),  # comped: 0
    "delta": ("suspended", "pro", 90, None, ("pro", "month", "suspended", False, None)),     # not paying
    "echo": ("active", "free", 80, None, ("starter", "month", "canceled", False, 5)),         # churned 2,500
    "foxtrot": ("deleted", "pro", 100, 3, ("pro", "month", "canceled", False, 3)),            # churned 9,900
    "golf": ("active", "starter", 2, None, ("starter", "month", "trialing", False, None)),    # trialing: 0
}
LATENCY = {"alpha": {"latency_ms_le_5": 100, "latency_ms_le_50": 45, "latency_ms_le_250": 5},
           "bravo": {"latency_ms_le_10": 1020}}
USAGE: list[tuple[str, int, str, int]] = [  # slug, days ago, metric, value
    ("alpha", 1, "rest_calls", 100), ("alpha", 1, "graphql_calls", 50), ("alpha", 1, "errors_5xx", 3),
    ("alpha", 5, "storage_bytes", 1000), ("alpha", 1, "storage_bytes", 2000),
    ("bravo", 2, "rest_calls", 1000), ("bravo", 2, "function_calls", 20), ("bravo", 40, "rest_calls", 500),
    ("bravo", 3, "storage_bytes", 5000), ("charlie", 50, "storage_bytes", 300),
    *[(slug, 1 if slug == "alpha" else 2, metric, value) for slug, buckets in LATENCY.items()
      for metric, value in buckets.items()],
]


async def seed(db: Database) -> None:
    tables = catalog.platform_tables()
    tenants, subs, plans, usage = tables["tenants"], tables["subscriptions"], tables["plans"], tables["usage_daily"]
    async with db.begin() as conn:
        plan_ids = dict((await conn.execute(sa.select(plans.c.code, plans.c.id))).all())
        ids = {}
        for slug, (status, plan, created, deleted, _) in TENANTS.items():
            ids[slug] = await conn.scalar(tenants.insert().values(
                slug=slug, name=slug.title(), status=status, plan=plan, created_at=ago(created),
                deleted_at=ago(deleted) if deleted is not None else None).returning(tenants.c.id))
        for slug, (*_, sub) in TENANTS.items():
            assert sub is not None
            code, cycle, status, comped, canceled = sub
            await conn.execute(subs.insert().values(
                tenant_id=ids[slug], plan_id=plan_ids[code], cycle=cycle, status=status, comped=comped,
                canceled_at=ago(canceled) if canceled is not None else None, current_period_start=ago(1)))
        await conn.execute(usage.insert(), [{"tenant_id": ids[slug], "day": TODAY - timedelta(days=days),
                                             "metric": metric, "value": value} for slug, days, metric, value in USAGE])


@pytest.fixture(scope="module")
async def base(db: Database, database_url: str) -> Iterator[str]:
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    await seed(db)
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def admin(base: str) -> dict[str, Any]:
    return sign_in(base, ADMIN_EMAIL)


def test_the_dashboard_figures_are_those_of_the_seeded_tenants_subscriptions_and_usage(base, admin):
    answer = call(base, "dashboard", admin, **{"from": str(TODAY - timedelta(days=29)), "to": str(TODAY)})
    assert answer.status_code == 200, answer.text
    figures = answer.json()
    assert figures["period"] == {"from": str(TODAY - timedelta(days=29)), "to": str(TODAY)}
    assert figures["tenants"] == {"by_status": {"active": 5, "suspended": 1, "deleted": 1},
                                  "by_plan": {"starter": 2, "pro": 2, "enterprise": 1, "free": 1}, "total": 7}
    mrr = 2500 + 99000 // 12
    churned = 2500 + 9900
    assert figures["revenue"] == {"mrr_cents": {"usd": mrr}, "arr_cents": {"usd": mrr * 12},
                                  "churned_mrr_cents": {"usd": churned},
                                  "revenue_churn_rate": {"usd": round(churned / (mrr + churned), 6)}}
    assert figures["growth"] == {"new_tenants": 2, "churned_tenants": 2}  # bravo, golf / echo, foxtrot
    assert figures["usage"] == {
        "api_calls": 150 + 1020,  # bravo's call of 40 days ago is outside the period
        "api_calls_by_surface": {"rest_calls": 1100, "graphql_calls": 50, "auth_calls": 0, "function_calls": 20},
        "storage_bytes": 2000 + 5000 + 300,  # each tenant's latest measurement
        "top_tenants": [{"tenant": "bravo", "api_calls": 1020, "storage_bytes": 5000},
                        {"tenant": "alpha", "api_calls": 150, "storage_bytes": 2000}]}
    assert figures["health"] == [
        {"tenant": "alpha", "requests": 150, "errors_5xx": 3, "error_rate": 0.02, "p95_ms": 50},  # 95% = 142.5 <= 145
        {"tenant": "bravo", "requests": 1020, "errors_5xx": 0, "error_rate": 0.0, "p95_ms": 10}]


def test_a_shorter_period_counts_only_its_own_days_and_tenants(base, admin):
    figures = call(base, "dashboard", admin, **{"from": str(TODAY - timedelta(days=1)), "to": str(TODAY)}).json()
    assert figures["growth"] == {"new_tenants": 0, "churned_tenants": 0}
    assert figures["revenue"]["churned_mrr_cents"] == {}
    assert figures["usage"]["api_calls"] == 150 and [t["tenant"] for t in figures["usage"]["top_tenants"]] == ["alpha"]


def test_a_period_that_ends_before_it_starts_is_refused(base, admin):
    refused = call(base, "dashboard", admin, **{"from": str(TODAY), "to": str(TODAY - timedelta(days=1))})
    assert refused.status_code == 400 and refused.json()["details"][0]["path"] == "from"
    not_a_day = call(base, "dashboard", admin, to="soon")
    assert not_a_day.status_code in (400, 422) and not_a_day.json()["details"]


def test_nobody_but_a_platform_admin_reads_the_dashboard(base):
    owner = sign_up(base, "owner@dashboard.example")
    made = create_tenant(base, owner, "hotel")
    assert made["status"] == "active"
    keys = call(base, "reveal_keys", owner, tenant="hotel").json()["keys"]
    end_user = httpx.post(f"{base}/api/tenants/hotel/auth/v1/signup", headers={"apikey": keys["anon"]},
                          json={"email": "user@example.com", "password": PASSWORD}).json()
    assert call(base, "dashboard", owner).status_code == 403
    assert call(base, "dashboard", None).status_code in (401, 403)
    assert httpx.post(platform(base, "functions/v1/dashboard"), json={}, headers=bearer(end_user)).status_code == 401
    in_tenant = httpx.post(f"{base}/api/tenants/hotel/functions/v1/dashboard", json={},
                           headers={"apikey": keys["service"]})
    assert in_tenant.status_code == 404
