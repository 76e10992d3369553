"""Schema deploys, the tenant developer's main job, as the system tenant's functions (and the CLI's):

- `plan_schema`: a dry run — the planner's steps and SQL, and the checksum of the deployed version;
- `deploy_schema`: apply it, refused with 409 `version_conflict` unless that checksum is still the
  deployed one (two developers cannot clobber each other: exactly one of two concurrent deploys wins);
- `schema_history`: every version, who deployed it, and its diff from the one before;
- `rollback_schema`: deploy an earlier version's source again, planned and guarded like any deploy.

A deploy commits a new `schema_versions` row, whose trigger NOTIFYs every server process: each swaps in
the new runtime for the requests that start after it, while requests already running finish on theirs.

A tenant's schema binds only the tenant registry's hooks and functions (refused with 422 otherwise), and
the system tenant's schema is never deployed here: it is platform.yaml, which the server deploys when it
starts. Each function checks its caller itself (`functions/access.py`).
"""

from __future__ import annotations

import difflib
from typing import Any

import sqlalchemy as sa

from engine import catalog, onboarding
from engine.database import Database
from engine.errors import BackSaasError, Forbidden, InvalidInput, Problem, SchemaInvalid, TenantNotFound
from engine.hooks import HookContext, missing_handlers, platform_function
from engine.schema import Schema, load_schema_async
from engine.storage.deploy import Deployment, PlannedDeploy, deploy, plan_deploy
from engine.storage.naming import SYSTEM_TENANT
from functions.access import DEVELOPERS, MEMBERS, authorize


class TenantNotActive(BackSaasError):
    code = "tenant_not_active"
    status = 409


class SystemSchemaLocked(Forbidden):
    code = "system_schema_locked"


def not_the_system_tenant(slug: str) -> None:
    if slug == SYSTEM_TENANT:
        raise SystemSchemaLocked("the system tenant's schema is platform.yaml, deployed by the server when it starts "
                                 "(backsaas serve); it is never planned, deployed or rolled back as a tenant's")


async def checked_source(slug: str, source: str) -> Schema:
    """`source` as tenant `slug`'s schema: valid (checked off the event loop), binding only what a tenant
    may bind (422 `schema_invalid` otherwise)."""
    model = await load_schema_async(source, slug)
    problems = missing_handlers(model, slug)
    if problems:
        raise SchemaInvalid(problems, slug)
    return model


def planned_json(planned: PlannedDeploy) -> dict[str, Any]:
    return {"tenant": planned.slug, "base_version": planned.base_version, "base_checksum": planned.base_checksum,
            "ok": planned.plan.ok, "steps": [s.as_dict() for s in planned.plan.steps],
            "blockers": [b.as_dict() for b in planned.plan.blockers]}


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    return {"tenant": deployment.slug, "version": deployment.version, "checksum": deployment.checksum,
            "changed": deployment.changed, "steps": [s.as_dict() for s in deployment.plan.steps]}


async def _active_tenant(db: Database, slug: str) -> catalog.TenantRow:
    not_the_system_tenant(slug)
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
    if tenant is None or tenant.status == "deleted":
        raise TenantNotFound(f"no tenant '{slug}'")
    if tenant.status != "active":
        raise TenantNotActive(f"tenant '{slug}' is {tenant.status}: schemas are deployed to active tenants only")
    return tenant


async def deploy_version(db: Database, slug: str, source: str, *, expected_checksum: str | None,
                         allow_destructive: bool = False, actor: str, deployed_by: str | None = None) -> Deployment:
    """`deploy`, for an active tenant, noting the onboarding step when the schema has entities."""
    await _active_tenant(db, slug)
    model = await checked_source(slug, source)
    deployment = await deploy(db, slug, source, allow_destructive=allow_destructive,
                              expected_checksum=expected_checksum, actor=actor, deployed_by=deployed_by)
    if deployment.changed and model.entities:
        async with db.begin() as conn:
            await onboarding.mark(conn, "schema_deployed", slug=slug)
    return deployment


async def history(db: Database, slug: str) -> list[dict[str, Any]]:
    """Every version of the tenant's schema, oldest first, each with its unified diff from the one before."""
    versions = catalog.platform_tables()["schema_versions"]
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
        if tenant is None:
            raise TenantNotFound(f"no tenant '{slug}'")
        rows = (await conn.execute(sa.select(versions).where(versions.c.tenant_id == tenant.id)
                                   .order_by(versions.c.version))).all()
    listed, previous = [], ""
    for row in rows:
        diff = difflib.unified_diff(previous.splitlines(keepends=True), row.source.splitlines(keepends=True),
                                    f"v{row.version - 1}", f"v{row.version}")
        listed.append({"version": row.version, "checksum": row.checksum, "actor": row.actor,
                       "deployed_by": str(row.deployed_by_id) if row.deployed_by_id else None,
                       "created_at": row.created_at.isoformat(), "steps": len(row.steps or []),
                       "diff": "".join(diff)})
        previous = row.source
    return listed


async def rollback(db: Database, slug: str, version: int, *, expected_checksum: str | None,
                   allow_destructive: bool = False, actor: str, deployed_by: str | None = None) -> Deployment:
    """Deploy version `version`'s source again (recorded as a new version)."""
    not_the_system_tenant(slug)
    versions = catalog.platform_tables()["schema_versions"]
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, slug)
        if tenant is None:
            raise TenantNotFound(f"no tenant '{slug}'")
        source = await conn.scalar(sa.select(versions.c.source).where(versions.c.tenant_id == tenant.id,
                                                                       versions.c.version == version))
    if source is None:
        raise InvalidInput(f"tenant '{slug}' has no version {version}", details=[Problem("version", "no such version")])
    return await deploy_version(db, slug, source, expected_checksum=expected_checksum,
                                allow_destructive=allow_destructive, actor=f"{actor} (rollback to v{version})",
                                deployed_by=deployed_by)


@platform_function
async def plan_schema(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    await authorize(ctx, payload["tenant"], DEVELOPERS)
    await _active_tenant(ctx.data.db, payload["tenant"])
    await checked_source(payload["tenant"], payload["source"])  # off the event loop, time-limited; then cached
    return planned_json(await plan_deploy(ctx.data.db, payload["tenant"], payload["source"],
                                          allow_destructive=payload.get("allow_destructive", False)))


@platform_function
async def deploy_schema(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], DEVELOPERS)
    return deployment_json(await deploy_version(
        ctx.data.db, payload["tenant"], payload["source"], expected_checksum=payload["expected_checksum"],
        allow_destructive=payload.get("allow_destructive", False), actor=actor.label, deployed_by=actor.user_id))


@platform_function
async def schema_history(ctx: HookContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    await authorize(ctx, payload["tenant"], MEMBERS)
    return await history(ctx.data.db, payload["tenant"])


@platform_function
async def rollback_schema(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], DEVELOPERS)
    return deployment_json(await rollback(
        ctx.data.db, payload["tenant"], payload["version"], expected_checksum=payload["expected_checksum"],
        allow_destructive=payload.get("allow_destructive", False), actor=actor.label, deployed_by=actor.user_id))
