"""Billing operations: what the platform functions (functions/billing.py), provisioning and the CLI call.

Each runs in one transaction that locks the tenant's subscription row, makes the provider's call (Stripe,
or nothing for manual billing) while holding it, and writes the outcome through the state machine
(state.py), so two operations on one tenant never interleave and a refused call changes nothing.
Manual billing records its invoices here (`invoices`, never charged); Stripe's come from Stripe.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.billing import state
from engine.billing.backends import Line, StripeBackend, default_backend
from engine.billing.periods import CYCLES, now, period_end, remaining_share
from engine.billing.state import Subscription
from engine.database import Database
from engine.errors import InvalidInput, Problem
from engine.plans import DEFAULT_PLAN, Plan

LIVE = ("trialing", "active", "past_due")  # states a plan change or a cancel applies to
BILLED = ("active", "past_due")  # states whose metered usage is billed (a trial's is free)


def _moment(stamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(stamp, UTC) if stamp else None


def _price(plan: Plan, cycle: str) -> int:
    return plan.price_yearly_cents if cycle == "year" else plan.price_monthly_cents


async def _plan(conn: AsyncConnection, code: str) -> tuple[str, Plan]:
    found = await state.find_plan(conn, code)
    if found is None:
        raise InvalidInput(f"no active plan '{code}'", details=[Problem("plan", f"no active plan '{code}'")])
    return found


def _cycle(cycle: str | None, default: str) -> str:
    chosen = cycle or default
    if chosen not in CYCLES:
        raise InvalidInput(f"cycle must be month or year, not '{chosen}'", details=[Problem("cycle", "month or year")])
    return chosen


async def record_invoice(conn: AsyncConnection, sub: Subscription, kind: str, lines: list[Line], *,
                         period: tuple[datetime | None, datetime | None] = (None, None)) -> str:
    """A manual invoice (`open`: recorded, never charged) of the lines' total."""
    invoices = catalog.platform_tables()["invoices"]
    return str(await conn.scalar(invoices.insert().values(
        tenant_id=sub.tenant_id, subscription_id=sub.id, backend="manual", kind=kind, status="open",
        currency=sub.plan.currency, amount_due_cents=sum(line.amount_cents for line in lines),
        period_start=period[0], period_end=period[1], lines=[line.as_dict() for line in lines])
        .returning(invoices.c.id)))


def _period_line(plan: Plan, cycle: str, start: datetime, end: datetime) -> Line:
    return Line(f"{plan.name or plan.code} ({cycle}ly), {start.date()} to {end.date()}", _price(plan, cycle))


# -- starting: provisioning --

async def subscribe(conn: AsyncConnection, tenant: Any, *, actor: str | None = None) -> Subscription:
    """The subscription of a tenant being provisioned (`tenant`: its `tenants` row), in the provisioning
    transaction: a paid plan gets a Stripe customer and subscription (with the plan's trial) when Stripe is
    configured, else a first manual invoice (unless it starts with a trial); a free plan is just recorded.
    `actor`: the platform account that created the tenant (the Stripe customer's email)."""
    plans = catalog.platform_tables()["plans"]
    plan_id, plan = await _plan(conn, tenant.plan)
    cycle = _cycle(None, await conn.scalar(sa.select(plans.c.interval).where(plans.c.id == plan_id)) or "month")
    paid = _price(plan, cycle) > 0
    backend = default_backend() if paid else "manual"
    start = now()
    trialing = paid and plan.trial_days > 0
    trial_end = start + timedelta(days=plan.trial_days) if trialing else None
    values: dict[str, Any] = {
        "tenant_id": tenant.id, "plan_id": plan_id, "status": "trialing" if trialing else "active", "cycle": cycle,
        "backend": backend, "current_period_start": start, "current_period_end": trial_end or period_end(start, cycle),
        "trial_end": trial_end, "status_changed_at": start}
    if backend == "stripe":
        users = catalog.platform_tables()["users"]
        email = await conn.scalar(sa.select(users.c.email).where(users.c.id == actor)) if actor else None
        attempt = int((tenant.provisioning or {}).get("attempts", 0))
        started = await StripeBackend().start(str(tenant.id), tenant.slug, tenant.name, email, plan, cycle,
                                              plan.trial_days if trialing else 0, attempt)
        values.update(stripe_customer_id=started.customer_id, stripe_subscription_id=started.subscription_id,
                      stripe_item_id=started.item_id)
        values["current_period_start"] = _moment(started.current_period_start) or start
        values["current_period_end"] = _moment(started.current_period_end) or values["current_period_end"]
    subs = catalog.platform_tables()["subscriptions"]
    await conn.execute(subs.insert().values(**values))
    sub = await state.load(conn, tenant_id=str(tenant.id))
    assert sub is not None
    if backend == "manual" and paid and not trialing:
        await record_invoice(conn, sub, "subscription", [_period_line(plan, cycle, start, values["current_period_end"])],
                             period=(start, values["current_period_end"]))
    # audited, not sent: a subscription made with the tenant is no news to the receivers its first schema
    # declares (they would get a billing event before the first change they were written for)
    await state.note(conn, sub, "subscribed", actor=actor, notify=False)
    return sub


