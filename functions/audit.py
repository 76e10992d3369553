"""The audit trail as platform operations (and the CLI's): read a tenant's entries, verify its chain,
export its daily heads, prune by plan.

Who may: platform admins for every tenant (and for all of them at once), a tenant's owners and admins
(memberships) for that tenant alone; nobody else, and a tenant's end users and API keys never (they are
not callers of the platform). The work is engine/audit_trail.py's.
"""

from __future__ import annotations

from typing import Any

from engine import audit_trail, catalog
from engine.database import Database
from engine.errors import Forbidden, TenantNotFound
from engine.hooks import HookContext, platform_function
from functions.access import MANAGERS, authorize, in_platform, is_platform_admin


async def tenant_id_of(db: Database, slug: str) -> str:
    """The id of tenant `slug`, whatever its status (a suspended or deleted tenant's trail stays readable)."""
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
    if tenant is None:
        raise TenantNotFound(f"no tenant '{slug}'")
    return str(tenant.id)


async def trail_tenant(ctx: HookContext, slug: str | None) -> str | None:
    """The tenant whose trail the caller may read: `slug`'s when they manage it (or are a platform admin);
    every tenant's (None) for a platform admin who names none."""
    if slug is None:
        in_platform(ctx)
        if not is_platform_admin(ctx):
            raise Forbidden("the whole platform's audit trail is for platform admins: name a tenant")
        return None
    await authorize(ctx, slug, MANAGERS)
    return await tenant_id_of(ctx.data.db, slug)


@platform_function
async def audit_entries(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A page of a tenant's trail (filters: actor, entity, record_id, action, since, until; `cursor`)."""
    tenant_id = await trail_tenant(ctx, payload.get("tenant"))
    query = audit_trail.Query.parse(tenant_id, {k: str(v) for k, v in payload.items() if k != "limit"})
    return await audit_trail.page(ctx.data.db, query, int(payload.get("limit", 100)))


@platform_function
async def verify_audit(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Verify a tenant's hash chain: `ok`, or the first broken link (`broken_at`, `problem`)."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    return (await audit_trail.verify(ctx.data.db, await tenant_id_of(ctx.data.db, payload["tenant"]))).as_dict()


@platform_function
async def audit_heads(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A tenant's chain head at the end of each day, for an auditor to keep."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    return {"tenant": payload["tenant"],
            "heads": await audit_trail.heads(ctx.data.db, await tenant_id_of(ctx.data.db, payload["tenant"]))}


async def prune_all(db: Database, slug: str | None = None) -> list[dict[str, Any]]:
    """Apply every tenant's plan retention (or one tenant's): the CLI's `audit prune`."""
    done = []
    for tenant_id, (tenant_slug, days) in (await audit_trail.retention_days(db)).items():
        if slug is not None and tenant_slug != slug:
            continue
        done.append({"tenant": tenant_slug, "retention_days": days, **await audit_trail.prune(db, tenant_id, days)})
    return done
