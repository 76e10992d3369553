"""The billing state machine: the only code that moves a subscription between states.

    trialing --trial ends / paid--> active --payment fails--> past_due --grace ends--> suspended
        \\                            ^  \\                      |  ^                      |
         \\                           |   `--cancel (period end)-+--+--> canceled          |
          `--payment fails--> past_due `------------ paid --------------------------------'

Each transition, in the caller's transaction: the subscription row (its `status` and whatever the cause
sets beside it), the tenant's own status when payment suspends it (`suspended`, reason `payment_overdue`,
every session revoked) or a payment ends that suspension (a tenant suspended for another reason stays
suspended), an audit entry `billing.<cause>`, and a `billing.<cause>` event to the tenant's webhooks
(through the outbox: `engine.outbox.enqueue_platform_event`). A transition the table does not allow is
refused (409 `billing_transition_refused`) and changes nothing. Changes that keep the state (a plan
change, a scheduled cancel) go through `note`, which writes the same audit entry and event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog
from engine.errors import BackSaasError, TenantNotFound
from engine.identity import sessions
from engine.outbox import enqueue_platform_event
from engine.plans import Plan

STATES = ("trialing", "active", "past_due", "suspended", "canceled")
TRANSITIONS: dict[str, frozenset[str]] = {
    "trialing": frozenset({"active", "past_due", "canceled"}),
    "active": frozenset({"past_due", "canceled"}),
    "past_due": frozenset({"active", "suspended", "canceled"}),
    "suspended": frozenset({"active", "canceled"}),
    "canceled": frozenset({"active", "trialing"}),  # subscribing again, or comped
}
PAYMENT_OVERDUE = "payment_overdue"  # the tenant's status_reason while billing holds it suspended


class BillingTransitionRefused(BackSaasError):
    code = "billing_transition_refused"
    status = 409


class NoSubscription(BackSaasError):
    code = "subscription_not_found"
    status = 404


@dataclass(frozen=True)
class Subscription:
    """A tenant's subscription as read (and locked) for one transaction, with its tenant and plan."""

    id: str
    tenant_id: str
    slug: str
    tenant_status: str
    tenant_status_reason: str | None
    plan_id: str
    plan: Plan
    status: str
    cycle: str
    backend: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    grace_until: datetime | None
    comped: bool
    usage_reported_through: date | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    stripe_item_id: str | None
    created_at: datetime

    @property
    def price_cents(self) -> int:
        """What one period of this subscription costs (nothing when comped)."""
        if self.comped:
            return 0
        return self.plan.price_yearly_cents if self.cycle == "year" else self.plan.price_monthly_cents

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.slug, "plan": self.plan.code, "status": self.status, "cycle": self.cycle,
                "backend": self.backend, "price_cents": self.price_cents, "currency": self.plan.currency,
                "current_period_start": _iso(self.current_period_start),
                "current_period_end": _iso(self.current_period_end), "trial_end": _iso(self.trial_end),
                "cancel_at_period_end": self.cancel_at_period_end, "grace_until": _iso(self.grace_until),
                "comped": self.comped, "stripe_customer_id": self.stripe_customer_id,
                "stripe_subscription_id": self.stripe_subscription_id}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def plan_of(row: Any) -> Plan:
    return Plan.from_row(dict(row._mapping))


async def find_plan(conn: AsyncConnection, code: str) -> tuple[str, Plan] | None:
    """(id, plan) of the active plan `code`, or None."""
    plans = catalog.platform_tables()["plans"]
    row = (await conn.execute(sa.select(plans).where(plans.c.code == code, plans.c.active))).first()
    return (str(row.id), plan_of(row)) if row else None


def _query(**where: Any) -> sa.Select[Any]:
    tables = catalog.platform_tables()
    subs, tenants, plans = tables["subscriptions"], tables["tenants"], tables["plans"]
    query = (sa.select(subs, tenants.c.slug, tenants.c.status.label("tenant_status"),
                       tenants.c.status_reason.label("tenant_status_reason"),
                       *[c.label(f"plan__{c.name}") for c in plans.c])
             .join(tenants, tenants.c.id == subs.c.tenant_id).join(plans, plans.c.id == subs.c.plan_id))
    for name, value in where.items():
        column = tenants.c.slug if name == "slug" else subs.c[name]
        query = query.where(column == value)
    return query


def _subscription(row: Any) -> Subscription:
    values = row._mapping
    plan = Plan.from_row({k.removeprefix("plan__"): v for k, v in values.items() if k.startswith("plan__")})
    return Subscription(
        str(values["id"]), str(values["tenant_id"]), values["slug"], values["tenant_status"],
        values["tenant_status_reason"], str(values["plan_id"]), plan, values["status"], values["cycle"],
        values["backend"], values["current_period_start"], values["current_period_end"], values["trial_end"],
        bool(values["cancel_at_period_end"]), values["grace_until"], bool(values["comped"]),
        values["usage_reported_through"], values["stripe_customer_id"], values["stripe_subscription_id"],
        values["stripe_item_id"], values["created_at"])


