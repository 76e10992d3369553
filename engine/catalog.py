"""The system tenant's own tables, as the engine reads and writes them: tenants and schema versions.

The engine keeps no catalogue of its own beside the platform's data: which tenants exist and which
schema each one runs are rows of the system tenant, built from `platform.yaml` by the same code that
builds every tenant's tables. Statements here are SQLAlchemy Core on those tables; values are bound.

Deploying a new `platform.yaml` reads the deployed version before migrating to the new one, so the
columns read on that path are a contract every platform.yaml keeps: tenants (id, slug, name, status,
plan, created_at) and schema_versions (tenant, version, source, checksum, created_at).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import TenantNotFound
from engine.schema import Schema, load_schema_file
from engine.storage import naming
from engine.storage.tables import build_metadata

PLATFORM_SCHEMA_PATH = resources.files("engine") / "platform.yaml"  # the root platform.yaml, shipped in the package


@cache
def platform_model() -> Schema:
    return load_schema_file(PLATFORM_SCHEMA_PATH)


@cache
def platform_tables() -> dict[str, sa.Table]:
    metadata = build_metadata(platform_model(), naming.SYSTEM_TENANT)
    return {table.name: table for table in metadata.tables.values()}


def checksum(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass(frozen=True)
class TenantRow:
    id: str
    slug: str
    name: str
    status: str
    plan: str
    created_at: datetime


@dataclass(frozen=True)
class SchemaVersion:
    tenant_id: str
    version: int
    source: str
    checksum: str
    created_at: datetime
    actor: str | None = None  # read in the history only: not part of the bootstrap contract


async def system_deployed(conn: AsyncConnection) -> bool:
    """Whether the system tenant's tables exist (false only before the very first `serve`)."""
    found = await conn.scalar(sa.text("SELECT to_regclass('system.schema_versions') IS NOT NULL"))
    return bool(found)


def _tenant_columns() -> tuple[sa.Column[Any], ...]:
    tenants = platform_tables()["tenants"]
    return tenants.c.id, tenants.c.slug, tenants.c.name, tenants.c.status, tenants.c.plan, tenants.c.created_at


def _tenant(row: sa.Row[Any]) -> TenantRow:
    return TenantRow(str(row.id), row.slug, row.name, row.status, row.plan, row.created_at)


async def find_tenant(conn: AsyncConnection, slug: str) -> TenantRow | None:
    tenants = platform_tables()["tenants"]
    row = (await conn.execute(sa.select(*_tenant_columns()).where(tenants.c.slug == slug))).first()
    return _tenant(row) if row else None


async def active_tenant_id(conn: AsyncConnection, slug: str) -> str:
    """The id of tenant `slug` if it exists and is not deleted (`TenantNotFound` otherwise)."""
    tenant = await find_tenant(conn, slug)
    if tenant is None or tenant.status == "deleted":
        raise TenantNotFound(f"no tenant '{slug}'")
    return tenant.id


async def list_tenants(conn: AsyncConnection) -> list[TenantRow]:
    tenants = platform_tables()["tenants"]
    return [_tenant(r) for r in await conn.execute(sa.select(*_tenant_columns()).order_by(tenants.c.slug))]


async def insert_tenant(conn: AsyncConnection, slug: str, name: str, status: str) -> TenantRow:
    tenants = platform_tables()["tenants"]
    statement = tenants.insert().values(slug=slug, name=name, status=status).returning(*_tenant_columns())
    return _tenant((await conn.execute(statement)).one())


async def current_version(conn: AsyncConnection, tenant_id: str) -> SchemaVersion | None:
    versions = platform_tables()["schema_versions"]
    row = (await conn.execute(
        sa.select(versions.c.tenant_id, versions.c.version, versions.c.source, versions.c.checksum, versions.c.created_at)
        .where(versions.c.tenant_id == tenant_id).order_by(versions.c.version.desc()).limit(1))).first()
    return SchemaVersion(str(row.tenant_id), row.version, row.source, row.checksum, row.created_at) if row else None


async def version_history(conn: AsyncConnection, tenant_id: str) -> list[SchemaVersion]:
    versions = platform_tables()["schema_versions"]
    rows = await conn.execute(
        sa.select(versions.c.tenant_id, versions.c.version, versions.c.source, versions.c.checksum, versions.c.actor,
                  versions.c.created_at)
        .where(versions.c.tenant_id == tenant_id).order_by(versions.c.version))
    return [SchemaVersion(str(r.tenant_id), r.version, r.source, r.checksum, r.created_at, r.actor) for r in rows]


async def record_version(conn: AsyncConnection, tenant_id: str, version: int, source: str,
                         steps: list[dict[str, Any]], actor: str, deployed_by: str | None = None) -> SchemaVersion:
    """Keep a deployed version: its source, checksum, steps, and who deployed it (`actor` describes them,
    `deployed_by` is their platform account when they have one)."""
    versions = platform_tables()["schema_versions"]
    row = (await conn.execute(
        versions.insert().values(tenant_id=tenant_id, version=version, source=source, checksum=checksum(source),
                                 steps=steps, actor=actor, deployed_by_id=deployed_by)
        .returning(versions.c.created_at))).one()
    return SchemaVersion(tenant_id, version, source, checksum(source), row.created_at, actor)