# -- plan changes --

def _manual_preview(sub: Subscription, plan: Plan, cycle: str, at: datetime) -> list[Line]:
    """Stripe's proration, computed here: credit for the unused part of the current period at the old
    price, charge for it at the new one; a change of cycle starts a new full period now."""
    if sub.status == "trialing" or sub.comped:
        return []  # nothing is owed until the trial ends; a comped tenant pays nothing
    lines = []
    start, end = sub.current_period_start or at, sub.current_period_end or at
    share = remaining_share(start, end, at)
    unused = round(sub.price_cents * share)
    if unused:
        lines.append(Line(f"Unused time on {sub.plan.name or sub.plan.code} after {at.date()}", -unused, True))
    if cycle == sub.cycle:
        charge = round(_price(plan, cycle) * share)
        if charge:
            lines.append(Line(f"Remaining time on {plan.name or plan.code} after {at.date()}", charge, True))
    else:
        lines.append(_period_line(plan, cycle, at, period_end(at, cycle)))
    return lines


def _check_change(sub: Subscription, code: str, cycle: str) -> None:
    if sub.status not in LIVE:
        raise state.BillingTransitionRefused(
            f"the subscription of '{sub.slug}' is {sub.status}: its plan cannot change",
            hint="a suspended tenant pays its overdue invoice first; a platform admin can comp_tenant")
    if sub.plan.code == code and sub.cycle == cycle:
        raise InvalidInput(f"tenant '{sub.slug}' is already on {code} ({cycle}ly)",
                           details=[Problem("plan", "is the current plan")])


async def preview_plan_change(db: Database, slug: str, code: str, cycle: str | None = None) -> dict[str, Any]:
    """What changing plan now would cost: the prorated lines and the amount due (nothing is changed)."""
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        cycle = _cycle(cycle, sub.cycle)
        _check_change(sub, code, cycle)
        _, plan = await _plan(conn, code)
        if sub.backend == "stripe" and sub.stripe_subscription_id and not sub.comped:
            amount, currency, lines = await StripeBackend().preview_change(
                sub.stripe_customer_id or "", sub.stripe_subscription_id, sub.stripe_item_id or "", plan, cycle)
        else:
            lines = _manual_preview(sub, plan, cycle, now())
            amount, currency = max(0, sum(line.amount_cents for line in lines)), plan.currency
    return {"tenant": slug, "from": {"plan": sub.plan.code, "cycle": sub.cycle}, "to": {"plan": code, "cycle": cycle},
            "backend": sub.backend, "amount_due_cents": amount, "currency": currency,
            "lines": [line.as_dict() for line in lines]}


async def _set_tenant_plan(conn: AsyncConnection, tenant_id: str, code: str) -> None:
    """The tenant's plan as the gateway enforces it (its limits and features: the registry is notified)."""
    tenants = catalog.platform_tables()["tenants"]
    await conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(plan=code))


async def change_plan(db: Database, slug: str, code: str, cycle: str | None = None, *,
                      actor: str | None = None) -> dict[str, Any]:
    """Move the tenant to plan `code` now, prorated (Stripe prorates; manual billing records the same
    proration as an invoice)."""
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        cycle = _cycle(cycle, sub.cycle)
        _check_change(sub, code, cycle)
        plan_id, plan = await _plan(conn, code)
        at = now()
        values: dict[str, Any] = {"plan_id": plan_id, "cycle": cycle}
        lines: list[Line] = []
        if sub.backend == "stripe" and sub.stripe_subscription_id and not sub.comped:
            changed = await StripeBackend().change(sub.stripe_subscription_id, sub.stripe_item_id or "", plan, cycle)
            values.update(stripe_item_id=changed.item_id or sub.stripe_item_id,
                          current_period_start=_moment(changed.current_period_start) or sub.current_period_start,
                          current_period_end=_moment(changed.current_period_end) or sub.current_period_end)
        else:
            lines = _manual_preview(sub, plan, cycle, at)
            if cycle != sub.cycle and sub.status != "trialing":
                values.update(current_period_start=at, current_period_end=period_end(at, cycle))
        before = sub.plan.code
        sub = await state.update(conn, sub, **values)
        if lines and sum(line.amount_cents for line in lines) > 0:
            await record_invoice(conn, sub, "proration", lines, period=(at, sub.current_period_end))
        await _set_tenant_plan(conn, sub.tenant_id, code)
        await state.note(conn, sub, "plan_changed", actor=actor,
                         data={"from_plan": before, "lines": [line.as_dict() for line in lines]})
    return sub.as_dict()


