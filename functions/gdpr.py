"""A tenant's GDPR requests, processed from the platform by its owners and admins (the console's path).

The tenant's own admins use its `/privacy/v1` desk (gateway/privacy.py); a platform member acts from the
platform instead, with their platform token: the requests are readable through the platform's
`privacy_requests` entity (member scope), and `process_privacy_request {tenant, request, decision}` carries
one out or rejects it. It is a platform operation (`@platform_function`, bound by platform.yaml only) that
checks its caller itself (`functions.access.authorize`: a platform admin, or an owner or admin of the
tenant); the work is engine/gdpr.py's, on the tenant's runtime compiled for the occasion.
"""

from __future__ import annotations

from typing import Any

from engine import catalog, gdpr
from engine.errors import Problem, TenantNotFound, ValidationFailed
from engine.hooks import HookContext, platform_function
from engine.runtime import TenantRuntime
from engine.schema.loader import off_loop
from functions.access import MANAGERS, authorize


async def tenant_runtime(db: Any, slug: str) -> TenantRuntime:
    """The runtime of an active tenant, compiled from its deployed version (off the event loop)."""
    async with db.engine.connect() as conn:
        tenant = await catalog.find_tenant(conn, slug)
        version = await catalog.current_version(conn, tenant.id) if tenant and tenant.status == "active" else None
    if tenant is None or version is None:
        raise TenantNotFound(f"no active tenant '{slug}'")
    return await off_loop(TenantRuntime.compile, db, slug, tenant.id, version, what=f"the runtime of {slug}")


@platform_function
async def process_privacy_request(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """process_privacy_request: complete (carry out) or reject a pending request of the tenant's users."""
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    reason = payload.get("reason")
    if payload["decision"] == "reject" and not reason:
        raise ValidationFailed("a rejection gives its reason", details=[Problem("reason", "is required to reject")])
    runtime = await tenant_runtime(ctx.data.db, payload["tenant"])
    return await gdpr.process_request(ctx.data.db, runtime, payload["request"], actor.label, payload["decision"],
                                      reason)
