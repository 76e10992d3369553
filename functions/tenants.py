"""Tenants: the slug rules, provisioning, and the lifecycle (suspend, activate, delete, restore, purge).

A tenant is created as a `pending` row of the system tenant, by `POST /api/platform/rest/v1/tenants`
(or GraphQL's `insert_tenants_one`, or `backsaas tenant create`): the `validate_tenant_slug` hook checks it
and the creator becomes its owner in the same transaction; `provision_tenant` then runs after commit,
from the outbox, like any async hook. Provisioning is one transaction of named steps (`STEPS`): the
tenant's schema and role, its first schema version, the owner membership, the `anon` and `service` keys,
the plan subscription and the onboarding state. A failing step rolls all of them back and leaves the row
`failed` with the step and the reason; running it again (the `provision_tenant` function) starts over,
and on an `active` tenant it does nothing. The keys' plaintext is held (never longer than a day) until
an owner or admin takes it, once, with `reveal_keys`: only their hashes stay.

The hooks and functions here are the platform's own (`@platform_hook`, `@platform_function`): only
platform.yaml binds them, and each checks its caller itself first (`functions/access.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog, onboarding
from engine.authz import unrestricted
from engine.billing import operations as billing
from engine.database import Database, driver_of, quote_identifier
from engine.errors import (
    BackSaasError,
    Forbidden,
    InvalidInput,
    Problem,
    SchemaInvalid,
    TenantExists,
    TenantNotFound,
    ValidationFailed,
)
from engine.hooks import Change, HookContext, missing_handlers, platform_function, platform_hook
from engine.identity import sessions
from engine.schema import load_schema, load_schema_async
from engine.storage import naming
from engine.storage.deploy import DEFAULT_PLAN, Deployment, Progress, create_tenant_schema, deploy_in, lock_tenant
from engine.storage.naming import MAX_SLUG_LENGTH, SLUG_PATTERN, SYSTEM_TENANT
from functions.access import MANAGERS, OWNERS, PLATFORM_ADMINS_ONLY, authorize, in_platform
from functions.keys import new_key

RESERVED_SLUGS = frozenset({"system", "api", "admin", "www", "platform", "auth", "rest", "graphql", "functions",
                            "static", "assets", "app", "dashboard", "status", "docs", "mail", "public"})
INITIAL_KEYS = {"initial-anon": "anon", "initial-service": "service"}  # name -> role
REVEAL_WINDOW = timedelta(days=1)
PLATFORM_ONLY_FIELDS = ("status", "status_reason", "deleted_at", "onboarding", "provisioning", "isolation")


def slug_problems(slug: str) -> list[Problem]:
    problems = []
    if not 3 <= len(slug) <= MAX_SLUG_LENGTH:
        problems.append(Problem("slug", f"must be 3 to {MAX_SLUG_LENGTH} characters long"))
    if not SLUG_PATTERN.match(slug):
        problems.append(Problem("slug", "must start with a lowercase letter and hold only a-z, 0-9 and -"))
    if slug in RESERVED_SLUGS:
        problems.append(Problem("slug", f"'{slug}' is reserved"))
    return problems


def check_bindings(model: Any, slug: str) -> None:
    """A tenant's schema binds only the tenant registry's hooks and functions (never the platform's)."""
    problems = missing_handlers(model, slug)
    if problems:
        raise SchemaInvalid(problems, slug)


def empty_schema(slug: str) -> str:
    return f"name: {slug.replace('-', '_')}\nentities: {{}}\n"


def now() -> str:
    return datetime.now(UTC).isoformat()


class ProvisioningFailed(BackSaasError):
    code = "provisioning_failed"
    status = 409


@dataclass
class Provisioned:
    slug: str
    status: str  # active | failed
    steps: list[str] = field(default_factory=list)  # the steps that ran (rolled back, when failed)
    reason: str | None = None
    deployment: Deployment | None = None


# -- the hooks on `tenants` (platform.yaml) --


@platform_hook
async def validate_tenant_slug(ctx: HookContext, change: Change) -> dict[str, Any]:
    """before_create: the slug rules, uniqueness (soft-deleted tenants keep their slug), a plan that
    exists, a valid initial schema; the row starts `pending` whoever creates it."""
    in_platform(ctx)
    record = dict(change.record or {})
    slug = record.get("slug") if isinstance(record.get("slug"), str) else ""
    problems = slug_problems(slug)
    if problems:
        raise ValidationFailed(f"invalid tenant slug '{slug}'", details=problems)
    if not unrestricted(ctx.caller):
        forbidden = [name for name in PLATFORM_ONLY_FIELDS if name in record]
        if forbidden:
            raise Forbidden("only platform admins set these fields of a tenant",
                            details=[Problem(name, "is set by the platform") for name in forbidden])
    data = ctx.data.elevated()
    if await data.select("tenants", {"slug": f"eq.{slug}", "select": "id"}):
        raise TenantExists(f"tenant '{slug}' already exists (or was deleted and keeps its slug until purged)")
    plan = record.get("plan", DEFAULT_PLAN)
    if not await data.select("plans", {"code": f"eq.{plan}", "active": "is.true", "select": "id"}):
        raise ValidationFailed(f"no active plan '{plan}'", details=[Problem("plan", f"no active plan '{plan}'")])
    if isinstance(record.get("initial_schema"), str):  # another type is the body validator's to refuse
        model = await load_schema_async(record["initial_schema"], slug)  # SchemaInvalid (422, every problem listed)
        check_bindings(model, slug)  # ... before any row
    return {**record, "status": "pending", "onboarding": onboarding.fresh("plan" in record), "provisioning": {}}


@platform_hook
async def add_owner(ctx: HookContext, change: Change) -> None:
    """after_create (in the creating transaction): the creator is the tenant's first owner, so they can
    follow its provisioning at once."""
    in_platform(ctx)
    if ctx.caller.user_id is not None and change.record:
        await ctx.data.elevated().insert("memberships", {"user_id": ctx.caller.user_id,
                                                         "tenant_id": change.record["id"], "role": "owner"})


@platform_hook
async def provision_tenant(ctx: HookContext, change: Change) -> None:
    """after_create, async (from the outbox): provision the new tenant; a failure is recorded on its row."""
    in_platform(ctx)
    if not change.record:
        return
    await provision(ctx.data.db, change.record["slug"], creator=ctx.caller.user_id)


@platform_hook
async def guard_tenant_update(ctx: HookContext, change: Change) -> dict[str, Any]:
    """before_update: a tenant's status changes through the lifecycle functions only (a status written
    directly would skip their state checks, session revocation and audit); its slug names its schema and
    role, so it never changes; a plan change is onboarding."""
    in_platform(ctx)
    patch = dict(change.record or {})
    lifecycle = [name for name in ("status", "status_reason", "deleted_at", "provisioning") if name in patch]
    if lifecycle:
        raise Forbidden("a tenant's status changes through the lifecycle functions (suspend_tenant, ...)",
                        details=[Problem(name, "is set by the lifecycle functions") for name in lifecycle])
    if "slug" in patch and change.old and patch["slug"] != change.old.get("slug"):
        raise Forbidden("a tenant's slug is permanent (it names the tenant's schema and role)",
                        details=[Problem("slug", "cannot change")])
    if "plan" in patch and change.old and patch["plan"] != change.old.get("plan"):
        patch["onboarding"] = {**(change.old.get("onboarding") or {}), "plan_chosen": now()}
    return patch


@platform_function
async def update_settings(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """update_tenant: owners and admins write their tenant's name and settings (the platform's own update,
    so the settings' JSON Schema and the hooks apply), nothing else of its row."""
    await authorize(ctx, payload["tenant"], MANAGERS)
    patch = {k: payload[k] for k in ("name", "settings") if k in payload}
    if not patch:
        raise InvalidInput("nothing to update", details=[Problem("settings", "give name or settings")])
    rows = await ctx.data.elevated().update("tenants", {"slug": f"eq.{payload['tenant']}"}, patch)
    if not rows:
        raise TenantNotFound(f"no tenant '{payload['tenant']}'")
    return {"tenant": payload["tenant"], "name": rows[0]["name"], "settings": rows[0]["settings"]}


# -- provisioning --

@dataclass(frozen=True)
class Run:
    """What every step of one provisioning gets beside the tenant's row."""

    db: Database
    creator: str | None  # the platform account that created the tenant, its first owner
    actor: str = "provisioning"  # who the first schema version is recorded as deployed by
    progress: Progress | None = None


Step = Callable[[AsyncConnection, Any, Run], Awaitable[Any]]


async def create_schema_step(conn: AsyncConnection, tenant: Any, run: Run) -> None:
    await create_tenant_schema(conn, run.db, tenant.slug)


async def deploy_step(conn: AsyncConnection, tenant: Any, run: Run) -> Deployment:
    source = tenant.initial_schema or empty_schema(tenant.slug)
    # deploy_in checks what the schema binds against what this tenant may bind (engine.storage.deploy)
    return await deploy_in(conn, run.db, tenant.slug, source, actor=run.actor, deployed_by=run.creator,
                           progress=run.progress)


async def owner_step(conn: AsyncConnection, tenant: Any, run: Run) -> None:
    memberships = catalog.platform_tables()["memberships"]
    if run.creator is not None:
        await conn.execute(postgresql.insert(memberships)
                           .values(user_id=run.creator, tenant_id=tenant.id, role="owner").on_conflict_do_nothing())


async def keys_step(conn: AsyncConnection, tenant: Any, run: Run) -> None:
    keys = catalog.platform_tables()["api_keys"]
    for name, role in INITIAL_KEYS.items():
        key, stored = new_key()
        await conn.execute(keys.insert().values(tenant_id=tenant.id, name=name, role=role, pending_reveal=key, **stored))


async def subscription_step(conn: AsyncConnection, tenant: Any, run: Run) -> None:
    """The plan's subscription through the billing state machine: a paid plan gets its Stripe customer and
    subscription here (or manual billing's first invoice), so a refusal fails the provisioning."""
    await billing.subscribe(conn, tenant, actor=run.creator)


async def onboarding_step(conn: AsyncConnection, tenant: Any, run: Run) -> None:
    if tenant.initial_schema and load_schema(tenant.initial_schema, tenant.slug, tenant=True).entities:
        await onboarding.mark(conn, "schema_deployed", tenant_id=tenant.id)


STEPS: list[tuple[str, Step]] = [("schema", create_schema_step), ("deploy", deploy_step), ("owner", owner_step),
                                 ("keys", keys_step), ("subscription", subscription_step),
                                 ("onboarding", onboarding_step)]


async def provision(db: Database, slug: str, *, creator: str | None = None, actor: str = "provisioning",
                    progress: Progress | None = None) -> Provisioned:
    """Run every step for a `pending` (or `failed`) tenant in one transaction; an `active` one is left as
    it is. A failure rolls every step back and is recorded on the row: `failed`, the step, the reason."""
    tenants = catalog.platform_tables()["tenants"]
    ran: list[str] = []
    deployment = None
    try:
        async with db.begin() as conn:
            tenant = (await conn.execute(sa.select(tenants).where(tenants.c.slug == slug).with_for_update())).first()
            if tenant is None:
                raise TenantNotFound(f"no tenant '{slug}'")
            if tenant.status == "active":
                return Provisioned(slug, "active")
            if tenant.status not in ("pending", "failed"):
                raise TransitionRefused(f"tenant '{slug}' is {tenant.status}: only pending or failed tenants are provisioned")
            for name, step in STEPS:
                ran.append(name)
                result = await step(conn, tenant, Run(db, creator, actor, progress))
                if name == "deploy":
                    deployment = result
            attempts = int((tenant.provisioning or {}).get("attempts", 0)) + 1
            await conn.execute(tenants.update().where(tenants.c.id == tenant.id).values(
                status="active", status_reason=None,
                provisioning={"attempts": attempts, "steps": ran, "completed_at": now()}))
            await audit.record(conn, "tenant.provisioned", tenant_id=str(tenant.id), actor=creator, entity="tenants",
                               record_id=str(tenant.id), data={"steps": ran})
        return Provisioned(slug, "active", ran, None, deployment)
    except (TenantNotFound, TransitionRefused):
        raise
    except Exception as exc:  # recorded on the row (and in the audit log), not swallowed
        step = ran[-1] if ran else "start"
        message = exc.message if isinstance(exc, BackSaasError) else f"{type(exc).__name__}: {exc}"
        reason = f"step '{step}' failed: {message}"
        async with db.begin() as conn:
            tenant_id = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.slug == slug))
            attempts_so_far = await conn.scalar(sa.select(tenants.c.provisioning).where(tenants.c.id == tenant_id))
            attempts = int((attempts_so_far or {}).get("attempts", 0)) + 1
            await conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(
                status="failed", status_reason=reason[:2000],
                provisioning={"attempts": attempts, "failed_step": step, "rolled_back": ran, "failed_at": now()}))
            await audit.record(conn, "tenant.provisioning_failed", tenant_id=str(tenant_id), actor=creator,
                               entity="tenants", record_id=str(tenant_id), data={"step": step, "reason": reason})
        return Provisioned(slug, "failed", ran, reason)