# -- cancel, resume, comp --

async def cancel(db: Database, slug: str, *, actor: str | None = None) -> dict[str, Any]:
    """Cancel at the end of the current period (the tenant keeps its plan until then)."""
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        if sub.status not in LIVE:
            raise state.BillingTransitionRefused(f"the subscription of '{slug}' is {sub.status}: nothing to cancel")
        if sub.cancel_at_period_end:
            raise InvalidInput(f"the subscription of '{slug}' already ends with its period",
                               details=[Problem("tenant", "is already canceled at period end")])
        if sub.backend == "stripe" and sub.stripe_subscription_id:
            await StripeBackend().set_cancel_at_period_end(sub.stripe_subscription_id, True)
        sub = await state.update(conn, sub, cancel_at_period_end=True)
        await state.note(conn, sub, "cancel_scheduled", actor=actor)
    return sub.as_dict()


async def resume(db: Database, slug: str, *, actor: str | None = None) -> dict[str, Any]:
    """Undo a cancel at period end, before the period ends."""
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        if sub.status not in LIVE or not sub.cancel_at_period_end:
            raise state.BillingTransitionRefused(
                f"the subscription of '{slug}' is {sub.status}" + (", not canceled at period end" if sub.status in LIVE else ""),
                hint="resume_subscription undoes cancel_subscription before the period ends")
        if sub.backend == "stripe" and sub.stripe_subscription_id:
            await StripeBackend().set_cancel_at_period_end(sub.stripe_subscription_id, False)
        sub = await state.update(conn, sub, cancel_at_period_end=False)
        await state.note(conn, sub, "resumed", actor=actor)
    return sub.as_dict()


async def comp(db: Database, slug: str, code: str, *, actor: str | None = None) -> dict[str, Any]:
    """A platform admin gives the tenant plan `code` without charge: Stripe stops charging (its
    subscription ends now), the subscription is `active` and comped, a payment suspension is lifted."""
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        plan_id, _ = await _plan(conn, code)
        if sub.backend == "stripe" and sub.stripe_subscription_id:
            await StripeBackend().cancel_now(sub.stripe_subscription_id)
        at = now()
        sub = await state.transition(conn, sub, "active", "comped", actor=actor, data={"plan": code},
                                     plan_id=plan_id, comped=True, cancel_at_period_end=False, canceled_at=None,
                                     trial_end=None, stripe_subscription_id=None, stripe_item_id=None,
                                     current_period_start=at, current_period_end=period_end(at, sub.cycle))
        await _set_tenant_plan(conn, sub.tenant_id, code)
    return sub.as_dict()


async def end(conn: AsyncConnection, sub: Subscription, cause: str, *, actor: str | None = None) -> Subscription:
    """The subscription is over: `canceled`, and the tenant falls back to the default (free) plan."""
    ended = await state.transition(conn, sub, "canceled", cause, actor=actor, canceled_at=sa.func.now(),
                                   cancel_at_period_end=False)
    if await state.find_plan(conn, DEFAULT_PLAN) is not None:
        await _set_tenant_plan(conn, sub.tenant_id, DEFAULT_PLAN)
    return ended


# -- invoices --

def _invoice_values(sub: Subscription, invoice: dict[str, Any]) -> dict[str, Any]:
    status = str(invoice.get("status") or "open")
    return {"tenant_id": sub.tenant_id, "subscription_id": sub.id, "backend": "stripe", "kind": "subscription",
            "status": status if status in ("draft", "open", "paid", "void", "uncollectible") else "open",
            "currency": str(invoice.get("currency") or sub.plan.currency),
            "amount_due_cents": int(invoice.get("amount_due") or 0),
            "amount_paid_cents": int(invoice.get("amount_paid") or 0),
            "period_start": _moment(invoice.get("period_start")), "period_end": _moment(invoice.get("period_end")),
            "lines": [{"description": str(line.get("description") or ""), "amount_cents": int(line.get("amount") or 0)}
                      for line in (invoice.get("lines") or {}).get("data", [])],
            "stripe_invoice_id": invoice["id"], "hosted_url": invoice.get("hosted_invoice_url"),
            "paid_at": sa.func.now() if status == "paid" else None}


