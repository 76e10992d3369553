"""Quotas: a tenant's usage against its plan's limits, soft (a warning) and hard (402 `quota_exceeded`).

Decided per request from memory, never with a database round trip: the month's counters come from
`usage_daily` (read once after each flush of the meter, plus what this process has not flushed yet),
the tenant's rows, storage and end users from a measurement of its schema (`pg_total_relation_size`,
`pg_stat_user_tables.n_live_tup`) taken every `BACKSAAS_QUOTA_MEASURE_SECONDS` and after a deploy.
So a quota may be overrun by what one flush interval or one measurement interval lets through.

- Past the soft limit (the plan's `limits.quota_soft_percent`, else `BACKSAAS_QUOTA_SOFT_PERCENT`, 80 by
  default) every response carries
  `X-Quota-Warning: rows=85%` and the tenant gets ONE `quota.warning` event per metric and month: the
  `quota_warnings` row (unique per tenant, metric and period) is written with it in one transaction, so
  any number of gateway processes send it once; it goes through the outbox to the tenant's webhooks.
- Past the hard limit: `requests_per_month` refuses every request; `function_ms_per_month` refuses
  function calls; `rows` refuses inserts and `storage_bytes` inserts and updates (the write core asks
  `guard_write`), while reads and deletes keep working; `end_users` refuses sign-ups (counted exactly
  when one is asked for); `members`
  refuses invitations (`check_members`, where an invitation is made). `webhook_deliveries_per_month`
  holds the tenant's webhooks back in the outbox until the month turns or the plan grows (engine/outbox.py).
  A limit of -1, or none, is unlimited. The system tenant has no quota.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql

from engine import catalog, metering
from engine.errors import BackSaasError
from engine.plans import limit_of
from engine.storage import naming

log = structlog.get_logger("backsaas.quotas")

SOFT_PERCENT_VARIABLE = "BACKSAAS_QUOTA_SOFT_PERCENT"
MEASURE_SECONDS_VARIABLE = "BACKSAAS_QUOTA_MEASURE_SECONDS"
DEFAULT_SOFT_PERCENT = 80
DEFAULT_MEASURE_SECONDS = 60.0
WARNING_HEADER = "X-Quota-Warning"

# limit (plans.limits) -> the metrics of usage_daily it is measured by
MONTHLY = {"requests_per_month": metering.SURFACE_METRICS, "function_ms_per_month": ("function_ms",),
           "webhook_deliveries_per_month": ("webhook_deliveries",)}
MEASURED = {"rows": "rows", "storage_bytes": "storage_bytes", "end_users": "end_users"}
LIMITS = (*MONTHLY, *MEASURED)


class QuotaExceeded(BackSaasError):
    """The tenant used all its plan allows of a metric; `details` names the limit, the usage and the limit."""

    code = "quota_exceeded"
    status = 402

    def __init__(self, limit: str, used: int, allowed: int, what: str) -> None:
        super().__init__(f"{what}: the plan's {limit} quota of {allowed} is used up ({used})",
                         hint="upgrade the plan, or wait for the next period" if limit in MONTHLY
                         else "upgrade the plan, or delete some data")
        self.limit, self.used, self.allowed = limit, used, allowed

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "details": [{"field": self.limit, "message": f"{self.used} of {self.allowed}"}],
                "metric": self.limit, "limit": self.allowed, "used": self.used}


def month_start(day: date | None = None) -> date:
    day = day or datetime.now(UTC).date()
    return day.replace(day=1)


def period_of(day: date | None = None) -> str:
    return month_start(day).strftime("%Y-%m")


def soft_percent_from_env() -> int:
    return int(os.environ.get(SOFT_PERCENT_VARIABLE) or DEFAULT_SOFT_PERCENT)


def percent(used: int, allowed: int) -> int:
    return 100 if allowed <= 0 else used * 100 // allowed


@dataclass(frozen=True)
class TenantQuota:
    """One tenant's standing at the last refresh: the warning header's value, and the limits used up."""

    warning: str | None = None
    blocked: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # limit -> (used, allowed)


OPEN = TenantQuota()


def surface_calls(flushed: Mapping[str, int]) -> int:
    """A tenant's flushed requests of every surface together (what `requests_per_month` is measured by)."""
    return sum(flushed.get(m, 0) for m in metering.SURFACE_METRICS)


