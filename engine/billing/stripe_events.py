"""Stripe's webhook events, applied to the state machine: each event id once, in one transaction.

The gateway's route (gateway/stripe_webhook.py) has verified the signature before anything here runs.
`apply` first stores the event's id in `billing_events`; an id already stored is a replay (Stripe
retries, or someone resends a captured request) and changes nothing. Then, by type:

- `checkout.session.completed`: the tenant (its `client_reference_id` or `metadata.backsaas_tenant`) has
  a Stripe customer and subscription now, and it is `active`;
- `invoice.paid`: the invoice is mirrored; a `past_due` or payment-`suspended` subscription is `active`
  again (and its tenant with it);
- `invoice.payment_failed`: the invoice is mirrored; the subscription is `past_due` until now + the
  plan's `grace_days` (the sweep then suspends the tenant for `payment_overdue`), with a
  `billing.payment_failed` event and audit entry;
- `customer.subscription.updated`: Stripe's status, period and cancel-at-period-end are taken over;
- `customer.subscription.deleted`: the subscription is `canceled`.

Other types are stored and otherwise ignored. What happened is the stored row's `outcome`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.billing import operations, state
from engine.billing.state import Subscription
from engine.database import Database

HANDLED = ("checkout.session.completed", "invoice.paid", "invoice.payment_failed", "customer.subscription.updated",
           "customer.subscription.deleted")
STRIPE_STATUS = {"trialing": "trialing", "active": "active", "past_due": "past_due", "unpaid": "past_due",
                 "canceled": "canceled", "incomplete_expired": "canceled"}


def _moment(stamp: Any) -> datetime | None:
    return datetime.fromtimestamp(int(stamp), UTC) if isinstance(stamp, int | float) and stamp else None


async def _subscription_of(conn: AsyncConnection, obj: dict[str, Any]) -> Subscription | None:
    """The subscription a Stripe object is about: by its customer, else by the tenant its metadata names."""
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if isinstance(customer, str) and customer:
        found = await state.load(conn, stripe_customer_id=customer)
        if found is not None:
            return found
    slug = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("backsaas_tenant")
    return await state.load(conn, slug=slug) if isinstance(slug, str) and slug else None


async def apply(db: Database, event: dict[str, Any]) -> dict[str, Any]:
    """Apply one verified Stripe event: `{"event", "type", "outcome", "replayed"}`."""
    events = catalog.platform_tables()["billing_events"]
    kind, obj = str(event.get("type") or ""), (event.get("data") or {}).get("object") or {}
    async with db.begin() as conn:
        stored = await conn.scalar(postgresql.insert(events).values(
            stripe_event_id=str(event["id"]), type=kind[:120], payload=event, outcome="received")
            .on_conflict_do_nothing(index_elements=[events.c.stripe_event_id]).returning(events.c.id))
        if stored is None:
            return {"event": event["id"], "type": kind, "outcome": "replayed: already applied", "replayed": True}
        sub = await _subscription_of(conn, obj) if kind in HANDLED else None
        if kind not in HANDLED:
            outcome = "ignored: not a type BackSaas acts on"
        elif sub is None:
            outcome = "ignored: no tenant has this customer"
        else:
            outcome = await HANDLERS[kind](conn, sub, obj)
        await conn.execute(events.update().where(events.c.id == stored)
                           .values(outcome=outcome[:200], tenant_id=sub.tenant_id if sub else None))
    return {"event": event["id"], "type": kind, "outcome": outcome, "replayed": False}


async def _move(conn: AsyncConnection, sub: Subscription, to: str, cause: str, **values: Any) -> str:
    """A transition the table allows, else the event is noted as ignored (Stripe's word is kept in
    `billing_events`, the subscription is left as it is)."""
    if to == sub.status:
        if values:
            await state.update(conn, sub, **values)
        return f"{cause}: already {to}"
    if to not in state.TRANSITIONS[sub.status]:
        return f"ignored: {sub.status} cannot become {to}"
    if to == "canceled":
        await operations.end(conn, sub, cause)
    else:
        await state.transition(conn, sub, to, cause, **values)
    return f"{cause}: {sub.status} -> {to}"


async def _checkout_completed(conn: AsyncConnection, sub: Subscription, obj: dict[str, Any]) -> str:
    ids = {"stripe_customer_id": obj.get("customer") or sub.stripe_customer_id,
           "stripe_subscription_id": obj.get("subscription") or sub.stripe_subscription_id, "backend": "stripe"}
    return await _move(conn, sub, "active", "checkout_completed", **ids)


async def _invoice_paid(conn: AsyncConnection, sub: Subscription, obj: dict[str, Any]) -> str:
    await operations.mirror_invoice(conn, sub, {**obj, "status": "paid"})
    if sub.status in ("past_due", "suspended"):
        return await _move(conn, sub, "active", "payment_succeeded")
    return f"invoice mirrored: {sub.status}"


async def _payment_failed(conn: AsyncConnection, sub: Subscription, obj: dict[str, Any]) -> str:
    await operations.mirror_invoice(conn, sub, {**obj, "status": "open"})
    detail = {"invoice": obj.get("id"), "amount_due_cents": obj.get("amount_due"),
              "attempt_count": obj.get("attempt_count")}
    if sub.status in ("trialing", "active"):
        grace_until = datetime.now(UTC) + timedelta(days=sub.plan.grace_days)
        await state.transition(conn, sub, "past_due", "payment_failed", data={**detail, "grace_until": grace_until.isoformat()},
                               grace_until=grace_until)
        return f"payment_failed: {sub.status} -> past_due until {grace_until.isoformat()}"
    if sub.status == "past_due":  # a retry failed too: noted, the grace period is not extended
        await state.note(conn, sub, "payment_failed", actor=None, data=detail)
        return "payment_failed: still past_due"
    return f"ignored: the subscription is {sub.status}"


async def _subscription_updated(conn: AsyncConnection, sub: Subscription, obj: dict[str, Any]) -> str:
    if obj.get("id") != sub.stripe_subscription_id:  # e.g. the one a comp ended
        return "ignored: not the tenant's current subscription"
    items = ((obj.get("items") or {}).get("data") or [{}])
    values = {"cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
              "current_period_start": _moment(obj.get("current_period_start") or items[0].get("current_period_start"))
              or sub.current_period_start,
              "current_period_end": _moment(obj.get("current_period_end") or items[0].get("current_period_end"))
              or sub.current_period_end,
              "trial_end": _moment(obj.get("trial_end")) or sub.trial_end}
    to = STRIPE_STATUS.get(str(obj.get("status")))
    if to is None:
        await state.update(conn, sub, **values)
        return f"updated; Stripe's status {obj.get('status')} keeps {sub.status}"
    if to == "past_due" and sub.status != "past_due":
        values["grace_until"] = datetime.now(UTC) + timedelta(days=sub.plan.grace_days)
    return await _move(conn, sub, to, "subscription_updated", **values)


async def _subscription_deleted(conn: AsyncConnection, sub: Subscription, obj: dict[str, Any]) -> str:
    if obj.get("id") != sub.stripe_subscription_id:
        return "ignored: not the tenant's current subscription"
    return await _move(conn, sub, "canceled", "canceled")


HANDLERS = {"checkout.session.completed": _checkout_completed, "invoice.paid": _invoice_paid,
            "invoice.payment_failed": _payment_failed, "customer.subscription.updated": _subscription_updated,
            "customer.subscription.deleted": _subscription_deleted}


