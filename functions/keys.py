"""API keys of a tenant: named, with a role, optionally expiring, revocable at once; shown once.

Only a SHA-256 hash of a key is stored (keys are 256-bit random, so a fast hash is enough); the gateway
looks keys up by that hash. Revocation is a row update, which the NOTIFY trigger on `api_keys` carries
to every server process.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from engine import audit, catalog
from engine.database import Database
from engine.errors import BackSaasError, InvalidInput, Problem, TenantNotFound
from engine.hooks import HookContext, platform_function
from engine.schema import load_schema
from engine.storage.naming import SYSTEM_TENANT
from functions.access import MANAGERS, authorize

KEY_PREFIX = "bsk_"


class KeyExists(BackSaasError):
    code = "key_exists"
    status = 409


class KeyNotFound(BackSaasError):
    code = "key_not_found"
    status = 404


@dataclass(frozen=True)
class NewKey:
    name: str
    role: str
    key: str  # the only time the key is visible
    expires_at: datetime | None


def new_key() -> tuple[str, dict[str, str]]:
    """A fresh key and the columns that store it (its display prefix and hash; never the key itself)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, {"prefix": key[:12], "key_hash": key_hash(key)}


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(db: Database, slug: str, name: str, role: str, expires_at: datetime | None = None) -> NewKey:
    """A new key for tenant `slug` acting as `role` (anon, service, or a role the tenant's schema knows)."""
    key, stored = new_key()
    keys = catalog.platform_tables()["api_keys"]
    try:
        async with db.begin() as conn:
            tenant = await catalog.find_tenant(conn, slug)
            if tenant is None:
                raise TenantNotFound(f"no tenant '{slug}'")
            version = await catalog.current_version(conn, tenant.id)
            roles = load_schema(version.source).all_roles if version else ()
            if role not in roles:
                raise InvalidInput(f"tenant '{slug}' has no role '{role}'",
                                   details=[Problem("role", f"expected one of {', '.join(roles)}")])
            await conn.execute(keys.insert().values(tenant_id=tenant.id, name=name, role=role, expires_at=expires_at,
                                                    **stored))
            await audit.record(conn, "auth.key_created", tenant_id=tenant.id, entity="api_keys",
                               data={"name": name, "role": role, "expires_at": expires_at})
    except IntegrityError as exc:
        raise KeyExists(f"tenant '{slug}' already has a key named '{name}'") from exc
    return NewKey(name, role, key, expires_at)


async def revoke_api_key(db: Database, slug: str, name: str) -> None:
    keys = catalog.platform_tables()["api_keys"]
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        result = await conn.execute(
            keys.update().where(keys.c.name == name, keys.c.revoked_at.is_(None),
                                keys.c.tenant_id == sa.select(tenants.c.id).where(tenants.c.slug == slug).scalar_subquery())
            .values(revoked_at=sa.func.now()).returning(keys.c.id, keys.c.tenant_id))
        revoked = result.first()
        if revoked is None:
            raise KeyNotFound(f"tenant '{slug}' has no active key named '{name}'")
        await audit.record(conn, "auth.key_revoked", tenant_id=revoked.tenant_id, entity="api_keys",
                           record_id=revoked.id, data={"name": name})


async def list_api_keys(db: Database, slug: str) -> list[dict[str, object]]:
    keys = catalog.platform_tables()["api_keys"]
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        rows = await conn.execute(
            sa.select(keys.c.name, keys.c.role, keys.c.prefix, keys.c.expires_at, keys.c.revoked_at, keys.c.created_at)
            .join(tenants, tenants.c.id == keys.c.tenant_id).where(tenants.c.slug == slug).order_by(keys.c.name))
        return [dict(r._mapping) for r in rows]


async def platform_public_key(db: Database) -> str:
    """The platform's `anon` key. Supabase's SDKs need a key to call the platform's sign-up, sign-in and
    REST like any tenant's, and an anon key is public by design, so its plaintext is kept (`public_value`)
    and shown to anyone (`GET /api/platform/`, `backsaas serve --demo`, `backsaas admin create`). Made on
    first use, once whichever process asks first; revoking it makes the next use mint another."""
    keys = catalog.platform_tables()["api_keys"]
    tenants = catalog.platform_tables()["tenants"]
    current = sa.select(keys.c.public_value).join(tenants, tenants.c.id == keys.c.tenant_id).where(
        tenants.c.slug == SYSTEM_TENANT, keys.c.public_value.is_not(None), keys.c.revoked_at.is_(None),
        sa.or_(keys.c.expires_at.is_(None), keys.c.expires_at > sa.func.now())).order_by(keys.c.created_at.desc()).limit(1)
    async with db.engine.connect() as conn:  # the usual case: one read, no lock (GET /api/platform/ is public)
        found = await conn.scalar(current)
    if found is not None:
        return found
    async with db.begin() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('backsaas.platform_public_key'))"))
        found = await conn.scalar(current)  # another process may have made it while we waited
        if found is None:
            tenant = await catalog.find_tenant(conn, SYSTEM_TENANT)
            if tenant is None:
                raise TenantNotFound("the platform is not deployed: run `backsaas serve` once")
            found, stored = new_key()
            await conn.execute(keys.insert().values(tenant_id=tenant.id, name=f"public-anon-{found[4:12]}", role="anon",
                                                    public_value=found, **stored))
    return found


# -- as the system tenant's functions (platform.yaml binds them; each checks its caller itself) --


@platform_function
async def create_key(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A new API key of a tenant, for its owners and admins (the console's and any client's way to mint one
    without the CLI); its plaintext is in this answer only."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    expires_at = datetime.fromisoformat(payload["expires_at"]) if payload.get("expires_at") else None
    made = await create_api_key(ctx.data.db, payload["tenant"], payload["name"], payload["role"], expires_at)
    return {"tenant": payload["tenant"], "name": made.name, "role": made.role, "key": made.key,
            "expires_at": made.expires_at.isoformat() if made.expires_at else None}


@platform_function
async def revoke_key(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Revoke a tenant's key by name, at once on every process (the NOTIFY on api_keys)."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    await revoke_api_key(ctx.data.db, payload["tenant"], payload["name"])
    return {"tenant": payload["tenant"], "name": payload["name"], "revoked": True}