async def create_tenant(db: Database, slug: str, *, name: str | None = None, source: str | None = None,
                        plan: str | None = None, actor: str = "engine", creator: str | None = None,
                        progress: Progress | None = None) -> Deployment:
    """Create and provision tenant `slug` running `source` (an empty schema if None), the way the platform's
    REST API does (same checks, same steps), and return its first deployment; `ProvisioningFailed` (the
    row stays, `failed`) when a step fails."""
    problems = slug_problems(slug)
    if problems:
        raise InvalidInput(f"invalid tenant slug '{slug}'", details=problems)
    if source:
        check_bindings(await load_schema_async(source, slug), slug)
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        if await catalog.find_tenant(conn, slug) is not None:
            raise TenantExists(f"tenant '{slug}' already exists")
        plans = catalog.platform_tables()["plans"]
        if await conn.scalar(sa.select(plans.c.id).where(plans.c.code == (plan or DEFAULT_PLAN), plans.c.active)) is None:
            raise InvalidInput(f"no active plan '{plan}'", details=[Problem("plan", "no such active plan")])
        await conn.execute(tenants.insert().values(slug=slug, name=name or slug, status="pending", plan=plan or DEFAULT_PLAN,
                                                   initial_schema=source, onboarding=onboarding.fresh(bool(plan))))
    provisioned = await provision(db, slug, creator=creator, actor=actor, progress=progress)
    if provisioned.status != "active" or provisioned.deployment is None:
        raise ProvisioningFailed(provisioned.reason or f"tenant '{slug}' was not provisioned")
    return provisioned.deployment