async def load(conn: AsyncConnection, *, lock: bool = True, **where: Any) -> Subscription | None:
    """The subscription matching `where` (slug=, tenant_id=, stripe_customer_id=, ...), locked FOR UPDATE."""
    query = _query(**where)
    if lock:
        subs = catalog.platform_tables()["subscriptions"]
        query = query.with_for_update(of=subs)
    row = (await conn.execute(query)).first()
    return _subscription(row) if row else None


async def load_for_tenant(conn: AsyncConnection, slug: str) -> Subscription:
    """The subscription of tenant `slug`, locked; `TenantNotFound` / `NoSubscription` otherwise."""
    tenant = await catalog.find_tenant(conn, slug)
    if tenant is None or tenant.status == "deleted":
        raise TenantNotFound(f"no tenant '{slug}'")
    found = await load(conn, tenant_id=tenant.id)
    if found is None:
        raise NoSubscription(f"tenant '{slug}' has no subscription", hint="it is created when the tenant is provisioned")
    return found


async def update(conn: AsyncConnection, sub: Subscription, **values: Any) -> Subscription:
    """Write `values` on the subscription row and read it back (still locked)."""
    subs = catalog.platform_tables()["subscriptions"]
    await conn.execute(subs.update().where(subs.c.id == sub.id).values(**values))
    fresh = await load(conn, id=sub.id)
    assert fresh is not None  # locked by this transaction: it cannot be gone
    return fresh


async def note(conn: AsyncConnection, sub: Subscription, cause: str, *, actor: str | None,
               data: dict[str, Any] | None = None, notify: bool = True) -> None:
    """Audit `billing.<cause>` and (unless `notify` is false) send it to the tenant's webhooks (a change that
    keeps the state)."""
    body = {"subscription": sub.as_dict(), **(data or {})}
    await audit.record(conn, f"billing.{cause}", tenant_id=sub.tenant_id, actor=actor, entity="subscriptions",
                       record_id=sub.id, data=body)
    if notify:
        await enqueue_platform_event(conn, sub.tenant_id, sub.slug, f"billing.{cause}", body)


async def transition(conn: AsyncConnection, sub: Subscription, to: str, cause: str, *, actor: str | None = None,
                     data: dict[str, Any] | None = None, **values: Any) -> Subscription:
    """Move `sub` (locked by this transaction) to state `to` because of `cause` (e.g. `payment_failed`),
    writing `values` beside it; suspends or reactivates its tenant as the state requires."""
    if to not in STATES:
        raise BillingTransitionRefused(f"'{to}' is not a billing state")
    if to != sub.status and to not in TRANSITIONS[sub.status]:
        raise BillingTransitionRefused(f"the subscription of '{sub.slug}' is {sub.status}; it cannot become {to}",
                                       hint=f"from {sub.status}: {', '.join(sorted(TRANSITIONS[sub.status]))}")
    before = sub.status
    if to != before:
        values["status_changed_at"] = sa.func.now()
    if to != "past_due":
        values.setdefault("grace_until", None)
    fresh = await update(conn, sub, status=to, **values)
    await _tenant_follows(conn, fresh, before, actor)
    await note(conn, fresh, cause, actor=actor, data={"from": before, "to": to, **(data or {})})
    return fresh


async def _tenant_follows(conn: AsyncConnection, sub: Subscription, before: str, actor: str | None) -> None:
    """Suspend the tenant for `payment_overdue`, or lift that suspension (and no other) once paid."""
    tenants = catalog.platform_tables()["tenants"]
    if sub.status == "suspended" and sub.tenant_status == "active":
        await conn.execute(tenants.update().where(tenants.c.id == sub.tenant_id)
                           .values(status="suspended", status_reason=PAYMENT_OVERDUE))
        revoked = await sessions.revoke(conn, sub.tenant_id, "tenant_suspended")
        await audit.record(conn, "tenant.suspended", tenant_id=sub.tenant_id, actor=actor, entity="tenants",
                           record_id=sub.tenant_id, data={"from": "active", "reason": PAYMENT_OVERDUE,
                                                          "sessions_revoked": revoked})
    elif (before == "suspended" and sub.status != "suspended" and sub.tenant_status == "suspended"
          and sub.tenant_status_reason == PAYMENT_OVERDUE):
        await conn.execute(tenants.update().where(tenants.c.id == sub.tenant_id)
                           .values(status="active", status_reason=None))
        await audit.record(conn, "tenant.active", tenant_id=sub.tenant_id, actor=actor, entity="tenants",
                           record_id=sub.tenant_id, data={"from": "suspended", "reason": "payment received"})