class _Tenant:
    """What `QuotaBook.admit` needs of one tenant, kept for its plan's limits and schema version: the hard
    limits a request checks (looked up once, not per request), this month's flushed requests (set with
    the totals they come from) and the standing of the last refresh."""

    __slots__ = ("calls", "functions", "limits", "requests", "state", "version")

    def __init__(self, limits: Mapping[str, Any], version: int, calls: int, state: TenantQuota) -> None:
        self.limits, self.version, self.calls, self.state = limits, version, calls, state
        self.requests = limit_of(limits, "requests_per_month")
        self.functions = limit_of(limits, "function_ms_per_month")


class QuotaBook:
    """This process's view of every tenant's usage against its limits (refreshed after each flush)."""

    def __init__(self, db: Any, meter: metering.Meter, *, soft_percent: int | None = None,
                 measure_seconds: float | None = None) -> None:
        self.db, self.meter = db, meter
        self.soft_percent = soft_percent if soft_percent is not None else soft_percent_from_env()
        self.measure_seconds = measure_seconds if measure_seconds is not None else float(
            os.environ.get(MEASURE_SECONDS_VARIABLE) or DEFAULT_MEASURE_SECONDS)
        self.limits: dict[str, Mapping[str, Any]] = {}  # tenant id -> its plan's limits, as requests bring them
        self.slugs: dict[str, str] = {}
        self.versions: dict[str, int] = {}  # tenant id -> the schema version last seen (a deploy remeasures)
        self.monthly: dict[str, dict[str, int]] = {}  # tenant id -> metric -> this month's flushed total
        self.measured: dict[str, dict[str, int]] = {}  # tenant id -> rows / storage_bytes / end_users
        self.states: dict[str, TenantQuota] = {}
        self.tenants: dict[str, _Tenant] = {}  # tenant id -> what admit reads (the dicts above, kept together)
        self.warned: set[tuple[str, str, str]] = set()  # (tenant, limit, period) whose event is written
        self.period = period_of()
        self.measured_at = 0.0
        self.remeasure = True

    # -- per request (memory only) --

    def used(self, tenant_id: str, limit: str) -> int:
        if limit in MEASURED:
            return self.measured.get(tenant_id, {}).get(limit, 0)
        flushed = self.monthly.get(tenant_id, {})
        if limit == "requests_per_month":  # the surfaces' calls, which the meter keeps together
            return surface_calls(flushed) + self.meter.pending_calls(tenant_id)
        return sum(flushed.get(m, 0) + self.meter.pending(tenant_id, m) for m in MONTHLY[limit])

    def admit(self, tenant_id: str, slug: str, version: int, limits: Mapping[str, Any], method: str,
              path: str) -> TenantQuota | None:
        """The tenant's standing for this request, or QuotaExceeded when a hard limit refuses it whole.
        Per request: one lookup of the tenant's entry (made again when its limits or version change), and
        for a requests_per_month limit its flushed total plus the meter's pending calls, against the limit."""
        if slug == naming.SYSTEM_TENANT:
            return None
        tenant = self.tenants.get(tenant_id)
        if tenant is None or tenant.limits is not limits or tenant.version != version:
            tenant = self.enter(tenant_id, slug, version, limits)
        allowed = tenant.requests
        if allowed is not None:
            used = tenant.calls + self.meter.pending_calls(tenant_id)
            if used >= allowed:
                raise QuotaExceeded("requests_per_month", used, allowed, "this month's requests are used up")
        if tenant.functions is not None and path.startswith("/functions/v1/"):
            self.refuse_past("function_ms_per_month", tenant_id, limits, "functions' compute time is used up")
        return tenant.state

    def enter(self, tenant_id: str, slug: str, version: int, limits: Mapping[str, Any]) -> _Tenant:
        """A tenant first seen, or seen with other limits or another schema version (a deploy: remeasured)."""
        if self.limits.get(tenant_id) is not limits:
            self.limits[tenant_id], self.slugs[tenant_id] = limits, slug
        if self.versions.get(tenant_id) != version:
            if tenant_id in self.versions:
                self.remeasure = True  # a deploy: its tables changed
            self.versions[tenant_id] = version
        tenant = self.tenants[tenant_id] = _Tenant(limits, version, surface_calls(self.monthly.get(tenant_id, {})),
                                                   self.states.get(tenant_id, OPEN))
        return tenant

    async def admit_signup(self, pg_schema: str, limits: Mapping[str, Any]) -> None:
        """A sign-up with an `end_users` limit counts the tenant's users exactly (one query: sign-ups are no
        hot path, and a measurement lags), and is refused at the limit."""
        allowed = limit_of(limits, "end_users")
        if allowed is None:
            return
        async with self.db.engine.connect() as conn:
            users = await conn.scalar(sa.text(f'SELECT count(*) FROM "{pg_schema}".users'))
        if users >= allowed:
            raise QuotaExceeded("end_users", users, allowed, "no more end users may sign up")

    def refuse_past(self, limit: str, tenant_id: str, limits: Mapping[str, Any], what: str) -> None:
        allowed = limit_of(limits, limit)
        if allowed is not None:
            used = self.used(tenant_id, limit)
            if used >= allowed:
                raise QuotaExceeded(limit, used, allowed, what)

    # -- after each flush (a few statements for all tenants) --

    async def refresh(self) -> None:
        """Read this month's counters, measure storage when due, and recompute every tenant's standing;
        write the quota.warning of each limit a tenant passed the soft percentage of, once per period."""
        import time

        period = period_of()
        if period != self.period:
            self.period, self.warned = period, set()
        await self.read_monthly()
        if self.remeasure or time.monotonic() - self.measured_at >= self.measure_seconds:
            self.remeasure = False
            self.measured_at = time.monotonic()
            await self.measure()
        for tenant_id, limits in list(self.limits.items()):
            state = self.states[tenant_id] = await self.standing(tenant_id, limits)
            if (tenant := self.tenants.get(tenant_id)) is not None:
                tenant.state = state

    async def read_monthly(self) -> None:
        usage = catalog.platform_tables()["usage_daily"]
        metrics = [m for ms in MONTHLY.values() for m in ms]
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(usage.c.tenant_id, usage.c.metric, sa.func.sum(usage.c.value))
                                       .where(usage.c.day >= month_start(), usage.c.metric.in_(metrics))
                                       .group_by(usage.c.tenant_id, usage.c.metric))).all()
        monthly: dict[str, dict[str, int]] = {}
        for tenant_id, metric, total in rows:
            monthly.setdefault(str(tenant_id), {})[metric] = int(total)
        # together (no await between): the flushed counts are now in the totals
        self.monthly = monthly
        self.meter.flushed_read()
        for tenant_id, tenant in self.tenants.items():
            tenant.calls = surface_calls(monthly.get(tenant_id, {}))

    async def measure(self) -> None:
        """Every tenant's rows, storage and end users, from the catalogue's statistics (one statement), kept
        here and as the day's gauges in usage_daily."""
        exact = {t for t, limits in self.limits.items() if limit_of(limits, "rows") is not None}
        measured = await measure_tenants(self.db, exact)
        self.measured = measured
        for tenant_id, values in measured.items():
            for metric, value in values.items():
                self.meter.gauge(tenant_id, metric, value)

    async def standing(self, tenant_id: str, limits: Mapping[str, Any]) -> TenantQuota:
        soft = limits.get("quota_soft_percent")  # the plan's own soft percentage, else the server's
        soft = soft if isinstance(soft, int) and not isinstance(soft, bool) and 0 < soft <= 100 else self.soft_percent
        warnings, blocked = [], {}
        for limit in LIMITS:
            allowed = limit_of(limits, limit)
            if allowed is None:
                continue
            used = self.used(tenant_id, limit)
            share = percent(used, allowed)
            if used >= allowed:
                blocked[limit] = (used, allowed)
            if share >= soft:
                warnings.append(f"{limit}={share}%")
                if (tenant_id, limit, self.period) not in self.warned:
                    await self.warn(tenant_id, limit, used, allowed, share)
        return TenantQuota(", ".join(warnings) or None, blocked) if warnings or blocked else OPEN

    async def warn(self, tenant_id: str, limit: str, used: int, allowed: int, share: int) -> None:
        """The one quota.warning of (tenant, limit, period): its row and its events in one transaction; a
        row already there (another process, or before a restart) means it was sent."""
        from engine.outbox import enqueue_platform_event  # the outbox imports the storage layer; only here

        warnings = catalog.platform_tables()["quota_warnings"]
        async with self.db.begin() as conn:
            written = await conn.scalar(postgresql.insert(warnings).values(
                tenant_id=tenant_id, metric=limit, period=self.period, used=used, quota=allowed, percent=share)
                .on_conflict_do_nothing(index_elements=["tenant_id", "metric", "period"]).returning(warnings.c.id))
            if written is not None:
                sent = await enqueue_platform_event(conn, tenant_id, self.slugs.get(tenant_id, ""), "quota.warning",
                                                    {"metric": limit, "used": used, "limit": allowed, "percent": share,
                                                     "period": self.period})
                log.info("quota.warning", tenant_id=tenant_id, metric=limit, percent=share, events=sent)
        self.warned.add((tenant_id, limit, self.period))


