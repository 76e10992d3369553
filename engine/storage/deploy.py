"""Applying schemas to the database: tenant schemas and roles, and deploys of new schema versions.

A deploy is one transaction: lock the tenant, read its recorded version, plan from the recorded model
to the new one, run every step as the tenant's own role, record the new version. Any failure rolls all
of it back (PostgreSQL DDL is transactional), so the database is exactly as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog
from engine.channels import CHANGES_CHANNEL, CHANGES_FEED, OUTBOX_CHANNEL, PLANS_CHANGED, SIGNING_KEYS_CHANGED
from engine.database import GATEWAY_LOCK, Database, driver_of
from engine.errors import MigrationFailed, MigrationRefused, SchemaInvalid, TenantNotFound, VersionConflict
from engine.hooks import missing_handlers
from engine.identity.signing import ensure_signing_key
from engine.plans import DEFAULT_PLAN as DEFAULT_PLAN  # functions/tenants.py imports it from here
from engine.plans import seed_plans
from engine.schema import Schema, load_schema
from engine.storage import naming
from engine.storage.planner import MigrationPlan, Step, bounds_checks, plan_migration, quote

Progress = Callable[[int, int, Step], None]
log = structlog.get_logger("backsaas.deploy")


@dataclass(frozen=True)
class Deployment:
    slug: str
    version: int  # the version now deployed (unchanged when the source was identical)
    checksum: str
    plan: MigrationPlan
    changed: bool


@dataclass(frozen=True)
class PlannedDeploy:
    """A dry run: the plan, and the checksum of the version it was planned against."""

    slug: str
    plan: MigrationPlan
    base_checksum: str | None
    base_version: int


def pg_message(exc: DBAPIError) -> str:
    """The server's own message, without the driver's wrapping."""
    cause = exc.orig.__cause__ if exc.orig is not None and exc.orig.__cause__ is not None else exc.orig
    return str(cause).strip()


async def lock_tenant(conn: AsyncConnection, slug: str) -> None:
    """Serialise deploys of one tenant across every process (released at commit or rollback)."""
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"backsaas.deploy.{slug}"})


async def create_tenant_schema(conn: AsyncConnection, db: Database, slug: str) -> None:
    """The tenant's NOLOGIN role and the schema it owns, plus the trigger function its tables use.

    The role is no superuser and owns nothing else, so a transaction that has done `SET LOCAL ROLE` to
    it cannot touch another tenant's schema even if the application errs. The login role of the request
    pool that serves the tenant (`Database.login_role_of`) becomes a member of it.
    """
    role, schema = quote(db.role(slug)), quote(naming.schema_name(slug))
    # the gateway role is prepared (and given the roles of the tenants made before it) under this lock
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": GATEWAY_LOCK})
    exists = await conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": db.role(slug)})
    login = db.login_role_of(slug)  # the request pool that runs this tenant's requests logs in as it
    gateway = await conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": login})
    script = [] if exists else [f"CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"]
    script += [
        f"GRANT {role} TO CURRENT_USER",
        *([f"GRANT {role} TO {quote(login)}"] if gateway else []),
        f"CREATE SCHEMA {schema} AUTHORIZATION {role}",
        f"SET LOCAL ROLE {role}",
        f"CREATE FUNCTION {schema}.{quote(naming.TOUCH_FUNCTION)}() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.updated_at := now(); RETURN NEW; END$$",
        f"REVOKE EXECUTE ON FUNCTION {schema}.{quote(naming.TOUCH_FUNCTION)}() FROM PUBLIC",
        "RESET ROLE",
    ]
    driver = await driver_of(conn)
    await driver.execute(";\n".join(script))


async def nonempty_tables(conn: AsyncConnection, pg_schema: str, model: Schema | None) -> set[str]:
    """The entities of `model` whose tables hold at least one row, in one statement."""
    if model is None:
        return set()
    probes = [sa.select(sa.literal(e.name).label("name"))
              .where(sa.exists(sa.select(sa.literal(1)).select_from(sa.table(e.name, schema=pg_schema))))
              for e in model.entities]
    return set((await conn.execute(sa.union_all(*probes))).scalars())


async def _plan(conn: AsyncConnection, db: Database, slug: str, new: Schema, allow_destructive: bool
                ) -> tuple[catalog.TenantRow, catalog.SchemaVersion | None, MigrationPlan]:
    missing = missing_handlers(new, slug)
    if missing:  # installed code is part of what a schema needs: checked before anything is planned
        raise SchemaInvalid(missing, slug)
    tenant = await catalog.find_tenant(conn, slug)
    if tenant is None:
        raise TenantNotFound(f"no tenant '{slug}'")
    current = await catalog.current_version(conn, tenant.id)
    old = load_schema(current.source, f"{slug} v{current.version}") if current else None
    pg_schema = naming.schema_name(slug)
    nonempty = await nonempty_tables(conn, pg_schema, old)
    return tenant, current, plan_migration(old, new, pg_schema, nonempty=nonempty, allow_destructive=allow_destructive)


async def plan_deploy(db: Database, slug: str, source: str, *, allow_destructive: bool = False) -> PlannedDeploy:
    """A dry run of `deploy`: what would run, and against which version. Changes nothing."""
    new = load_schema(source, slug, tenant=slug != naming.SYSTEM_TENANT)
    async with db.begin() as conn:
        _, current, plan = await _plan(conn, db, slug, new, allow_destructive)
        await conn.rollback()
    return PlannedDeploy(slug, plan, current.checksum if current else None, current.version if current else 0)


async def apply_plan(conn: AsyncConnection, db: Database, slug: str, plan: MigrationPlan,
                     progress: Progress | None = None) -> None:
    """Run every step as the tenant's role, inside the caller's transaction.

    Each step's statements go to the server as one simple-protocol script: one round trip per step,
    and no prepared statements for DDL that runs once.
    """
    await conn.exec_driver_sql(f"SET LOCAL ROLE {quote(db.role(slug))}")  # also opens the transaction
    driver = await driver_of(conn)
    for number, step in enumerate(plan.steps, start=1):
        try:
            await driver.execute(";\n".join(step.sql))
        except asyncpg.PostgresError as exc:
            raise MigrationFailed(f"step {number} ({step.description}) failed: {exc}; nothing was changed",
                                  hint=";\n".join(step.sql)) from exc
        if progress:
            progress(number, len(plan.steps), step)
    await conn.exec_driver_sql("RESET ROLE")


async def deploy_in(conn: AsyncConnection, db: Database, slug: str, source: str, *, allow_destructive: bool = False,
                    expected_checksum: str | None = None, actor: str = "engine", deployed_by: str | None = None,
                    progress: Progress | None = None) -> Deployment:
    """`deploy` inside a transaction the caller owns (tenant provisioning adds its own steps to it)."""
    new = load_schema(source, slug, tenant=slug != naming.SYSTEM_TENANT)
    await lock_tenant(conn, slug)
    tenant, current, plan = await _plan(conn, db, slug, new, allow_destructive)
    if expected_checksum is not None and (current.checksum if current else None) != expected_checksum:
        raise VersionConflict(f"tenant '{slug}' was deployed since this plan was made "
                              f"(now version {current.version if current else 0}); plan again")
    if not plan.ok:
        raise MigrationRefused(f"the deploy of '{slug}' was refused: {len(plan.blockers)} problem(s)",
                               details=list(plan.blockers))
    if current is not None and current.checksum == catalog.checksum(source):
        await ensure_bounds_checks(conn, db, slug, new)  # a re-deploy mends a table of an older engine
        return Deployment(slug, current.version, current.checksum, plan, changed=False)
    if current is not None and plan.steps:  # the migration's backfills are audited whatever columns it changes
        before = load_schema(current.source, slug, tenant=slug != naming.SYSTEM_TENANT)
        await audit.install_triggers(conn, slug, tenant.id, before, generic=True)
    await apply_plan(conn, db, slug, plan, progress)
    await ensure_bounds_checks(conn, db, slug, new)
    await install_change_feed(conn, db, slug, new)
    if slug != naming.SYSTEM_TENANT:  # the platform's own: deploy_platform, once its audit functions exist
        await audit.install_triggers(conn, slug, tenant.id, new)
    version = (current.version if current else 0) + 1
    recorded = await catalog.record_version(conn, tenant.id, version, source, [s.as_dict() for s in plan.steps],
                                            actor, deployed_by)
    return Deployment(slug, version, recorded.checksum, plan, changed=True)


BOUNDS_UPGRADE = "bounds_checks"  # the one-time sweep of every tenant's tables, recorded once done


async def ensure_bounds_checks(conn: AsyncConnection, db: Database, slug: str, model: Schema) -> list[str]:
    """Add the bounds CHECKs (`{column}_bounds`) that `model` implies and the tenant's tables lack, as its role,
    in the caller's transaction; idempotent. Tables deployed before the engine made these constraints lack
    them until a bound changes, since plans compare models, not the database. Answers the names added."""
    pg_schema = naming.schema_name(slug)
    wanted = bounds_checks(model, pg_schema)
    if not wanted:
        return []
    driver = await driver_of(conn)
    present = {(r["relname"], r["conname"]) for r in await driver.fetch(
        "SELECT c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "WHERE c.relnamespace = to_regnamespace($1) AND k.contype = 'c'", pg_schema)}
    missing = {key: sql for key, sql in wanted.items() if key not in present}
    if missing:
        await conn.exec_driver_sql(f"SET LOCAL ROLE {quote(db.role(slug))}")
        await driver.execute(";\n".join(missing.values()))
        await conn.exec_driver_sql("RESET ROLE")
        log.info("deploy.bounds_checks_added", tenant=slug, constraints=[f"{t}.{c}" for t, c in missing])
    return [f"{t}.{c}" for t, c in missing]


async def upgrade_once(conn: AsyncConnection, name: str,
                       upgrade: Callable[[str, str, catalog.SchemaVersion], Awaitable[None]]) -> None:
    """Once per database (recorded as `name` in `backsaas_private.upgrades`): `upgrade(tenant id, slug,
    current version)` for every tenant with a deployed version, in the platform deploy's transaction: what
    tables of an older engine need and no later deploy of theirs would plan."""
    driver = await driver_of(conn)
    await driver.execute("CREATE SCHEMA IF NOT EXISTS backsaas_private; CREATE TABLE IF NOT EXISTS "
                         "backsaas_private.upgrades (name text PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now())")
    if await driver.fetchval("SELECT 1 FROM backsaas_private.upgrades WHERE name = $1", name):
        return
    tenants = catalog.platform_tables()["tenants"]
    for tenant_id, slug in (await conn.execute(sa.select(tenants.c.id, tenants.c.slug)
                                               .where(tenants.c.status.not_in(["deleted", "pending", "failed"])))).all():
        version = await catalog.current_version(conn, str(tenant_id))
        if version is not None:
            await upgrade(str(tenant_id), slug, version)
    await driver.execute("INSERT INTO backsaas_private.upgrades (name) VALUES ($1) ON CONFLICT DO NOTHING", name)


async def ensure_every_tenants_bounds_checks(conn: AsyncConnection, db: Database) -> None:
    """Once per database: `ensure_bounds_checks` for every tenant, so that tables of an older engine are
    checked without waiting for a deploy."""
    async def upgrade(tenant_id: str, slug: str, version: catalog.SchemaVersion) -> None:
        await ensure_bounds_checks(conn, db, slug, load_schema(version.source, f"{slug} v{version.version}",
                                                               tenant=slug != naming.SYSTEM_TENANT))

    await upgrade_once(conn, BOUNDS_UPGRADE, upgrade)


METADATA_UPGRADE = "users_user_metadata"


async def ensure_user_metadata_columns(conn: AsyncConnection, db: Database) -> None:
    """Once per database: the `users` table of every tenant deployed by an engine before the built-in
    `user_metadata` field (Supabase Auth's free metadata) gets its column; a model that has it plans nothing
    for it, so no later deploy would add it. Its audit capture functions are made again for the columns it
    now has (a capture names the columns it was made for)."""
    driver = await driver_of(conn)

    async def upgrade(tenant_id: str, slug: str, version: catalog.SchemaVersion) -> None:
        users = f"{quote(naming.schema_name(slug))}.{quote('users')}"
        await driver.execute(f"SET LOCAL ROLE {quote(db.role(slug))}; "
                             f"ALTER TABLE {users} ADD COLUMN IF NOT EXISTS user_metadata jsonb; RESET ROLE")
        model = load_schema(version.source, slug, tenant=slug != naming.SYSTEM_TENANT)
        await audit.install_triggers(conn, slug, tenant_id, model)

    await upgrade_once(conn, METADATA_UPGRADE, upgrade)


async def deploy(db: Database, slug: str, source: str, *, allow_destructive: bool = False,
                 expected_checksum: str | None = None, actor: str = "engine", deployed_by: str | None = None,
                 progress: Progress | None = None) -> Deployment:
    """Plan and apply `source` for tenant `slug` in one transaction, and record it as a new version.

    Raises `SchemaInvalid` (bad file), `MigrationRefused` (blocked or destructive steps),
    `VersionConflict` (the deployed version is not the one `expected_checksum` names) or
    `MigrationFailed` (the database refused a step); in every case nothing is changed.
    """
    async with db.begin() as conn:
        return await deploy_in(conn, db, slug, source, allow_destructive=allow_destructive,
                               expected_checksum=expected_checksum, actor=actor, deployed_by=deployed_by,
                               progress=progress)


def change_feed_sql(pg_schema: str, model: Schema) -> str:
    """What every deploy (re)installs, idempotently, as the tenant's role:

    - on every table, a statement trigger NOTIFYing `schema.table` on `CHANGES_FEED` (once per table and
      transaction: PostgreSQL folds identical notifications) when some process watches the table (a row of
      `backsaas_watched`, engine.changes.tell_interest) — what GraphQL subscriptions and SSE wake on;
    - for `realtime: true` entities, a row trigger appending each change to `backsaas_changes` (the log
      Server-Sent Events are read from and resumed by id; a day of it is kept), and none on the others.
    """
    schema = quote(pg_schema)
    notify = f"{schema}.{quote(naming.CHANGE_FUNCTION)}()"
    log = f"{schema}.{quote(naming.LOG_FUNCTION)}()"
    watched = f"{schema}.{quote(naming.WATCHED)}"
    script = [f"CREATE TABLE IF NOT EXISTS {watched} (table_name text NOT NULL, listener integer NOT NULL, "
              "PRIMARY KEY (table_name, listener))",
              f"CREATE OR REPLACE FUNCTION {notify} RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
              f"IF EXISTS (SELECT 1 FROM {watched} WHERE table_name = TG_TABLE_NAME) THEN "
              f"PERFORM pg_notify('{CHANGES_FEED}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME); END IF; "
              "RETURN NULL; END$$"]
    if any(e.realtime for e in model.entities):  # the log exists once some entity streams its changes
        script += [
            f"CREATE TABLE IF NOT EXISTS {schema}.{quote(naming.CHANGE_LOG)} (id bigserial PRIMARY KEY, "
            "entity text NOT NULL, action text NOT NULL, record jsonb, old jsonb, at timestamptz NOT NULL DEFAULT now())",
            f"CREATE INDEX IF NOT EXISTS {quote(naming.CHANGE_LOG + '_entity_id')} ON "
            f"{schema}.{quote(naming.CHANGE_LOG)} (entity, id)",
            f"CREATE OR REPLACE FUNCTION {log} RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
            f"INSERT INTO {schema}.{quote(naming.CHANGE_LOG)} (entity, action, record, old) VALUES (TG_TABLE_NAME, "
            "CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END, "
            "CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END, "
            "CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END); "
            f"IF random() < 0.001 THEN DELETE FROM {schema}.{quote(naming.CHANGE_LOG)} "
            "WHERE at < now() - interval '1 day'; END IF; RETURN NULL; END$$",
        ]
    for entity in model.entities:
        table = f"{schema}.{quote(entity.name)}"
        script.append(f"CREATE OR REPLACE TRIGGER {quote(naming.change_trigger_name(entity.name))} AFTER INSERT OR "
                      f"UPDATE OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {notify}")
        log_trigger = quote(naming.log_trigger_name(entity.name))
        script.append(f"CREATE OR REPLACE TRIGGER {log_trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                      f"FOR EACH ROW EXECUTE FUNCTION {log}" if entity.realtime
                      else f"DROP TRIGGER IF EXISTS {log_trigger} ON {table}")
    return ";\n".join(script)


async def install_change_feed(conn: AsyncConnection, db: Database, slug: str, model: Schema) -> None:
    driver = await driver_of(conn)
    await driver.execute(f"SET LOCAL ROLE {quote(db.role(slug))};\n"
                         f"{change_feed_sql(naming.schema_name(slug), model)};\nRESET ROLE")


def notify_triggers_sql(channel: str) -> str:
    """Triggers telling every process which tenant changed (its row, versions, API keys, members), and when
    the token signing keys changed."""
    return f"""
CREATE OR REPLACE FUNCTION system.backsaas_notify_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  changed text;
BEGIN
  IF TG_TABLE_NAME = 'tenants' THEN
    IF TG_OP = 'DELETE' THEN changed := OLD.slug; ELSE changed := NEW.slug; END IF;
    IF TG_OP = 'UPDATE' AND NEW.slug <> OLD.slug THEN PERFORM pg_notify('{channel}', OLD.slug); END IF;
  ELSE
    SELECT slug INTO changed FROM system.tenants
     WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
  END IF;
  IF changed IS NOT NULL THEN PERFORM pg_notify('{channel}', changed); END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON system.tenants
  FOR EACH ROW EXECUTE FUNCTION system.backsaas_notify_tenant();
CREATE OR REPLACE TRIGGER schema_versions_notify AFTER INSERT OR UPDATE OR DELETE ON system.schema_versions
  FOR EACH ROW EXECUTE FUNCTION system.backsaas_notify_tenant();
CREATE OR REPLACE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON system.api_keys
  FOR EACH ROW EXECUTE FUNCTION system.backsaas_notify_tenant();
CREATE OR REPLACE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON system.memberships
  FOR EACH ROW EXECUTE FUNCTION system.backsaas_notify_tenant();
CREATE OR REPLACE FUNCTION system.backsaas_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], TG_ARGV[1]);  -- (channel, payload) given by the trigger
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON system.signing_keys
  FOR EACH STATEMENT EXECUTE FUNCTION system.backsaas_notify('{channel}', '{SIGNING_KEYS_CHANGED}');