async def mirror_invoice(conn: AsyncConnection, sub: Subscription, invoice: dict[str, Any]) -> None:
    """Keep a Stripe invoice in `invoices` (by its Stripe id: the latest word wins)."""
    invoices = catalog.platform_tables()["invoices"]
    values = _invoice_values(sub, invoice)
    insert = postgresql.insert(invoices).values(**values)
    keep = {k: insert.excluded[k] for k in values if k not in ("tenant_id", "stripe_invoice_id", "paid_at")}
    keep["paid_at"] = sa.func.coalesce(invoices.c.paid_at, insert.excluded.paid_at)
    await conn.execute(insert.on_conflict_do_update(index_elements=[invoices.c.stripe_invoice_id], set_=keep))


async def list_invoices(db: Database, slug: str) -> list[dict[str, Any]]:
    """The tenant's invoices, newest first (a Stripe subscription's are fetched from Stripe first)."""
    invoices = catalog.platform_tables()["invoices"]
    async with db.begin() as conn:
        sub = await state.load_for_tenant(conn, slug)
        if sub.backend == "stripe" and sub.stripe_customer_id:
            for invoice in await StripeBackend().invoices(sub.stripe_customer_id):
                await mirror_invoice(conn, sub, invoice)
        rows = await conn.execute(sa.select(
            invoices.c.id, invoices.c.backend, invoices.c.kind, invoices.c.status, invoices.c.currency,
            invoices.c.amount_due_cents, invoices.c.amount_paid_cents, invoices.c.period_start, invoices.c.period_end,
            invoices.c.lines, invoices.c.stripe_invoice_id, invoices.c.hosted_url, invoices.c.paid_at,
            invoices.c.created_at).where(invoices.c.tenant_id == sub.tenant_id)
            .order_by(invoices.c.created_at.desc(), invoices.c.id))
        return [{str(k): (v.isoformat() if isinstance(v, datetime) else str(v) if k == "id" else v)
                 for k, v in r._asdict().items()} for r in rows]


# -- metered usage --

async def report_usage(db: Database, slug: str | None = None, *, through: date | None = None,
                       actor: str | None = None) -> list[dict[str, Any]]:
    """Bill the metered usage of every `active` or `past_due` subscription whose plan prices usage
    (`usage_prices`: cents per unit of a `usage_daily` metric), or of tenant `slug`: the whole days after
    the last report (the first time: from the day its trial ended, or it started) up to `through`
    (yesterday by default), each day once; a trial's usage is free. Stripe gets pending invoice items (billed with the
    next invoice); manual billing records an invoice. Answers what was reported per tenant."""
    through = through or (now().date() - timedelta(days=1))
    subs = catalog.platform_tables()["subscriptions"]
    tenants = catalog.platform_tables()["tenants"]
    async with db.engine.connect() as conn:
        if slug is not None:
            await catalog.active_tenant_id(conn, slug)  # TenantNotFound (404) for a tenant that is not there
        query = (sa.select(subs.c.tenant_id).join(tenants, tenants.c.id == subs.c.tenant_id)
                 .where(subs.c.status.in_(BILLED), subs.c.comped.is_(False)))
        if slug is not None:
            query = query.where(tenants.c.slug == slug)
        candidates = [str(r) for r in (await conn.scalars(query)).all()]
    reports = []
    for tenant_id in candidates:
        async with db.begin() as conn:
            sub = await state.load(conn, tenant_id=tenant_id)
            if sub is None or not sub.plan.usage_prices or sub.status not in BILLED or sub.comped:
                continue
            report = await _report_one(conn, sub, through, actor)
            if report is not None:
                reports.append(report)
    return reports


