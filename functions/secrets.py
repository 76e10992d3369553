"""A tenant's webhook signing secrets, as the platform's operations: set and delete, never read back.

A webhook's `secret: NAME` names one of its own tenant's secrets, which the tenant's owners and admins
set here (`set_webhook_secret {tenant, name, value}`); the outbox signs its deliveries with it. Values
are stored encrypted (engine/vault.py) and no operation returns one: the names are listed through the
platform's `webhook_secrets` entity. They are platform operations (`@platform_function`: only
platform.yaml binds them) and each checks its caller itself with `functions.access.authorize` (a platform
admin, or an owner or admin of the named tenant), so that even a wrong binding grants nothing. Every
change is audited.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog, vault
from engine.database import Database
from engine.errors import BackSaasError
from engine.hooks import HookContext, platform_function
from functions.access import MANAGERS, authorize


class SecretNotFound(BackSaasError):
    code = "secret_not_found"
    status = 404


async def _store(conn: AsyncConnection, tenant_id: str, name: str, value: str, actor: str | None) -> bool:
    replaced = await vault.store(conn, tenant_id, name, value)
    await audit.record(conn, "webhook_secret.set", tenant_id=tenant_id, actor=actor, entity="webhook_secrets",
                       data={"name": name, "replaced": replaced})
    return replaced


async def store_webhook_secret(db: Database, slug: str, name: str, value: str, *, actor: str | None = None) -> bool:
    """Set tenant `slug`'s secret `name` (the operator's path: the CLI, the tests); True when it replaced one."""
    async with db.begin() as conn:
        return await _store(conn, await catalog.active_tenant_id(conn, slug), name, value, actor)


@platform_function
async def set_webhook_secret(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Set (or replace) a webhook signing secret of a tenant; the value is never shown again."""
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    async with ctx.data.db.begin() as conn:
        replaced = await _store(conn, await catalog.active_tenant_id(conn, payload["tenant"]), payload["name"], payload["value"],
                                actor.user_id)
    return {"tenant": payload["tenant"], "name": payload["name"], "replaced": replaced}


@platform_function
async def delete_webhook_secret(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Delete a webhook signing secret: deliveries that name it then fail until it is set again."""
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    async with ctx.data.db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, payload["tenant"])
        if not await vault.remove(conn, tenant_id, payload["name"]):
            raise SecretNotFound(f"tenant '{payload['tenant']}' has no webhook secret {payload['name']}")
        await audit.record(conn, "webhook_secret.deleted", tenant_id=tenant_id, actor=actor.user_id,
                           entity="webhook_secrets", data={"name": payload["name"]})
    return {"tenant": payload["tenant"], "name": payload["name"], "deleted": True}
