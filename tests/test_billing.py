"""Billing through the platform's public surface, against a local Stripe driven by the real `stripe` library.

Stripe is `localstripe` behind a thin translating proxy (tests/fake_stripe.py), started by this module;
`STRIPE_API_BASE` points the library at it. Webhook events are signed as Stripe signs them
(`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the endpoint's secret) and posted to the
gateway. Manual billing runs the same operations with `STRIPE_SECRET_KEY` unset.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import stripe

from engine import audit_trail, catalog
from engine.database import Database
from functions.users import create_platform_admin
from tests.fake_stripe import local_stripe
from tests.server import running_gateway
from tests.test_platform import PASSWORD, bearer, call, create_tenant, platform, sign_in, sign_up, wait_for

ADMIN_EMAIL = "billing-root@platform.example"
WEBHOOK_SECRET = "whsec_" + secrets.token_hex(16)
STRIPE_KEY = "sk_test_backsaas"
HOOKED_SCHEMA = """name: shop
entities:
  purchase:
    fields:
      total: {type: integer}
    permissions:
      read: {anon: all}
    hooks:
      after_create: [{webhook: "http://127.0.0.1:9/purchases", secret: SHOP_HOOK_SECRET}]
"""
# plans of this module beside the seeded ones (starter: 2,500 cents a month, a 14-day trial)
PLANS = [
    {"code": "basic", "name": "Basic", "price_monthly_cents": 1000, "price_yearly_cents": 10000, "trial_days": 0,
     "grace_days": 3, "usage_prices": {}},
    {"code": "premium", "name": "Premium", "price_monthly_cents": 3000, "price_yearly_cents": 30000, "trial_days": 0,
     "grace_days": 3, "usage_prices": {}},
    {"code": "metered", "name": "Metered", "price_monthly_cents": 500, "price_yearly_cents": 5000, "trial_days": 7,
     "grace_days": 3, "usage_prices": {"rest_calls": 0.5, "function_ms": 0.01}},
]


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[str]:
    with local_stripe() as url:
        yield url


@pytest.fixture(scope="module")
async def base(db: Database, database_url: str, fake_stripe: str) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")}
    os.environ.update(STRIPE_SECRET_KEY=STRIPE_KEY, STRIPE_API_BASE=fake_stripe, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        for plan in PLANS:
            await conn.execute(plans.insert().values(**plan, limits={}, features={}))
    try:
        with running_gateway(database_url, outbox={"base_delay": 0.05}) as url:
            yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def client(fake_stripe: str) -> stripe.StripeClient:
    """What the test sees of Stripe: the same fake, through the same library."""
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe})


@pytest.fixture
def manual_billing() -> Iterator[None]:
    """Stripe unconfigured for what starts during the test (the gateway runs in this process)."""
    key = os.environ.pop("STRIPE_SECRET_KEY")
    try:
        yield
    finally:
        os.environ["STRIPE_SECRET_KEY"] = key


@pytest.fixture(scope="module")
def admin(base: str) -> dict[str, Any]:
    return sign_in(base, ADMIN_EMAIL)


def new_owner(base: str) -> dict[str, Any]:
    return sign_up(base, f"owner-{secrets.token_hex(4)}@example.com")


def tenant_on(base: str, owner: dict[str, Any], plan: str, **fields: Any) -> str:
    slug = f"t{secrets.token_hex(4)}"
    made = create_tenant(base, owner, slug, plan=plan, **fields)  # waits for provisioning
    assert made["status"] == "active", made
    return slug


def subscription(base: str, session: dict[str, Any], slug: str) -> dict[str, Any]:
    rows = httpx.get(platform(base, "rest/v1/subscriptions"), params={"select": "*,tenant(slug),plan(code)",
                                                                      "tenant.slug": f"eq.{slug}"},
                     headers=bearer(session)).json()
    found = [row for row in rows if row["tenant"] is not None]
    assert len(found) == 1, rows
    return found[0]


def tenant_row(base: str, session: dict[str, Any], slug: str) -> dict[str, Any]:
    return httpx.get(platform(base, "rest/v1/tenants"), params={"slug": f"eq.{slug}"}, headers=bearer(session)).json()[0]


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """The Stripe-Signature header as Stripe computes it."""
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def stripe_event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps({"id": event_id or f"evt_{secrets.token_hex(8)}", "object": "event", "type": kind,
                       "api_version": "2025-01-27", "created": int(time.time()), "livemode": False,
                       "data": {"object": obj}}).encode()


def post_event(base: str, body: bytes, signature: str | None = None) -> httpx.Response:
    return httpx.post(f"{base}/api/platform/billing/stripe/webhook", content=body,
                      headers={"Stripe-Signature": signature or sign(body), "Content-Type": "application/json"})


def backsaas_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def audit_actions(db: Database, slug: str) -> list[str]:
    tables = catalog.platform_tables()
    audit_log, tenants = tables["audit_log"], tables["tenants"]
    await audit_trail.seal(db)
    async with db.engine.connect() as conn:
        return list((await conn.scalars(sa.select(audit_log.c.action).join(tenants, tenants.c.id == audit_log.c.tenant_id)
                                        .where(tenants.c.slug == slug).order_by(audit_log.c.created_at))).all())


# -- Stripe --


def test_a_tenant_on_a_paid_plan_gets_a_stripe_customer_and_a_trialing_subscription(base, client):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    assert sub["backend"] == "stripe" and sub["status"] == "trialing" and sub["plan"]["code"] == "starter"
    assert sub["stripe_customer_id"].startswith("cus_") and sub["stripe_subscription_id"].startswith("sub_")
    trial_end = datetime.fromisoformat(sub["trial_end"])
    assert timedelta(days=13) < trial_end - datetime.now(UTC) <= timedelta(days=14)
    customer = client.v1.customers.retrieve(sub["stripe_customer_id"])
    assert customer.metadata["backsaas_tenant"] == slug and customer.email == owner["user"]["email"]
    remote = client.v1.subscriptions.retrieve(sub["stripe_subscription_id"]).to_dict()
    assert remote["customer"] == customer.id
    assert remote["items"]["data"][0]["plan"]["id"] == "backsaas-starter-month-2500-usd"
    assert remote["items"]["data"][0]["plan"]["amount"] == 2500


def test_a_tenant_on_the_free_plan_has_no_stripe_customer(base):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "free")
    sub = subscription(base, owner, slug)
    assert sub["status"] == "active" and sub["backend"] == "manual" and sub["stripe_customer_id"] is None


def pay_first_invoice(client: stripe.StripeClient, sub: dict[str, Any]) -> dict[str, Any]:
    """What the customer does at Stripe's Checkout: a card, and the subscription's first invoice paid."""
    card = client.v1.payment_methods.create({"type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                                                      "exp_year": 2030, "cvc": "123"}})
    client.v1.payment_methods.attach(card.id, {"customer": sub["stripe_customer_id"]})
    client.v1.customers.update(sub["stripe_customer_id"], {"invoice_settings": {"default_payment_method": card.id}})
    invoice = client.v1.invoices.create({"customer": sub["stripe_customer_id"],
                                         "subscription": sub["stripe_subscription_id"]})
    return client.v1.invoices.pay(invoice.id).to_dict()


def test_a_plan_change_is_previewed_prorated_then_applied(base, client):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    paid = pay_first_invoice(client, sub)
    assert paid["status"] == "paid" and paid["amount_paid"] == 2500

    preview = call(base, "preview_plan_change", owner, tenant=slug, plan="pro")
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert shown["from"] == {"plan": "starter", "cycle": "month"} and shown["to"] == {"plan": "pro", "cycle": "month"}
    assert shown["amount_due_cents"] == 9900 - 2500  # Stripe's: the new price, less the unused time already paid
    assert {(line["amount_cents"], line["proration"]) for line in shown["lines"]} == {(9900, False), (-2500, True)}
    assert subscription(base, owner, slug)["plan"]["code"] == "starter"  # a preview changes nothing

    changed = call(base, "change_plan", owner, tenant=slug, plan="pro")
    assert changed.status_code == 200, changed.text
    assert changed.json()["plan"] == "pro"
    remote = client.v1.subscriptions.retrieve(sub["stripe_subscription_id"]).to_dict()
    assert remote["items"]["data"][0]["plan"]["id"] == "backsaas-pro-month-9900-usd"
    assert subscription(base, owner, slug)["plan"]["code"] == "pro" and tenant_row(base, owner, slug)["plan"] == "pro"
    again = call(base, "change_plan", owner, tenant=slug, plan="pro")
    assert again.status_code == 400 and again.json()["code"] == "invalid_input"
    unknown = call(base, "change_plan", owner, tenant=slug, plan="platinum")
    assert unknown.status_code == 400 and unknown.json()["details"][0]["path"] == "plan"


async def test_a_plan_change_stripe_refuses_changes_nothing_and_one_it_accepts_is_audited(base, db):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    yearly = call(base, "change_plan", owner, tenant=slug, plan="pro", cycle="year")  # charges now: no card yet
    assert yearly.status_code == 502 and yearly.json()["code"] == "billing_provider_error", yearly.text
    assert "no payment method" in yearly.json()["message"]
    unchanged = subscription(base, owner, slug)
    assert (unchanged["plan"]["code"], unchanged["cycle"]) == ("starter", "month")
    assert "billing.plan_changed" not in await audit_actions(db, slug)
    changed = call(base, "change_plan", owner, tenant=slug, plan="pro")
    assert changed.status_code == 200, changed.text
    actions = await audit_actions(db, slug)
    assert "billing.subscribed" in actions and "billing.plan_changed" in actions


def test_a_subscription_canceled_at_period_end_can_be_resumed(base, client):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    canceled = call(base, "cancel_subscription", owner, tenant=slug)
    assert canceled.status_code == 200 and canceled.json()["cancel_at_period_end"] is True, canceled.text
    assert client.v1.subscriptions.retrieve(sub["stripe_subscription_id"]).cancel_at_period_end is True
    assert subscription(base, owner, slug)["status"] == "trialing"  # until the period ends
    twice = call(base, "cancel_subscription", owner, tenant=slug)
    assert twice.status_code == 400
    resumed = call(base, "resume_subscription", owner, tenant=slug)
    assert resumed.status_code == 200 and resumed.json()["cancel_at_period_end"] is False
    assert client.v1.subscriptions.retrieve(sub["stripe_subscription_id"]).cancel_at_period_end is False
    assert call(base, "resume_subscription", owner, tenant=slug).status_code == 409


async def seed_usage(db: Database, slug: str, rows: dict[tuple[date, str], int]) -> None:
    tables = catalog.platform_tables()
    async with db.begin() as conn:
        tenant_id = await conn.scalar(sa.select(tables["tenants"].c.id).where(tables["tenants"].c.slug == slug))
        await conn.execute(tables["usage_daily"].insert(), [
            {"tenant_id": tenant_id, "day": day, "metric": metric, "value": value} for (day, metric), value in rows.items()])


async def test_metered_usage_is_reported_to_stripe_once_per_day(base, client, db, admin, database_url):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "metered")
    sub = subscription(base, owner, slug)
    assert call(base, "report_usage", admin, tenant=slug).json() == []  # a trial's usage is free
    paid = post_event(base, stripe_event("checkout.session.completed", {
        "id": "cs_1", "object": "checkout.session", "client_reference_id": slug, "customer": sub["stripe_customer_id"],
        "subscription": sub["stripe_subscription_id"]}))
    assert paid.status_code == 200, paid.text
    today = datetime.now(UTC).date()
    subs = catalog.platform_tables()["subscriptions"]
    async with db.begin() as conn:  # as if its usage had been billed up to three days ago
        await conn.execute(subs.update().where(subs.c.id == sub["id"]).values(usage_reported_through=today - timedelta(days=3)))
    await seed_usage(db, slug, {(today, "rest_calls"): 1000,  # today is not over: not billed yet
                                (today - timedelta(days=3), "rest_calls"): 1000,  # billed already
                                (today - timedelta(days=2), "rest_calls"): 10,
                                (today - timedelta(days=1), "rest_calls"): 20,
                                (today - timedelta(days=1), "function_ms"): 250,
                                (today - timedelta(days=1), "graphql_calls"): 999})  # not priced by the plan
    reported = call(base, "report_usage", admin, tenant=slug)
    assert reported.status_code == 200, reported.text
    [report] = reported.json()
    assert report["amount_cents"] == 15 + 3 and report["from"] == str(today - timedelta(days=2))
    assert report["through"] == str(today - timedelta(days=1))
    customer = subscription(base, owner, slug)["stripe_customer_id"]
    items = client.v1.invoice_items.list({"customer": customer}).data
    assert sorted(item.amount for item in items) == [3, 15]
    assert {item.metadata["metric"] for item in items} == {"rest_calls", "function_ms"}

    again = backsaas_cli(database_url, "billing", "report-usage", "--tenant", slug, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == []  # those days are billed already
    assert len(client.v1.invoice_items.list({"customer": customer}).data) == 2


# -- webhooks --


def test_a_webhook_with_a_bad_signature_a_stale_timestamp_or_no_signature_is_refused(base, admin):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    body = stripe_event("invoice.payment_failed", {"id": "in_forged", "object": "invoice",
                                                   "customer": sub["stripe_customer_id"], "amount_due": 2500})
    forged = post_event(base, body, sign(body, secret="whsec_not_the_secret"))
    stale = post_event(base, body, sign(body, at=int(time.time()) - 301))
    unsigned = httpx.post(f"{base}/api/platform/billing/stripe/webhook", content=body)
    tampered = post_event(base, body.replace(b"2500", b"9999"), sign(body))
    for refused in (forged, stale, unsigned, tampered):
        assert refused.status_code == 400 and refused.json()["code"] == "signature_invalid", refused.text
    assert subscription(base, owner, slug)["status"] == "trialing"
    events = httpx.get(platform(base, "rest/v1/billing_events"), headers=bearer(admin)).json()
    assert all(event["stripe_event_id"] != json.loads(body)["id"] for event in events)


def test_a_replayed_webhook_event_changes_nothing(base, admin):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    event_id = f"evt_{secrets.token_hex(8)}"
    body = stripe_event("invoice.payment_failed", {"id": f"in_{secrets.token_hex(6)}", "object": "invoice",
                                                   "customer": sub["stripe_customer_id"], "amount_due": 2500,
                                                   "currency": "usd", "status": "open"}, event_id)
    first = post_event(base, body)
    assert first.status_code == 200 and first.json()["replayed"] is False, first.text
    grace_until = subscription(base, owner, slug)["grace_until"]
    time.sleep(1.1)
    replay = post_event(base, body)  # the same event, freshly signed
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    after = subscription(base, owner, slug)
    assert after["status"] == "past_due" and after["grace_until"] == grace_until
    stored = httpx.get(platform(base, "rest/v1/billing_events"), params={"stripe_event_id": f"eq.{event_id}"},
                       headers=bearer(admin)).json()
    assert len(stored) == 1 and stored[0]["outcome"].startswith("payment_failed")


async def test_dunning_suspends_the_tenant_after_its_grace_period_and_a_payment_reactivates_it(base, db, admin,
                                                                                               database_url):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter", initial_schema=HOOKED_SCHEMA)
    sub = subscription(base, owner, slug)
    invoice = {"id": f"in_{secrets.token_hex(6)}", "object": "invoice", "customer": sub["stripe_customer_id"],
               "subscription": sub["stripe_subscription_id"], "amount_due": 2500, "amount_paid": 0,
               "currency": "usd", "status": "open", "attempt_count": 1}
    failed = post_event(base, stripe_event("invoice.payment_failed", invoice))
    assert failed.status_code == 200, failed.text
    past_due = subscription(base, owner, slug)
    assert past_due["status"] == "past_due"
    grace = datetime.fromisoformat(past_due["grace_until"]) - datetime.now(UTC)
    assert timedelta(days=6) < grace <= timedelta(days=7)  # starter's grace_days
    assert tenant_row(base, owner, slug)["status"] == "active"  # still serving during the grace period
    outbox = httpx.get(platform(base, "rest/v1/events"), params={"entity": "eq.billing.payment_failed"},
                       headers=bearer(owner)).json()
    assert [(e["target"], e["payload"]["event"], e["payload"]["to"]) for e in outbox] == [
        ("http://127.0.0.1:9/purchases", "billing.payment_failed", "past_due")]
    assert "billing.payment_failed" in await audit_actions(db, slug)

    swept = backsaas_cli(database_url, "billing", "sweep", "--json")
    assert swept.returncode == 0 and slug not in json.loads(swept.stdout)["suspended"]  # grace not over
    subs = catalog.platform_tables()["subscriptions"]
    async with db.begin() as conn:  # the grace period runs out
        await conn.execute(subs.update().where(subs.c.id == past_due["id"])
                           .values(grace_until=datetime.now(UTC) - timedelta(seconds=1)))
    swept = backsaas_cli(database_url, "billing", "sweep", "--json")
    assert swept.returncode == 0 and slug in json.loads(swept.stdout)["suspended"], swept.stderr
    tenant = tenant_row(base, owner, slug)
    assert tenant["status"] == "suspended" and tenant["status_reason"] == "payment_overdue"
    assert subscription(base, owner, slug)["status"] == "suspended"
    refused = wait_for(lambda: (r := httpx.get(f"{base}/api/tenants/{slug}/rest/v1/purchase")).status_code == 403 and r)
    assert refused.json()["code"] == "tenant_suspended"

    paid = post_event(base, stripe_event("invoice.paid", {**invoice, "status": "paid", "amount_paid": 2500}))
    assert paid.status_code == 200 and paid.json()["outcome"] == "payment_succeeded: suspended -> active", paid.text
    assert tenant_row(base, owner, slug)["status"] == "active"
    assert subscription(base, owner, slug)["status"] == "active"
    wait_for(lambda: httpx.get(f"{base}/api/tenants/{slug}/rest/v1/purchase").status_code == 200)
    invoices = call(base, "list_invoices", owner, tenant=slug).json()
    mirrored = [i for i in invoices if i["stripe_invoice_id"] == invoice["id"]]
    assert len(mirrored) == 1 and mirrored[0]["status"] == "paid" and mirrored[0]["amount_paid_cents"] == 2500
    actions = await audit_actions(db, slug)
    assert {"billing.payment_failed", "billing.payment_overdue", "tenant.suspended", "billing.payment_succeeded",
            "tenant.active"} <= set(actions)


def test_a_tenant_suspended_by_an_admin_stays_suspended_when_it_pays(base, admin):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    assert call(base, "suspend_tenant", admin, tenant=slug, reason="abuse").status_code == 200
    paid = post_event(base, stripe_event("invoice.paid", {"id": f"in_{secrets.token_hex(6)}", "object": "invoice",
                                                          "customer": sub["stripe_customer_id"], "amount_paid": 2500,
                                                          "status": "paid"}))
    assert paid.status_code == 200
    tenant = tenant_row(base, admin, slug)
    assert tenant["status"] == "suspended" and tenant["status_reason"] == "abuse"


def test_stripe_subscription_updates_and_deletion_are_taken_over(base):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    obj = {"id": sub["stripe_subscription_id"], "object": "subscription", "customer": sub["stripe_customer_id"],
           "status": "active", "cancel_at_period_end": True, "current_period_start": int(time.time()),
           "current_period_end": int(time.time()) + 30 * 86400}
    updated = post_event(base, stripe_event("customer.subscription.updated", obj))
    assert updated.status_code == 200 and updated.json()["outcome"] == "subscription_updated: trialing -> active"
    after = subscription(base, owner, slug)
    assert after["status"] == "active" and after["cancel_at_period_end"] is True
    deleted = post_event(base, stripe_event("customer.subscription.deleted", {**obj, "status": "canceled"}))
    assert deleted.status_code == 200, deleted.text
    ended = subscription(base, owner, slug)
    assert ended["status"] == "canceled" and ended["canceled_at"] is not None
    assert tenant_row(base, owner, slug)["plan"] == "free"  # back to the free plan


def test_checkout_completion_activates_the_subscription(base):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    done = post_event(base, stripe_event("checkout.session.completed", {
        "id": f"cs_{secrets.token_hex(6)}", "object": "checkout.session", "client_reference_id": slug,
        "customer": sub["stripe_customer_id"], "subscription": sub["stripe_subscription_id"]}))
    assert done.status_code == 200 and done.json()["outcome"] == "checkout_completed: trialing -> active", done.text
    assert subscription(base, owner, slug)["status"] == "active"


def test_an_event_of_an_unknown_customer_or_type_is_stored_and_ignored(base):
    unknown = post_event(base, stripe_event("invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_nobody"}))
    assert unknown.status_code == 200 and unknown.json()["outcome"] == "ignored: no tenant has this customer"
    other = post_event(base, stripe_event("charge.refunded", {"id": "ch_x", "object": "charge"}))
    assert other.status_code == 200 and other.json()["outcome"].startswith("ignored")


# -- comps, manual billing --


def test_a_platform_admin_comps_a_tenant_and_stripe_stops_charging(base, admin, client, database_url):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    assert call(base, "comp_tenant", owner, tenant=slug, plan="enterprise").status_code == 403
    comped = call(base, "comp_tenant", admin, tenant=slug, plan="enterprise")
    assert comped.status_code == 200, comped.text
    assert comped.json()["comped"] is True and comped.json()["price_cents"] == 0
    assert client.v1.subscriptions.retrieve(sub["stripe_subscription_id"]).status == "canceled"
    after = subscription(base, owner, slug)
    assert after["status"] == "active" and after["plan"]["code"] == "enterprise" and after["stripe_subscription_id"] is None
    assert tenant_row(base, owner, slug)["plan"] == "enterprise"
    by_cli = backsaas_cli(database_url, "billing", "comp", slug, "--plan", "pro", "--json")
    assert by_cli.returncode == 0, by_cli.stderr
    assert json.loads(by_cli.stdout)["plan"] == "pro"


def test_manual_billing_records_invoices_without_stripe(base, manual_billing, client):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "basic")
    sub = subscription(base, owner, slug)
    assert sub["backend"] == "manual" and sub["status"] == "active" and sub["stripe_customer_id"] is None
    [first] = call(base, "list_invoices", owner, tenant=slug).json()
    assert first["backend"] == "manual" and first["status"] == "open" and first["amount_due_cents"] == 1000

    preview = call(base, "preview_plan_change", owner, tenant=slug, plan="premium").json()
    credit, charge = (line["amount_cents"] for line in preview["lines"])
    assert -1000 <= credit < -990 and 2970 < charge <= 3000  # the period has barely started
    assert preview["amount_due_cents"] == credit + charge
    assert call(base, "change_plan", owner, tenant=slug, plan="premium").status_code == 200
    invoices = call(base, "list_invoices", owner, tenant=slug).json()
    assert [i["kind"] for i in invoices] == ["proration", "subscription"]
    assert abs(invoices[0]["amount_due_cents"] - preview["amount_due_cents"]) <= 1
    assert subscription(base, owner, slug)["plan"]["code"] == "premium"
    assert client.v1.customers.list({"email": owner["user"]["email"]}).data == []  # Stripe never heard of it


async def test_manual_trials_and_periods_move_with_the_sweep(base, db, manual_billing, database_url):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    sub = subscription(base, owner, slug)
    assert sub["backend"] == "manual" and sub["status"] == "trialing"
    assert call(base, "list_invoices", owner, tenant=slug).json() == []  # nothing owed during the trial
    subs = catalog.platform_tables()["subscriptions"]
    ended = datetime.now(UTC) - timedelta(minutes=1)
    async with db.begin() as conn:
        await conn.execute(subs.update().where(subs.c.id == sub["id"]).values(trial_end=ended, current_period_end=ended))
    swept = backsaas_cli(database_url, "billing", "sweep", "--json")
    assert slug in json.loads(swept.stdout)["trial_ended"], swept.stderr
    active = subscription(base, owner, slug)
    assert active["status"] == "active" and datetime.fromisoformat(active["current_period_start"]) == ended
    [invoice] = call(base, "list_invoices", owner, tenant=slug).json()
    assert invoice["amount_due_cents"] == 2500 and invoice["kind"] == "subscription"

    assert call(base, "cancel_subscription", owner, tenant=slug).status_code == 200
    async with db.begin() as conn:
        await conn.execute(subs.update().where(subs.c.id == sub["id"]).values(current_period_end=datetime.now(UTC)))
    swept = backsaas_cli(database_url, "billing", "sweep", "--json")
    assert slug in json.loads(swept.stdout)["canceled"]
    assert subscription(base, owner, slug)["status"] == "canceled"
    assert tenant_row(base, owner, slug)["plan"] == "free"


# -- who may --


def test_no_billing_function_answers_another_tenants_owner_a_member_an_end_user_or_anon(base, admin):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    stranger = new_owner(base)
    tenant_on(base, stranger, "free")  # an owner, of another tenant
    invited = call(base, "invite_member", owner, tenant=slug, email=f"dev-{slug}@example.com", role="developer")
    call(base, "accept_invitation", None, token=invited.json()["token"], password=PASSWORD)
    developer = sign_in(base, f"dev-{slug}@example.com")
    keys = call(base, "reveal_keys", owner, tenant=slug).json()["keys"]
    end_user = httpx.post(f"{base}/api/tenants/{slug}/auth/v1/signup", headers={"apikey": keys["anon"]},
                          json={"email": "user@example.com", "password": PASSWORD}).json()
    calls = {"preview_plan_change": {"tenant": slug, "plan": "pro"}, "change_plan": {"tenant": slug, "plan": "pro"},
             "cancel_subscription": {"tenant": slug}, "resume_subscription": {"tenant": slug},
             "comp_tenant": {"tenant": slug, "plan": "pro"}, "list_invoices": {"tenant": slug},
             "report_usage": {"tenant": slug}}
    for name, payload in calls.items():
        for who in (stranger, developer):
            refused = call(base, name, who, **payload)
            assert refused.status_code == 403, (name, refused.text)
        anon = call(base, name, None, **payload)
        assert anon.status_code in (401, 403), (name, anon.text)
        as_end_user = httpx.post(platform(base, f"functions/v1/{name}"), json=payload, headers=bearer(end_user))
        assert as_end_user.status_code == 401, (name, as_end_user.text)  # another tenant's token
        in_tenant = httpx.post(f"{base}/api/tenants/{slug}/functions/v1/{name}", json=payload,
                               headers={"apikey": keys["service"]})
        assert in_tenant.status_code == 404, (name, in_tenant.text)  # no such function in a tenant
    assert subscription(base, owner, slug)["plan"]["code"] == "starter"
    for name in ("subscriptions", "invoices", "billing_events"):
        seen = httpx.get(platform(base, f"rest/v1/{name}"), params={"select": "tenant(slug)"}, headers=bearer(stranger))
        assert all(row["tenant"] is None or row["tenant"]["slug"] != slug for row in seen.json()), name
        anonymous = httpx.get(platform(base, f"rest/v1/{name}"))
        assert anonymous.status_code in (401, 403) or anonymous.json() == [], (name, anonymous.text)


def test_bad_input_is_refused_with_the_field(base, admin):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    wrong_cycle = call(base, "change_plan", owner, tenant=slug, plan="pro", cycle="week")
    assert wrong_cycle.status_code == 422, wrong_cycle.text
    bad_day = call(base, "report_usage", admin, through="yesterday")
    assert bad_day.status_code in (400, 422) and bad_day.json()["details"], bad_day.text
    for name, payload in (("change_plan", {"plan": "pro"}), ("report_usage", {}), ("list_invoices", {})):
        nobody = call(base, name, admin, tenant="no-such-tenant", **payload)
        assert nobody.status_code == 404 and nobody.json()["code"] == "tenant_not_found", (name, nobody.text)


def test_a_signed_webhook_that_is_no_event_or_is_misshapen_is_refused_with_nothing_applied(base):
    owner = new_owner(base)
    slug = tenant_on(base, owner, "starter")
    for body in (b"[]", b"null", b'"x"'):
        refused = post_event(base, body)
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_input", (body, refused.text)
    before = subscription(base, owner, slug)
    misshapen = stripe_event("invoice.paid", {"customer": before["stripe_customer_id"], "amount_paid": "abc",
                                              "id": "in_x", "object": "invoice"})
    refused = post_event(base, misshapen)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_input", refused.text
    assert subscription(base, owner, slug) == before
