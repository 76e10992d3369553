"""The platform is the tenant `system`: platform.yaml deployed by the engine, and tenants provisioned through it."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from engine import catalog
from engine.database import Database
from engine.errors import InvalidInput, SchemaInvalid, TenantExists
from engine.storage import naming
from engine.storage.deploy import deploy_platform
from functions.tenants import ProvisioningFailed, create_tenant
from functions.users import UserExists, create_platform_admin
from tests.conftest import driver_url, with_database


async def test_platform_yaml_is_deployed_into_the_system_schema(db: Database):
    async with db.begin() as conn:
        tables = set((await conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'system'"))).scalars()) - {naming.WATCHED}
        owner = await conn.scalar(sa.text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'system'"))
    assert {e.name for e in catalog.platform_model().entities} == tables
    assert owner == db.role("system")


async def test_the_system_tenant_is_a_row_of_its_own_tenants_table_with_its_version(db: Database):
    async with db.begin() as conn:
        system = await catalog.find_tenant(conn, "system")
        version = await catalog.current_version(conn, system.id)
    assert system.status == "active"
    assert version.version == 1 and version.source == catalog.PLATFORM_SCHEMA_PATH.read_text()


async def test_redeploying_an_unchanged_platform_yaml_changes_nothing(db: Database):
    again = await deploy_platform(db)
    assert not again.changed and again.version == 1


OLD_USAGE_DAILY = """  usage_daily:
    fields:
      tenant:        {type: ref, to: tenants, required: true, on_delete: cascade, reverse: usage}
      day:           {type: date, required: true}
      requests:      {type: bigint, required: true, default: 0, minimum: 0}
      rows_read:     {type: bigint, required: true, default: 0, minimum: 0}
      rows_written:  {type: bigint, required: true, default: 0, minimum: 0}
      storage_bytes: {type: bigint, required: true, default: 0, minimum: 0}
    unique: [[tenant, day]]
    permissions:
      read: {platform_admin: all, owner: member, admin: member, developer: member}

"""


async def test_an_older_platform_is_migrated_to_the_current_platform_yaml(server_url: str):
    """A data directory of an older release: its usage_daily (a column per metric) is reshaped to a row per
    metric, the one platform entity whose columns a release may drop (engine/storage/deploy.py)."""
    current = catalog.PLATFORM_SCHEMA_PATH.read_text()
    start = current.index("  usage_daily:\n")
    older = current[:start] + OLD_USAGE_DAILY + current[current.index("  quota_warnings:\n"):]  # before issue 14
    name = f"bst_upgrade_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(driver_url(server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = await Database.connect(with_database(server_url, name))
        await deploy_platform(db, source=older)
        upgraded = await deploy_platform(db)
        assert upgraded.version == 2
        dropped = sorted(s.target for s in upgraded.plan.steps if s.kind == "drop_field")
        assert dropped == [f"usage_daily.{f}" for f in ("requests", "rows_read", "rows_written", "storage_bytes")]
        assert {s.target for s in upgraded.plan.steps if s.kind == "add_field"} >= {"usage_daily.metric",
                                                                                     "usage_daily.value"}
        async with db.begin() as conn:
            system = await catalog.find_tenant(conn, "system")
            assert [v.actor for v in await catalog.version_history(conn, system.id)] == ["engine", "engine"]
        await db.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{name}_system"')
        await admin.close()


async def test_tenant_create_provisions_schema_role_and_version(db: Database):
    done = await create_tenant(db, "acme", name="Acme Inc", source="name: acme\nentities:\n  widget:\n    fields: {}\n")
    assert done.version == 1
    async with db.begin() as conn:
        listed = {t.slug: t for t in await catalog.list_tenants(conn)}
        role = await conn.scalar(sa.text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 't_acme'"))
    assert listed["acme"].name == "Acme Inc" and listed["acme"].status == "active"
    assert role == db.role("acme")


async def test_a_tenant_without_a_schema_gets_the_builtin_users_entity(db: Database):
    await create_tenant(db, "blank-one")
    async with db.begin() as conn:
        tables = set((await conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 't_blank_one'"))).scalars())
    assert tables == {"users", naming.WATCHED}  # and the change feed's own bookkeeping


@pytest.mark.parametrize("slug", ["ab", "Upper", "9lives", "system", "api", "has_underscore", "x" * 41])
async def test_invalid_or_reserved_slugs_are_refused(db: Database, slug: str):
    with pytest.raises(InvalidInput) as refused:
        await create_tenant(db, slug)
    assert refused.value.details[0].path == "slug"


async def test_a_duplicate_slug_is_refused(db: Database):
    await create_tenant(db, "twice")
    with pytest.raises(TenantExists):
        await create_tenant(db, "twice")


async def test_a_tenant_whose_schema_fails_leaves_a_failed_row_and_no_schema_or_role(db: Database):
    with pytest.raises(SchemaInvalid):  # refused before any row: the schema is checked first
        await create_tenant(db, "broken", source="name: b\nentities:\n  a:\n    fields:\n      x: {type: ref, to: nope}\n")
    async with db.begin() as conn:
        assert await catalog.find_tenant(conn, "broken") is None
    # a schema that passes the checks but that the database refuses: an index over more than 32 columns
    fields = "".join(f"      f{i}: {{type: integer}}\n" for i in range(33))
    columns = ", ".join(f"f{i}" for i in range(33))
    with pytest.raises(ProvisioningFailed, match=r"step 'deploy' failed: .*cannot use more than 32 columns"):
        await create_tenant(db, "broken", source=f"name: b\nentities:\n  a:\n    fields:\n{fields}    indexes: [[{columns}]]\n")
    async with db.begin() as conn:
        assert (await catalog.find_tenant(conn, "broken")).status == "failed"
        assert await conn.scalar(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = 't_broken'")) == 0
        assert await conn.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": db.role("broken")}) == 0


async def test_admin_create_stores_an_argon2_hash_and_the_platform_admin_role(db: Database):
    user_id = await create_platform_admin(db, "Root@Example.com", "correct horse battery")
    users = catalog.platform_tables()["users"]
    async with db.begin() as conn:
        row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).one()
    assert row.email == "root@example.com" and row.roles == ["platform_admin"] and row.verified
    assert row.password_hash.startswith("$argon2") and PasswordHasher().verify(row.password_hash, "correct horse battery")
    with pytest.raises(UserExists):
        await create_platform_admin(db, "root@example.com", "another password!")


@pytest.mark.parametrize(("email", "password", "field"), [
    ("a@b.c", "short", "password"),
    ("long.address@b.c", "long.address@b.c", "password"),
    ("no-at-sign", "long enough pw", "email"),
])
async def test_admin_create_refuses_weak_passwords_and_bad_emails(db: Database, email: str, password: str, field: str):
    with pytest.raises(InvalidInput) as refused:
        await create_platform_admin(db, email, password)
    assert refused.value.details[0].path == field
