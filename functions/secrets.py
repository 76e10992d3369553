"""A tenant's webhook signing secrets, as the platform's operations: set and delete, never read back.

A webhook's `secret: NAME` names one of its own tenant's secrets, which the tenant's owners and admins
set here (`set_webhook_secret {tenant, name, value}`); the outbox signs its deliveries with it. Values
are stored encrypted (engine/vault.py) and no operation returns one: the names are listed through the
platform's `webhook_secrets` entity. Each operation checks its caller itself (a platform admin, or an
owner or admin of the named tenant, calling through the system tenant), so that even a wrong binding
of it grants nothing. Every change is audited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog, vault
from engine.authz import Caller
from engine.database import Database
from engine.errors import BackSaasError, Forbidden, TenantNotFound
from engine.hooks import HookContext, platform_function
from engine.storage.naming import SYSTEM_TENANT

PLATFORM_ADMIN = "platform_admin"
MANAGING_ROLES = ("owner", "admin")


class SecretNotFound(BackSaasError):
    code = "secret_not_found"
    status = 404


async def _tenant_acted_on(conn: AsyncConnection, context_tenant: str, caller: Caller, slug: str) -> str:
    """The id of tenant `slug` when the caller may manage its secrets; Forbidden otherwise (the same answer
    for a tenant that does not exist, so that a non-member learns nothing of it)."""
    if context_tenant != SYSTEM_TENANT:
        raise Forbidden("webhook secrets are set through the platform's own functions only")
    refused = Forbidden(f"managing the webhook secrets of tenant '{slug}' needs membership as owner or admin")
    tenants, memberships = catalog.platform_tables()["tenants"], catalog.platform_tables()["memberships"]
    tenant = await catalog.find_tenant(conn, slug)
    if PLATFORM_ADMIN in caller.roles:
        if tenant is None or tenant.status == "deleted":
            raise TenantNotFound(f"no tenant '{slug}'")
        return tenant.id
    if caller.user_id is None or tenant is None or tenant.status == "deleted":
        raise refused
    role = await conn.scalar(sa.select(memberships.c.role).join(tenants, tenants.c.id == memberships.c.tenant_id)
                             .where(tenants.c.id == tenant.id, memberships.c.user_id == caller.user_id))
    if role not in MANAGING_ROLES:
        raise refused
    return tenant.id


async def store_webhook_secret(db: Database, slug: str, name: str, value: str, *, actor: str | None = None) -> bool:
    """Set tenant `slug`'s secret `name` (the operator's path: the CLI, the tests); True when it replaced one."""
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
        if tenant is None or tenant.status == "deleted":
            raise TenantNotFound(f"no tenant '{slug}'")
        return await _store(conn, tenant.id, name, value, actor)


async def _store(conn: AsyncConnection, tenant_id: str, name: str, value: str, actor: str | None) -> bool:
    replaced = await vault.store(conn, tenant_id, name, value)
    await audit.record(conn, "webhook_secret.set", tenant_id=tenant_id, actor=actor, entity="webhook_secrets",
                       data={"name": name, "replaced": replaced})
    return replaced


@platform_function
async def set_webhook_secret(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Set (or replace) a webhook signing secret of a tenant; the value is never shown again."""
    async with ctx.data.db.begin() as conn:
        tenant_id = await _tenant_acted_on(conn, ctx.tenant, ctx.caller, payload["tenant"])
        replaced = await _store(conn, tenant_id, payload["name"], payload["value"], ctx.caller.user_id)
    return {"tenant": payload["tenant"], "name": payload["name"], "replaced": replaced}


@platform_function
async def delete_webhook_secret(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Delete a webhook signing secret: deliveries that name it then fail until it is set again."""
    async with ctx.data.db.begin() as conn:
        tenant_id = await _tenant_acted_on(conn, ctx.tenant, ctx.caller, payload["tenant"])
        if not await vault.remove(conn, tenant_id, payload["name"]):
            raise SecretNotFound(f"tenant '{payload['tenant']}' has no webhook secret {payload['name']}")
        await audit.record(conn, "webhook_secret.deleted", tenant_id=tenant_id, actor=ctx.caller.user_id,
                           entity="webhook_secrets", data={"name": payload["name"]})
    return {"tenant": payload["tenant"], "name": payload["name"], "deleted": True}
