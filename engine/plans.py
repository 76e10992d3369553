"""Plans: what a tenant may use (limits), what it may do (features) and what it pays (prices).

Why: plans are data, rows of the system tenant's `plans` entity (platform.yaml checks their `limits` and
`features` with a JSON Schema), edited by platform admins through the platform API and read by every
gateway from memory (the runtime registry loads a tenant's plan with its status and drops it on the plans
NOTIFY). This module is the one place that says what a plan's values mean:

- a limit is a whole number, and `-1` (`UNLIMITED`) means no limit; a missing limit means no limit too
  (an operator's plan that predates a key keeps working), so `Plan.limit()` answers `None` for both;
- a feature is on only when the plan says so (`True`, or for `audit_retention_days` a number), and
  `require_feature` refuses with 402 `plan_feature_required` otherwise.

It also holds the four plans seeded when absent (`seed_plans`, run by every platform deploy), which never
overwrite a plan an operator has edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.errors import PlanFeatureRequired

UNLIMITED = -1
DEFAULT_PLAN = "free"  # `tenants.plan` defaults to it

# The windows the gateway rate limits by (gateway/ratelimit.py): the plan's key and its length in seconds.
RATE_WINDOWS: tuple[tuple[str, int], ...] = (  # shortest first; the second bounds a burst within the minute
    ("requests_per_second", 1), ("requests_per_minute", 60), ("requests_per_hour", 3600), ("requests_per_day", 86400))
QUOTA_LIMITS = ("requests_per_month", "rows", "storage_bytes", "end_users", "members", "function_ms_per_month",
                "webhook_deliveries_per_month")
FEATURES = ("custom_branding", "custom_domain", "database_isolation", "sso", "audit_retention_days")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def limit_of(limits: Mapping[str, Any], name: str) -> int | None:
    """The bound `limits[name]` sets, or None for no bound: `-1`, absent, or not a whole number of at
    least 0 (plans are checked by their JSON Schema when written; a bad value written around it must not
    stop every request of the plan's tenants, so it counts as no bound)."""
    value = limits.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass(frozen=True)
class Plan:
    """One plan as a tenant's requests see it (immutable: shared by every request of its tenants)."""

    code: str
    name: str = ""
    currency: str = "usd"
    price_monthly_cents: int = 0
    price_yearly_cents: int = 0
    trial_days: int = 0
    grace_days: int = 0
    limits: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    features: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    usage_prices: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    active: bool = True

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Plan:
        """A plan from a `plans` row (or any mapping with its columns; missing ones take the defaults)."""
        def number(key: str) -> int:
            value = row.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def mapping(key: str) -> Mapping[str, Any]:
            value = row.get(key)
            return MappingProxyType(dict(value)) if isinstance(value, Mapping) else _EMPTY

        return cls(code=str(row.get("code") or ""), name=str(row.get("name") or ""),
                   currency=str(row.get("currency") or "usd"), price_monthly_cents=number("price_monthly_cents"),
                   price_yearly_cents=number("price_yearly_cents"), trial_days=number("trial_days"),
                   grace_days=number("grace_days"), limits=mapping("limits"), features=mapping("features"),
                   usage_prices=mapping("usage_prices"), active=row.get("active") is not False)

    def limit(self, name: str) -> int | None:
        """The plan's bound on `name`, or None when it has none (`-1` or absent)."""
        return limit_of(self.limits, name)

    def has(self, feature: str) -> bool:
        """Whether the plan includes `feature` (a true flag, or for a number any value but 0)."""
        value = self.features.get(feature)
        if isinstance(value, bool):
            return value
        return isinstance(value, int) and value != 0

    @property
    def rate_windows(self) -> tuple[tuple[str, int, int], ...]:
        """(key, seconds, requests allowed) of each bounded request window, shortest first."""
        found = self.__dict__.get("_windows")
        if found is None:  # computed once per plan object (it lives as long as its tenant's cached state)
            found = tuple((key, seconds, bound) for key, seconds in RATE_WINDOWS
                          if (bound := self.limit(key)) is not None)
            object.__setattr__(self, "_windows", found)
        return found


NO_PLAN = Plan(code="")  # a tenant whose plan row is missing: nothing bounded, no features


def require_feature(plan: Plan, name: str) -> None:
    """Refuse (402 `plan_feature_required`) what needs `name` when `plan` does not include it."""
    if not plan.has(name):
        raise PlanFeatureRequired(f"the plan '{plan.code or 'none'}' does not include {name.replace('_', ' ')}",
                                  hint=f"change to a plan with the feature '{name}'")


def _limits(rps: int, rpm: int, rph: int, rpd: int, month: int, rows: int, storage: int, end_users: int,
            members: int, function_ms: int, webhooks: int, concurrent: int, rows_written: int) -> dict[str, int]:
    return {"requests_per_second": rps, "requests_per_minute": rpm, "requests_per_hour": rph, "requests_per_day": rpd,
            "requests_per_month": month, "rows": rows, "storage_bytes": storage, "end_users": end_users,
            "members": members, "function_ms_per_month": function_ms, "webhook_deliveries_per_month": webhooks,
            "concurrent_requests": concurrent, "rows_written_per_second": rows_written}


def _features(branding: bool, domain: bool, isolation: bool, sso: bool, audit_days: int) -> dict[str, Any]:
    return {"custom_branding": branding, "custom_domain": domain, "database_isolation": isolation, "sso": sso,
            "audit_retention_days": audit_days}


MB = 1024 * 1024
# The plans a new platform starts with; an operator edits them (or adds others) through the platform API.
SEED_PLANS: tuple[dict[str, Any], ...] = (
    {"code": "free", "name": "Free", "price_monthly_cents": 0, "price_yearly_cents": 0, "trial_days": 0,
     "grace_days": 0,
     "limits": _limits(25, 600, 10_000, 100_000, 1_000_000, 50_000, 500 * MB, 10_000, 2, 100_000, 1_000, 4, 500),
     "features": _features(False, False, False, False, 7)},
    {"code": "starter", "name": "Starter", "price_monthly_cents": 2_500, "price_yearly_cents": 25_000,
     "trial_days": 14, "grace_days": 7,
     "limits": _limits(50, 1_200, 50_000, 500_000, 5_000_000, 500_000, 8_192 * MB, 100_000, 5, 1_000_000, 50_000, 8,
                       2_500),
     "features": _features(True, False, False, False, 30)},
    {"code": "pro", "name": "Pro", "price_monthly_cents": 9_900, "price_yearly_cents": 99_000,
     "trial_days": 14, "grace_days": 14,
     "limits": _limits(250, 6_000, 250_000, 2_500_000, 50_000_000, 10_000_000, 102_400 * MB, 1_000_000, 25, 10_000_000,
                       500_000, 16, 10_000),
     "features": _features(True, True, False, True, 90)},
    {"code": "enterprise", "name": "Enterprise", "price_monthly_cents": 99_900, "price_yearly_cents": 999_000,
     "trial_days": 30, "grace_days": 30,
     "limits": _limits(*(UNLIMITED,) * 13),
     "features": _features(True, True, True, True, UNLIMITED)},
)


async def seed_plans(conn: AsyncConnection) -> None:
    """Insert each seed plan whose code is absent, in the caller's transaction. A plan with that code is
    left as it is, whatever it holds (the operator's edits win), and so is a plan that predates a limit
    or feature key: an absent limit is no limit."""
    plans = catalog.platform_tables()["plans"]
    await conn.execute(postgresql.insert(plans).values([dict(p) for p in SEED_PLANS])
                       .on_conflict_do_nothing(index_elements=["code"]))


async def plan_of(conn: AsyncConnection, code: str) -> Plan | None:
    """The plan with `code`, or None."""
    plans = catalog.platform_tables()["plans"]
    row = (await conn.execute(sa.select(plans).where(plans.c.code == code))).mappings().first()
    return Plan.from_row(row) if row is not None else None