async def _report_one(conn: AsyncConnection, sub: Subscription, through: date, actor: str | None) -> dict[str, Any] | None:
    first = (sub.usage_reported_through + timedelta(days=1) if sub.usage_reported_through
             else (sub.trial_end or sub.created_at).date())
    if first > through:
        return None
    usage = catalog.platform_tables()["usage_daily"]
    prices = dict(sub.plan.usage_prices)
    totals = dict((await conn.execute(
        sa.select(usage.c.metric, sa.func.sum(usage.c.value))
        .where(usage.c.tenant_id == sub.tenant_id, usage.c.day >= first, usage.c.day <= through,
               usage.c.metric.in_(list(prices)))
        .group_by(usage.c.metric).order_by(usage.c.metric))).all())
    lines = [Line(f"{metric}: {int(quantity)} x {prices[metric]} cents ({first} to {through})",
                  math.floor(int(quantity) * float(prices[metric]) + 0.5), False,
                  {"metric": metric, "quantity": str(int(quantity)), "from": str(first), "through": str(through)})
             for metric, quantity in totals.items() if quantity]
    lines = [line for line in lines if line.amount_cents > 0]
    if lines and sub.backend == "stripe" and sub.stripe_customer_id:
        await StripeBackend().add_usage(sub.stripe_customer_id, sub.stripe_subscription_id, sub.plan.currency, lines,
                                        key=f"backsaas-usage-{sub.id}-{first}-{through}")
    elif lines:
        await record_invoice(conn, sub, "usage", lines, period=(
            datetime.combine(first, datetime.min.time(), UTC), datetime.combine(through, datetime.min.time(), UTC)))
    sub = await state.update(conn, sub, usage_reported_through=through)
    report = {"tenant": sub.slug, "from": str(first), "through": str(through), "backend": sub.backend,
              "amount_cents": sum(line.amount_cents for line in lines), "lines": [line.as_dict() for line in lines]}
    if lines:
        await state.note(conn, sub, "usage_reported", actor=actor, data={"usage": report})
    return report


# -- the periodic sweep --

async def sweep(db: Database, *, at: datetime | None = None) -> dict[str, list[str]]:
    """What time moves, for every subscription it is due for, each in its own transaction: the end of a
    grace period suspends the tenant (`payment_overdue`); for manual billing, a trial's end starts the
    first paid period (an invoice), a period's end renews it (an invoice) or ends a subscription canceled
    at period end. Stripe's subscriptions move by Stripe's webhooks instead, but for the grace period,
    which is ours. Answers the tenants each step touched."""
    at = at or now()
    subs = catalog.platform_tables()["subscriptions"]
    due = {
        "suspended": sa.and_(subs.c.status == "past_due", subs.c.grace_until <= at),
        "trial_ended": sa.and_(subs.c.backend == "manual", subs.c.status == "trialing", subs.c.trial_end <= at),
        "canceled": sa.and_(subs.c.backend == "manual", subs.c.status.in_(LIVE), subs.c.cancel_at_period_end,
                            subs.c.current_period_end <= at),
        "renewed": sa.and_(subs.c.backend == "manual", subs.c.status == "active", subs.c.cancel_at_period_end.is_(False),
                           subs.c.current_period_end <= at),
    }
    done: dict[str, list[str]] = {name: [] for name in due}
    for name, condition in due.items():
        async with db.engine.connect() as conn:
            ids = [str(i) for i in (await conn.scalars(sa.select(subs.c.id).where(condition))).all()]
        for sub_id in ids:
            async with db.begin() as conn:
                sub = await state.load(conn, id=sub_id)
                if sub is None or not (await conn.scalar(sa.select(sa.literal(True)).where(subs.c.id == sub_id, condition))):
                    continue  # moved since it was found
                await _sweep_one(conn, sub, name, at)
                done[name].append(sub.slug)
    return done


async def _sweep_one(conn: AsyncConnection, sub: Subscription, step: str, at: datetime) -> None:
    if step == "suspended":
        await state.transition(conn, sub, "suspended", "payment_overdue", data={"grace_until": str(sub.grace_until)})
    elif step == "canceled":
        await end(conn, sub, "canceled")
    else:
        start = sub.trial_end if step == "trial_ended" and sub.trial_end else (sub.current_period_end or at)
        finish = period_end(start, sub.cycle)
        if step == "trial_ended":
            sub = await state.transition(conn, sub, "active", "trial_ended", current_period_start=start,
                                         current_period_end=finish)
        else:
            sub = await state.update(conn, sub, current_period_start=start, current_period_end=finish)
            await state.note(conn, sub, "renewed")
        if sub.price_cents > 0:
            await record_invoice(conn, sub, "subscription", [_period_line(sub.plan, sub.cycle, start, finish)],
                                 period=(start, finish))
