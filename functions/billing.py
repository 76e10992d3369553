"""Billing as the platform's operations (`platform.yaml` binds them at /api/platform/functions/v1).

Thin on purpose: each checks its caller first (`functions/access.py`: the tenant's owner, or its
owners and admins for what only reads, or platform admins), then calls engine/billing, where the state
machine, Stripe and manual billing live.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from engine.billing import operations
from engine.errors import Forbidden, InvalidInput, Problem
from engine.hooks import HookContext, platform_function
from functions.access import MANAGERS, OWNERS, PLATFORM_ADMINS_ONLY, authorize, in_platform, is_platform_admin


@platform_function
async def preview_plan_change(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """What a plan change would cost now (prorated lines, amount due); changes nothing."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    return await operations.preview_plan_change(ctx.data.db, payload["tenant"], payload["plan"], payload.get("cycle"))


@platform_function
async def change_plan(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    return await operations.change_plan(ctx.data.db, payload["tenant"], payload["plan"], payload.get("cycle"),
                                        actor=actor.user_id)


@platform_function
async def cancel_subscription(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    return await operations.cancel(ctx.data.db, payload["tenant"], actor=actor.user_id)


@platform_function
async def resume_subscription(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    return await operations.resume(ctx.data.db, payload["tenant"], actor=actor.user_id)


@platform_function
async def comp_tenant(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], PLATFORM_ADMINS_ONLY)
    return await operations.comp(ctx.data.db, payload["tenant"], payload["plan"], actor=actor.user_id)


@platform_function
async def list_invoices(ctx: HookContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    await authorize(ctx, payload["tenant"], MANAGERS)
    return await operations.list_invoices(ctx.data.db, payload["tenant"])


@platform_function
async def report_usage(ctx: HookContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Bill metered usage up to `through` (yesterday by default): one tenant's, or everyone's."""
    in_platform(ctx)
    if not is_platform_admin(ctx):
        raise Forbidden("report_usage is for platform admins")
    through = None
    if "through" in payload:
        try:
            through = date.fromisoformat(payload["through"])
        except ValueError:
            raise InvalidInput("through must be a date (YYYY-MM-DD)",
                               details=[Problem("through", f"'{payload['through']}' is not a date")]) from None
    return await operations.report_usage(ctx.data.db, payload.get("tenant"), through=through,
                                         actor=ctx.caller.user_id)