CREATE OR REPLACE TRIGGER plans_notify AFTER INSERT OR UPDATE OR DELETE ON system.plans
  FOR EACH STATEMENT EXECUTE FUNCTION system.backsaas_notify('{channel}', '{PLANS_CHANGED}');
CREATE OR REPLACE FUNCTION system.backsaas_notify_outbox_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN  -- rows a dispatcher may act on: new or redelivered events, and ended deliveries (a tenant's slot is free);
  -- never a claim (-> delivering), nor a statement that changed no row: the dispatcher's own claims would wake it
  IF EXISTS (SELECT 1 FROM changed_rows WHERE status <> 'delivering') THEN
    PERFORM pg_notify('{OUTBOX_CHANNEL}', '');
  END IF;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS events_notify ON system.events;
CREATE OR REPLACE TRIGGER events_inserted_notify AFTER INSERT ON system.events REFERENCING NEW TABLE AS changed_rows
  FOR EACH STATEMENT EXECUTE FUNCTION system.backsaas_notify_outbox_rows();
CREATE OR REPLACE TRIGGER events_updated_notify AFTER UPDATE ON system.events REFERENCING NEW TABLE AS changed_rows
  FOR EACH STATEMENT EXECUTE FUNCTION system.backsaas_notify_outbox_rows();
DROP FUNCTION IF EXISTS system.backsaas_notify_signing_keys(), system.backsaas_notify_plans(),
  system.backsaas_notify_outbox()"""


OUTBOX_SCHEMA = "backsaas_outbox"  # holds only `enqueue`, which any role may call and only tenant roles may use


def outbox_function_sql(platform_role: str) -> str:
    """`backsaas_outbox.enqueue(events)`: how a tenant's transaction puts its webhook and async-hook events
    in `system.events` without any privilege on `system`.

    It runs as the platform's role (SECURITY DEFINER) and takes the tenant from the role the caller acts
    as (`SET ROLE`, which `current_setting('role')` still shows inside): the tenant whose schema that role
    owns. So a tenant's connection enqueues events for its own tenant only, and a connection acting as no
    tenant (after `RESET ROLE`) for none. Schema names are `naming.schema_name`'s: slugs of at most 40
    characters are never shortened, so `t_` and the slug with `_` for `-` is the name.
    """
    role = quote(platform_role)
    return f"""
CREATE SCHEMA IF NOT EXISTS {OUTBOX_SCHEMA} AUTHORIZATION {role};
GRANT USAGE ON SCHEMA {OUTBOX_SCHEMA} TO PUBLIC;
SET LOCAL ROLE {role};
CREATE OR REPLACE FUNCTION {OUTBOX_SCHEMA}.enqueue(events jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  tenant uuid;
BEGIN
  SELECT t.id INTO tenant FROM system.tenants t
    JOIN pg_namespace n ON n.nspname = CASE WHEN t.slug = '{naming.SYSTEM_TENANT}' THEN '{naming.SYSTEM_TENANT}'
                                            ELSE 't_' || replace(t.slug, '-', '_') END
    JOIN pg_roles r ON r.oid = n.nspowner
   WHERE r.rolname = current_setting('role') AND NOT r.rolcanlogin AND NOT r.rolsuper;
  IF tenant IS NULL THEN
    RAISE EXCEPTION 'only a tenant''s role may write to the outbox' USING ERRCODE = 'insufficient_privilege';
  END IF;
  INSERT INTO system.events (tenant_id, entity, action, kind, target, secret_name, payload, caller)
  SELECT tenant, e.entity, e.action, e.kind, e.target, e.secret_name, e.payload, e.caller
    FROM jsonb_to_recordset(events) AS e(entity text, action text, kind text, target text, secret_name text,
                                         payload jsonb, caller jsonb);
END $$;
RESET ROLE"""


def write_functions_sql(platform_role: str) -> str:
    """`backsaas_write.refused_reference(table, column, target, value)`: how a tenant's write statement refuses a ref
    value naming no row the caller may read (engine/query/sql.py `referenced`): PostgreSQL's own foreign key
    error, worded as the database words it for a row that does not exist. It only raises: any role may call it."""
    role = quote(platform_role)
    return f"""
CREATE SCHEMA IF NOT EXISTS backsaas_write AUTHORIZATION {role};
GRANT USAGE ON SCHEMA backsaas_write TO PUBLIC;
SET LOCAL ROLE {role};
CREATE OR REPLACE FUNCTION backsaas_write.refused_reference(tbl text, col text, target text, val text) RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'insert or update on table "%" violates foreign key constraint "%_%_fkey"', tbl, tbl, col
    USING ERRCODE = 'foreign_key_violation', DETAIL = format('Key (%s)=(%s) is not present in table "%s".', col, val, target);
END $$;
RESET ROLE"""


# Platform entities a release may reshape, dropping their old columns: rows the engine itself writes and
# rebuilds (usage_daily went from a column per metric to a row per metric in issue 14). Any other destructive
# step of a platform deploy is still refused.
PLATFORM_RESHAPED = frozenset({"usage_daily"})


async def only_reshapes(conn: AsyncConnection, db: Database, source: str) -> bool:
    """Whether the platform deploy of `source` has destructive steps, all of them on `PLATFORM_RESHAPED`."""
    new = load_schema(source, naming.SYSTEM_TENANT, tenant=False)
    _, _, plan = await _plan(conn, db, naming.SYSTEM_TENANT, new, False)
    destructive = [s for s in plan.steps if s.destructive]
    return bool(destructive) and all(s.target.split(".", 1)[0] in PLATFORM_RESHAPED for s in destructive)


# Several tenants may claim a domain (functions/domains.py), only one may hold it verified: a partial unique
# index, which the schema format cannot declare, made here on every platform deploy (IF NOT EXISTS).
VERIFIED_DOMAINS_UNIQUE = ("CREATE UNIQUE INDEX IF NOT EXISTS tenant_domains_verified_domain_key"
                           " ON system.tenant_domains (domain) WHERE verified_at IS NOT NULL")


# The outbox's claim (engine/outbox.py `CLAIM`) walks the tenants with pending events and reads each one's
# oldest first: an index of pending events only, by tenant, so a tenant's backlog is never scanned whole.
PENDING_BY_TENANT = ("CREATE INDEX IF NOT EXISTS events_pending_by_tenant"
                     " ON system.events (tenant_id, next_attempt_at) WHERE status = 'pending'")


async def deploy_platform(db: Database, progress: Progress | None = None, actor: str = "engine",
                          source: str | None = None) -> Deployment:
    """Deploy `platform.yaml` (or `source`) as the system tenant, creating its schema and row on the very first run."""
    source = source or catalog.PLATFORM_SCHEMA_PATH.read_text(encoding="utf-8")
    slug = naming.SYSTEM_TENANT
    async with db.begin() as conn:
        await lock_tenant(conn, slug)
        if not await catalog.system_deployed(conn):
            await create_tenant_schema(conn, db, slug)
            model = load_schema(source, "platform.yaml")
            plan = plan_migration(None, model, naming.SYSTEM_TENANT)
            await apply_plan(conn, db, slug, plan, progress)
            await install_change_feed(conn, db, slug, model)
            tenant = await catalog.insert_tenant(conn, slug, "BackSaas platform", "active")
            recorded = await catalog.record_version(conn, tenant.id, 1, source, [s.as_dict() for s in plan.steps], actor)
            deployment = Deployment(slug, 1, recorded.checksum, plan, changed=True)
        else:
            reshape = await only_reshapes(conn, db, source)
            deployment = await deploy_in(conn, db, slug, source, actor=actor, progress=progress, allow_destructive=reshape)
        await conn.exec_driver_sql(f"SET LOCAL ROLE {quote(db.role(slug))}")
        driver = await driver_of(conn)
        await driver.execute(notify_triggers_sql(CHANGES_CHANNEL))
        await conn.exec_driver_sql("RESET ROLE")
        await driver.execute(outbox_function_sql(db.role(slug)))
        await driver.execute(write_functions_sql(db.role(slug)))
        system = await catalog.find_tenant(conn, slug)
        await audit.install(conn, db.role(slug), system.id)
        await audit.install_triggers(conn, slug, system.id, load_schema(source, "platform.yaml", tenant=False))
        await ensure_signing_key(conn)
        await seed_plans(conn)  # free (what new tenants get unless they name another), starter, pro, enterprise
        await ensure_every_tenants_bounds_checks(conn, db)  # once: tables of an engine before bounds CHECKs
        await ensure_user_metadata_columns(conn, db)  # once: users tables of an engine before user_metadata
        await driver.execute(VERIFIED_DOMAINS_UNIQUE)
        await driver.execute(PENDING_BY_TENANT)
        return deployment
