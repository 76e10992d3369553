"""Tables deployed before the engine made bounds CHECK constraints (`{column}_bounds`) get them: on the next
deploy of the tenant (even of the same schema), and once for every tenant when the platform starts
(`deploy_platform`, recorded so it runs once). Added NOT VALID: rows written before stay as they are, every
write from then on is checked by the database itself, whatever path it takes."""

from __future__ import annotations

import asyncpg
import pytest

from engine.database import Database
from engine.storage import naming
from engine.storage.deploy import BOUNDS_UPGRADE, deploy, deploy_platform
from functions.tenants import create_tenant
from tests.conftest import driver_url

SCHEMA = """
name: scores
entities:
  score:
    fields:
      points: {type: integer, minimum: 0, maximum: 10}
      note:   {type: text, max_length: 5}
"""
TABLE = f'"{naming.schema_name("scores")}".score'


@pytest.fixture(scope="module")
async def admin(db: Database, database_url: str):
    await create_tenant(db, "scores", source=SCHEMA)
    connection = await asyncpg.connect(driver_url(database_url))
    yield connection
    await connection.close()


async def constraints(admin: asyncpg.Connection) -> set[str]:
    return {r["conname"] for r in await admin.fetch(
        "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'c'", TABLE)}


async def insert_as_tenant(admin: asyncpg.Connection, db: Database, points: int) -> None:
    """A write that skips every check of the engine: only the database's constraints stand."""
    async with admin.transaction():
        await admin.execute(f'SET LOCAL ROLE "{db.role("scores")}"')
        await admin.execute(f"INSERT INTO {TABLE} (points) VALUES ($1)", points)


async def legacy(admin: asyncpg.Connection, db: Database) -> None:
    """The tenant as an older engine left it: no bounds CHECKs, and a row out of bounds written meanwhile."""
    await admin.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT points_bounds, DROP CONSTRAINT note_bounds")
    await insert_as_tenant(admin, db, 99)
    assert not {"points_bounds", "note_bounds"} & await constraints(admin)


async def test_a_redeploy_adds_the_bounds_checks_a_table_lacks(admin, db: Database):
    await legacy(admin, db)
    again = await deploy(db, "scores", SCHEMA)
    assert not again.changed  # the same schema: no new version, but the table is mended
    assert {"points_bounds", "note_bounds"} <= await constraints(admin)
    with pytest.raises(asyncpg.CheckViolationError, match="points_bounds"):
        await insert_as_tenant(admin, db, 11)
    await insert_as_tenant(admin, db, 10)
    assert await admin.fetchval(f"SELECT count(*) FROM {TABLE} WHERE points = 99") == 1  # the old row is kept


async def test_the_platforms_start_adds_them_once_for_every_tenant(admin, db: Database):
    await legacy(admin, db)
    await admin.execute("DELETE FROM backsaas_private.upgrades WHERE name = $1", BOUNDS_UPGRADE)  # an older install
    await deploy_platform(db)
    assert {"points_bounds", "note_bounds"} <= await constraints(admin)
    with pytest.raises(asyncpg.CheckViolationError, match="points_bounds"):
        await insert_as_tenant(admin, db, -1)
    assert await admin.fetchval("SELECT count(*) FROM backsaas_private.upgrades WHERE name = $1", BOUNDS_UPGRADE) == 1
    await admin.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT points_bounds")
    await deploy_platform(db)  # recorded as done: a later start does not sweep every tenant again
    assert "points_bounds" not in await constraints(admin)
