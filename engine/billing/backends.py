"""The two ways a subscription is billed: Stripe (the `stripe` library) or manual (recorded, never charged).

`STRIPE_SECRET_KEY` set when a subscription starts makes it a Stripe one (`subscriptions.backend`), and it
stays one: its customer, subscription and prices live in Stripe, which charges and tells us what happened
through signed webhooks (stripe_events.py). `STRIPE_API_BASE` points the library at another server (the
tests' local fake of Stripe). Without a key the same state machine runs as manual billing: operations.py
records its invoices in `invoices`, and nothing is charged.

The library is synchronous: every call runs in a worker thread, with an idempotency key where a retry
must not create a second object (a customer per tenant, a subscription per provisioning). A Stripe
failure is `BillingProviderError` (502), never a half-written change: the callers hold the database
transaction open around the call, so it rolls back with it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import stripe

from engine.errors import BackSaasError
from engine.plans import Plan

SECRET_KEY = "STRIPE_SECRET_KEY"
API_BASE = "STRIPE_API_BASE"
T = TypeVar("T")


class BillingProviderError(BackSaasError):
    code = "billing_provider_error"
    status = 502


class BillingNotConfigured(BackSaasError):
    code = "billing_not_configured"
    status = 503


def stripe_configured() -> bool:
    return bool(os.environ.get(SECRET_KEY))


def default_backend() -> str:
    """Where a subscription starting now is billed."""
    return "stripe" if stripe_configured() else "manual"


def price_id(plan: Plan, cycle: str) -> str:
    """The Stripe price (a legacy Plan object, usable wherever a price is) of a plan, cycle and amount: a
    price edited on the plan is a new Stripe price, as Stripe prices are immutable."""
    amount = plan.price_yearly_cents if cycle == "year" else plan.price_monthly_cents
    return f"backsaas-{plan.code}-{cycle}-{amount}-{plan.currency}"


@dataclass(frozen=True)
class Line:
    """One line of an invoice or of a preview."""

    description: str
    amount_cents: int
    proration: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"description": self.description, "amount_cents": self.amount_cents, "proration": self.proration,
                **({"metadata": self.metadata} if self.metadata else {})}


@dataclass(frozen=True)
class Started:
    customer_id: str
    subscription_id: str
    item_id: str
    status: str  # Stripe's
    current_period_start: int | None
    current_period_end: int | None


class StripeBackend:
    """Stripe through its official library, against `STRIPE_API_BASE` when set."""

    def __init__(self, api_key: str | None = None, api_base: str | None = None) -> None:
        key = api_key or os.environ.get(SECRET_KEY)
        if not key:
            raise BillingNotConfigured("this subscription is billed by Stripe, but STRIPE_SECRET_KEY is not set")
        base = api_base or os.environ.get(API_BASE)
        self.client = stripe.StripeClient(key, base_addresses={"api": base} if base else {}, max_network_retries=2)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except stripe.StripeError as exc:
            raise BillingProviderError(f"Stripe refused to {what}: {exc.user_message or exc}") from exc

    async def ensure_price(self, plan: Plan, cycle: str) -> str:
        """The Stripe price of `plan` and `cycle`, created the first time it is needed."""
        identifier = price_id(plan, cycle)
        plans = self.client.v1.plans

        def find_or_create() -> str:
            try:
                return plans.retrieve(identifier).id
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise
            amount = plan.price_yearly_cents if cycle == "year" else plan.price_monthly_cents
            return plans.create({"id": identifier, "amount": amount, "currency": plan.currency, "interval": cycle,
                                 "product": {"name": f"BackSaas {plan.name or plan.code}"},
                                 "metadata": {"backsaas_plan": plan.code, "cycle": cycle}}).id

        return await self._call(f"find or create the price {identifier}", find_or_create)

    async def start(self, tenant_id: str, slug: str, name: str, email: str | None, plan: Plan, cycle: str,
                    trial_days: int, attempt: int) -> Started:
        """A customer for the tenant (one per tenant: idempotent by its id) and its subscription."""
        price = await self.ensure_price(plan, cycle)
        meta = {"backsaas_tenant": slug, "backsaas_tenant_id": tenant_id}

        def create() -> Started:
            customer = self.client.v1.customers.create(
                {"name": name, "metadata": meta, **({"email": email} if email else {})},
                {"idempotency_key": f"backsaas-customer-{tenant_id}"})
            params: dict[str, Any] = {"customer": customer.id, "items": [{"price": price}], "metadata": meta}
            if trial_days > 0:
                params["trial_period_days"] = trial_days
            else:  # the first invoice waits for a payment method (Checkout): checkout.session.completed
                params["payment_behavior"] = "default_incomplete"
            sub = self.client.v1.subscriptions.create(
                params, {"idempotency_key": f"backsaas-subscription-{tenant_id}-{attempt}"})
            return _started(customer.id, sub)

        return await self._call("create the customer and subscription", create)

    async def preview_change(self, customer_id: str, subscription_id: str, item_id: str, plan: Plan,
                             cycle: str) -> tuple[int, str, list[Line]]:
        """Stripe's preview of the next invoice if the subscription moved to `plan` now, prorated."""
        price = await self.ensure_price(plan, cycle)

        def preview() -> tuple[int, str, list[Line]]:
            invoice = self.client.v1.invoices.create_preview({
                "customer": customer_id, "subscription": subscription_id,
                "subscription_details": {"items": [{"id": item_id, "price": price}],
                                         "proration_behavior": "create_prorations",
                                         "proration_date": int(time.time())}})
            data = invoice.to_dict()
            lines = [Line(str(line.get("description") or ""), int(line.get("amount") or 0), _is_proration(line))
                     for line in (data.get("lines") or {}).get("data", [])]
            return int(data.get("amount_due") or 0), str(data.get("currency") or plan.currency), lines

        return await self._call("preview the plan change", preview)

    async def change(self, subscription_id: str, item_id: str, plan: Plan, cycle: str) -> Started:
        price = await self.ensure_price(plan, cycle)

        def change() -> Started:
            sub = self.client.v1.subscriptions.update(subscription_id, {
                "items": [{"id": item_id, "price": price}], "proration_behavior": "create_prorations",
                "metadata": {"backsaas_plan": plan.code}})
            return _started(str(sub.customer), sub)

        return await self._call("change the subscription's plan", change)

    async def set_cancel_at_period_end(self, subscription_id: str, cancel: bool) -> None:
        await self._call("cancel the subscription" if cancel else "resume the subscription",
                         lambda: self.client.v1.subscriptions.update(subscription_id, {"cancel_at_period_end": cancel}))

    async def cancel_now(self, subscription_id: str) -> None:
        await self._call("end the subscription", lambda: self.client.v1.subscriptions.cancel(subscription_id))

    async def add_usage(self, customer_id: str, subscription_id: str | None, currency: str, lines: list[Line],
                        key: str) -> list[str]:
        """Metered usage as pending invoice items of the customer, billed with the next invoice."""
        def create() -> list[str]:
            made = []
            for index, line in enumerate(lines):
                params: dict[str, Any] = {"customer": customer_id, "amount": line.amount_cents, "currency": currency,
                                          "description": line.description, "metadata": line.metadata}
                if subscription_id:
                    params["subscription"] = subscription_id
                made.append(self.client.v1.invoice_items.create(
                    params, {"idempotency_key": f"{key}-{index}"}).id)
            return made

        return await self._call("record metered usage", create)

    async def invoices(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's invoices as Stripe has them (newest first, the latest 100)."""
        return await self._call("list invoices", lambda: [
            invoice.to_dict() for invoice in self.client.v1.invoices.list({"customer": customer_id, "limit": 100}).data])


def _is_proration(line: dict[str, Any]) -> bool:
    if line.get("proration") is True:
        return True
    details = (line.get("parent") or {}).get("subscription_item_details") or {}
    return details.get("proration") is True


def _started(customer_id: str, sub: Any) -> Started:
    data = sub.to_dict()
    items = (data.get("items") or {}).get("data") or [{}]
    item = items[0]
    start = data.get("current_period_start") or item.get("current_period_start")
    end = data.get("current_period_end") or item.get("current_period_end")
    return Started(customer_id, data["id"], str(item.get("id") or ""), str(data.get("status") or ""), start, end)