class KeysGone(BackSaasError):
    code = "keys_already_revealed"
    status = 410


async def reveal_initial_keys(db: Database, slug: str) -> dict[str, str]:
    """The provisioned keys' plaintext, by role, once: taken, it is gone (so is any older than a day)."""
    keys, tenants = catalog.platform_tables()["api_keys"], catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        tenant_id = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.slug == slug))
        if tenant_id is None:
            raise TenantNotFound(f"no tenant '{slug}'")
        waiting = [keys.c.tenant_id == tenant_id, keys.c.pending_reveal.is_not(None)]
        taken = (await conn.execute(sa.select(keys.c.role, keys.c.pending_reveal, keys.c.created_at, keys.c.revoked_at)
                                    .where(*waiting).with_for_update())).all()
        await conn.execute(keys.update().where(*waiting).values(pending_reveal=None))
    fresh = {row.role: row.pending_reveal for row in taken
             if row.revoked_at is None and row.created_at > datetime.now(UTC) - REVEAL_WINDOW}
    if not fresh:
        raise KeysGone(f"tenant '{slug}' has no keys waiting to be revealed (they are shown once)",
                       hint="create a new key (backsaas key create) if the first ones were lost")
    return fresh


@platform_function
async def retry_provisioning(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """`provision_tenant` for a `failed` (or stuck `pending`) tenant: the same steps, from the start (an
    owner retrying is recorded as its creator; a platform admin becomes no owner by retrying)."""
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    creator = actor.user_id if not actor.platform_wide else None
    result = await provision(ctx.data.db, payload["tenant"], creator=creator)
    if result.status != "active":
        raise ProvisioningFailed(result.reason or "provisioning failed")
    return {"tenant": result.slug, "status": result.status, "steps": result.steps}


@platform_function
async def reveal_keys(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    await authorize(ctx, payload["tenant"], MANAGERS)
    return {"tenant": payload["tenant"], "keys": await reveal_initial_keys(ctx.data.db, payload["tenant"])}


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
            driver = await driver_of(conn)
            role = db.role(slug)
            exists = await conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
            await driver.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(naming.schema_name(slug))} CASCADE"
                                 + (f"; DROP ROLE {quote_identifier(role)}" if exists else ""))
            await conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
            await audit.record(conn, "tenant.purged", tenant_id=None, actor=actor, entity="tenants",
                               record_id=str(tenant_id), data={"slug": slug})
        purged.append(slug)
    return purged


# -- the lifecycle as the system tenant's functions (who may call which: platform.yaml, and each one's `authorize`) --


@platform_function
async def suspend(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], PLATFORM_ADMINS_ONLY)
    await suspend_tenant(ctx.data.db, payload["tenant"], payload["reason"], actor=actor.user_id)
    return {"tenant": payload["tenant"], "status": "suspended"}


@platform_function
async def activate(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], PLATFORM_ADMINS_ONLY)
    await activate_tenant(ctx.data.db, payload["tenant"], actor=actor.user_id)
    return {"tenant": payload["tenant"], "status": "active"}


@platform_function
async def soft_delete(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    await delete_tenant(ctx.data.db, payload["tenant"], actor=actor.user_id)
    return {"tenant": payload["tenant"], "status": "deleted"}


@platform_function
async def restore(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    await restore_tenant(ctx.data.db, payload["tenant"], actor=actor.user_id)
    return {"tenant": payload["tenant"], "status": "active"}