EXACT_BELOW = 100_000  # rows: a tenant with a rows quota and fewer rows than this is counted exactly


async def measure_tenants(db: Any, exact: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, int]]:
    """tenant id -> {rows, storage_bytes, end_users} for every tenant living in this database's schemas:
    tables' total size (indexes and TOAST included) and live rows as PostgreSQL's statistics count them,
    except for the tenants of `exact` (those with a rows quota) below `EXACT_BELOW` rows, whose rows are
    counted: the statistics of a pooled connection that went idle are reported only at its next use."""
    tenants = catalog.platform_tables()["tenants"]
    async with db.engine.connect() as conn:
        slugs = {naming.schema_name(slug): str(tenant_id) for tenant_id, slug in (await conn.execute(
            sa.select(tenants.c.id, tenants.c.slug).where(tenants.c.status.in_(("active", "suspended")),
                                                          tenants.c.slug != naming.SYSTEM_TENANT))).all()}
        if not slugs:
            return {}
        rows = (await conn.execute(sa.text(
            "SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)), 0), coalesce(sum(s.n_live_tup), 0), "
            "coalesce(sum(s.n_live_tup) FILTER (WHERE c.relname = 'users'), 0) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(:schemas) GROUP BY n.nspname")
            .bindparams(sa.bindparam("schemas", type_=postgresql.ARRAY(sa.Text()))), {"schemas": list(slugs)})).all()
        measured = {slugs[schema]: {"storage_bytes": int(size), "rows": int(live), "end_users": int(users)}
                    for schema, size, live, users in rows}
        for schema, tenant_id in slugs.items():
            if tenant_id in exact and measured.get(tenant_id, {}).get("rows", 0) < EXACT_BELOW:
                tables = (await conn.execute(sa.text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')"), {"schema": schema})).scalars().all()
                if tables:
                    counts = " + ".join(f'(SELECT count(*) FROM "{schema}"."{t}")' for t in tables)
                    measured.setdefault(tenant_id, {"storage_bytes": 0, "rows": 0, "end_users": 0})["rows"] = \
                        int(await conn.scalar(sa.text(f"SELECT {counts}")))
    return measured


def guard_write(action: str) -> None:
    """Called by the write core before a write: refuses one that would grow a metric whose hard limit the
    tenant reached (an insert grows rows and storage, an update storage; a delete grows nothing)."""
    usage = metering.CURRENT.get()
    quota = usage.quota if usage is not None else None
    if quota is None or not quota.blocked:
        return
    grows = ("rows", "storage_bytes") if action == "create" else ("storage_bytes",) if action == "update" else ()
    for limit in grows:
        if limit in quota.blocked:
            used, allowed = quota.blocked[limit]
            raise QuotaExceeded(limit, used, allowed, f"this {action} would grow {limit} past the plan's quota")


async def check_members(conn: Any, tenant_id: str) -> None:
    """Refuse one more member (an invitation) when the tenant's members and open invitations reach its
    plan's `members` limit (a query on the caller's transaction: invitations are no hot path)."""
    t = catalog.platform_tables()
    plans, tenants = t["plans"], t["tenants"]
    limits = await conn.scalar(sa.select(plans.c.limits).join(tenants, tenants.c.plan == plans.c.code)
                               .where(tenants.c.id == tenant_id))
    allowed = limit_of(limits or {}, "members")
    if allowed is None:
        return
    memberships, invitations = t["memberships"], t["invitations"]
    members = await conn.scalar(sa.select(sa.func.count()).select_from(memberships)
                                .where(memberships.c.tenant_id == tenant_id))
    pending = await conn.scalar(sa.select(sa.func.count()).select_from(invitations).where(
        invitations.c.tenant_id == tenant_id, invitations.c.accepted_at.is_(None), invitations.c.revoked_at.is_(None),
        invitations.c.expires_at > sa.func.now()))
    if members + pending >= allowed:
        raise QuotaExceeded("members", members + pending, allowed, "no more members may be invited")
