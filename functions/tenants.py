"""Creating tenants: the slug rules, the tenant's row, its schema and role, and its first schema version.

All of it is one transaction: a tenant whose schema fails to deploy leaves no row, schema or role behind.
"""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from engine import audit, catalog
from engine.database import Database, quote_identifier
from engine.errors import BackSaasError, InvalidInput, Problem, TenantExists, TenantNotFound
from engine.identity import sessions
from engine.storage import naming
from engine.storage.deploy import Deployment, Progress, create_tenant_schema, deploy_in, lock_tenant
from engine.storage.naming import SYSTEM_TENANT

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
RESERVED_SLUGS = frozenset({"system", "api", "admin", "www", "platform", "auth", "rest", "graphql", "functions",
                            "static", "assets", "app", "dashboard", "status", "docs", "mail", "public"})


def slug_problems(slug: str) -> list[Problem]:
    problems = []
    if not 3 <= len(slug) <= 40:
        problems.append(Problem("slug", "must be 3 to 40 characters long"))
    if not SLUG_PATTERN.match(slug):
        problems.append(Problem("slug", "must start with a lowercase letter and hold only a-z, 0-9 and -"))
    if slug in RESERVED_SLUGS:
        problems.append(Problem("slug", f"'{slug}' is reserved"))
    return problems


def empty_schema(slug: str) -> str:
    return f"name: {slug.replace('-', '_')}\nentities: {{}}\n"


async def create_tenant(db: Database, slug: str, *, name: str | None = None, source: str | None = None,
                        actor: str = "engine", progress: Progress | None = None) -> Deployment:
    """Provision tenant `slug` running `source` (an empty schema if None) and return its first deployment."""
    problems = slug_problems(slug)
    if problems:
        raise InvalidInput(f"invalid tenant slug '{slug}'", details=problems)
    async with db.begin() as conn:
        if await catalog.find_tenant(conn, slug) is not None:
            raise TenantExists(f"tenant '{slug}' already exists")
        await catalog.insert_tenant(conn, slug, name or slug, "active")
        await create_tenant_schema(conn, db, slug)
        return await deploy_in(conn, db, slug, source or empty_schema(slug), actor=actor, progress=progress)


class TransitionRefused(BackSaasError):
    code = "transition_refused"
    status = 409


async def _transition(db: Database, slug: str, to: str, allowed_from: tuple[str, ...], reason: str | None,
                      actor: str | None) -> None:
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
        if tenant is None or slug == SYSTEM_TENANT:
            raise TenantNotFound(f"no tenant '{slug}'")
        if tenant.status not in allowed_from:
            raise TransitionRefused(f"tenant '{slug}' is {tenant.status}; it can become {to} only from "
                                    f"{' or '.join(allowed_from)}")
        deleted_at = sa.func.now() if to == "deleted" else None
        await conn.execute(tenants.update().where(tenants.c.id == tenant.id)
                           .values(status=to, status_reason=reason, deleted_at=deleted_at))
        revoked = await sessions.revoke(conn, tenant.id, f"tenant_{to}") if to in ("suspended", "deleted") else 0
        await audit.record(conn, f"tenant.{to}", tenant_id=tenant.id, actor=actor, entity="tenants",
                           record_id=tenant.id, data={"from": tenant.status, "reason": reason,
                                                      "sessions_revoked": revoked})


async def suspend_tenant(db: Database, slug: str, reason: str, *, actor: str | None = None) -> None:
    """Suspend an active tenant: its APIs answer 403 `tenant_suspended` and every session it has is revoked."""
    if not reason.strip():
        raise InvalidInput("a suspension needs a reason", details=[Problem("reason", "is required")])
    await _transition(db, slug, "suspended", ("active",), reason.strip(), actor)


async def activate_tenant(db: Database, slug: str, *, actor: str | None = None) -> None:
    """Bring a suspended tenant back; its users sign in again (their sessions stay revoked)."""
    await _transition(db, slug, "active", ("suspended",), None, actor)


async def delete_tenant(db: Database, slug: str, *, actor: str | None = None) -> None:
    """Soft-delete: the tenant's APIs answer 404 and its sessions end; its data is kept until purged."""
    await _transition(db, slug, "deleted", ("active", "suspended", "failed"), None, actor)


async def restore_tenant(db: Database, slug: str, *, actor: str | None = None) -> None:
    """Undo a soft delete (before the purge): the tenant is active again, its data as it was."""
    await _transition(db, slug, "active", ("deleted",), None, actor)


async def purge_tenants(db: Database, older_than: timedelta, *, actor: str | None = None) -> list[str]:
    """Destroy, for good, the tenants deleted longer ago than `older_than`: their schema and data, their
    database role, and their rows in the system tenant (keys, members, versions, events...). One
    transaction per tenant; returns the slugs purged."""
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        due = (await conn.execute(sa.select(tenants.c.id, tenants.c.slug).where(
            tenants.c.status == "deleted", tenants.c.deleted_at < sa.func.now() - older_than))).all()
    purged = []
    for tenant_id, slug in due:
        async with db.begin() as conn:
            await lock_tenant(conn, slug)
            driver = (await conn.get_raw_connection()).driver_connection
            role = db.role(slug)
            exists = await conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
            await driver.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(naming.schema_name(slug))} CASCADE"
                                 + (f"; DROP ROLE {quote_identifier(role)}" if exists else ""))
            await conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
            await audit.record(conn, "tenant.purged", tenant_id=None, actor=actor, entity="tenants",
                               record_id=str(tenant_id), data={"slug": slug})
        purged.append(slug)
    return purged
