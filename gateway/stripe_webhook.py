"""`POST /api/platform/billing/stripe/webhook`: Stripe's events, verified, then applied once.

The body is checked with the `stripe` library (`stripe.Webhook.construct_event`: the `Stripe-Signature`
header's HMAC-SHA256 with `STRIPE_WEBHOOK_SECRET`, and a timestamp at most 300 s away) before anything is
read from it: a bad signature or a stale timestamp is 400 `signature_invalid` and changes nothing. A
verified event goes to engine/billing/stripe_events.py, which stores its id once (a replay answers 200
and changes nothing, so Stripe stops retrying it). Without `STRIPE_WEBHOOK_SECRET` the route answers 503
`billing_not_configured`: it never accepts unsigned events.
"""

from __future__ import annotations

import os

import stripe
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.billing import stripe_events
from engine.billing.backends import BillingNotConfigured
from engine.errors import BackSaasError, InvalidInput, Problem

PATH = "/api/platform/billing/stripe/webhook"
SECRET = "STRIPE_WEBHOOK_SECRET"
TOLERANCE_SECONDS = 300
MAX_BODY = 1024 * 1024
log = structlog.get_logger("backsaas.billing")


class SignatureInvalid(BackSaasError):
    code = "signature_invalid"
    status = 400


async def stripe_webhook(request: Request) -> Response:
    try:
        secret = os.environ.get(SECRET)
        if not secret:
            raise BillingNotConfigured(f"Stripe webhooks are not accepted: {SECRET} is not set")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise InvalidInput("the event is too large", details=[Problem("body", f"more than {MAX_BODY} bytes")])
        try:
            event = stripe.Webhook.construct_event(body, request.headers.get("stripe-signature"), secret,
                                                   tolerance=TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            raise SignatureInvalid("the Stripe-Signature header does not verify (signature or timestamp)",
                                   details=[Problem("Stripe-Signature", str(exc.user_message or exc))]) from None
        except (ValueError, AttributeError, TypeError):  # the library reads a signed `[]` or `null` as an object
            raise InvalidInput("the event is not a JSON object", details=[Problem("body", "is not a JSON object")]) from None
        data = event.to_dict() if isinstance(event, stripe.Event) else None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise InvalidInput("the event is no Stripe event object with an id", details=[Problem("id", "is required")])
        try:
            result = await stripe_events.apply(request.app.state.db, data)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # signed, but not shaped as its type is
            # (the transaction rolled back: nothing of it was applied or stored)
            raise InvalidInput(f"the {data.get('type')} event is not shaped as Stripe sends it: {exc}",
                               details=[Problem("data.object", str(exc))]) from None
    except BackSaasError as error:
        log.info("billing.webhook_refused", code=error.code, message=error.message)
        return JSONResponse(error.as_dict(), status_code=error.status)
    log.info("billing.webhook", stripe_event=result["event"], type=result["type"], outcome=result["outcome"])
    return JSONResponse(result)
