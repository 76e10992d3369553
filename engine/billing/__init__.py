"""Billing: one state machine for a tenant's subscription, with Stripe or manual billing behind it.

Why a package of its own: the states (`trialing`, `active`, `past_due` with a grace period, `suspended` for
payment, `canceled`) and what moving between them does (the subscription row, the tenant's suspension
for `payment_overdue` and its reactivation, an audit entry, a `billing.*` event to the tenant's webhooks)
must happen in one place whatever moved them: a platform function, a Stripe webhook, the periodic sweep
or the CLI. `state.py` is that place; `backends.py` speaks to Stripe (the `stripe` library, when
`STRIPE_SECRET_KEY` is set) or records invoices without charging (manual billing); `operations.py` are the
operations the platform functions and the CLI call; `stripe_events.py` applies Stripe's webhook events;
`dashboard.py` computes the operator's figures. Nothing here imports the gateway or `functions/`.
"""
