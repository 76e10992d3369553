"""YAML -> tables: every type end to end, implicit columns, constraints, and the tenant's own role and schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.database import Database
from functions.tenants import create_tenant

REPO = Path(__file__).resolve().parent.parent

EVERY_TYPE = """
name: kitchen
entities:
  thing:
    owner: true
    fields:
      label:    {type: string, max_length: 20, required: true, unique: true}
      notes:    {type: text}
      count:    {type: integer, default: 7}
      big:      {type: bigint}
      ratio:    {type: number}
      price:    {type: decimal, precision: 8, scale: 2}
      flag:     {type: boolean, default: false}
      day:      {type: date}
      at:       {type: datetime}
      token:    {type: uuid}
      doc:      {type: json, default: {a: 1}}
      size:     {type: enum, values: [s, m, l], default: m}
      tags:     {type: array, items: string}
      scores:   {type: array, items: integer}
      parent:   {type: ref, to: thing, on_delete: set_null, reverse: children}
    indexes: [[size, day]]
  part:
    fields:
      thing:  {type: ref, to: thing, on_delete: cascade, required: true, reverse: parts}
      keeper: {type: ref, to: thing, on_delete: restrict, reverse: kept_parts}
      name:   {type: string}
    unique: [[thing, name]]
"""


@pytest.fixture(scope="module")
async def kitchen(db: Database) -> Database:
    await create_tenant(db, "kitchen", source=EVERY_TYPE)
    return db


async def as_tenant(db: Database, slug: str, sql: str, params: dict | None = None) -> list[sa.Row]:
    """Run one statement as the tenant's own role, the way requests run."""
    async with db.begin() as conn:
        await conn.exec_driver_sql(f'SET LOCAL ROLE "{db.role(slug)}"')
        result = await conn.execute(sa.text(sql), params or {})
        return list(result) if result.returns_rows else []


async def test_every_type_gets_its_postgres_column_type(kitchen: Database):
    async with kitchen.begin() as conn:
        rows = await conn.execute(sa.text(
            "SELECT column_name, data_type, udt_name, is_nullable, character_maximum_length, numeric_precision, "
            "numeric_scale FROM information_schema.columns WHERE table_schema = 't_kitchen' AND table_name = 'thing'"))
        columns = {r.column_name: r for r in rows}
    expected = {
        "id": "uuid", "label": "varchar", "notes": "text", "count": "int4", "big": "int8", "ratio": "float8",
        "price": "numeric", "flag": "bool", "day": "date", "at": "timestamptz", "token": "uuid", "doc": "jsonb",
        "size": "text", "tags": "_varchar", "scores": "_int4", "parent_id": "uuid", "owner_id": "uuid",
        "created_at": "timestamptz", "updated_at": "timestamptz",
    }
    assert {name: c.udt_name for name, c in columns.items()} == expected
    assert columns["label"].character_maximum_length == 20 and columns["label"].is_nullable == "NO"
    assert (columns["price"].numeric_precision, columns["price"].numeric_scale) == (8, 2)
    assert columns["notes"].is_nullable == "YES"


async def test_a_row_of_every_type_is_written_and_read_back(kitchen: Database):
    token = uuid.uuid4()
    await as_tenant(kitchen, "kitchen", """
        INSERT INTO t_kitchen.thing (label, notes, big, ratio, price, flag, day, at, token, doc, size, tags, scores)
        VALUES ('alpha', 'long text', 9007199254740993, 0.5, 12.34, true, '2024-02-29', '2024-02-29T12:00:00Z',
                :token, '{"k": [1, 2]}', 'l', ARRAY['x', 'y'], ARRAY[1, 2, 3])""", {"token": token})
    (row,) = await as_tenant(kitchen, "kitchen", "SELECT * FROM t_kitchen.thing WHERE label = 'alpha'")
    assert isinstance(row.id, uuid.UUID)
    assert (row.notes, row.count, row.big, row.ratio) == ("long text", 7, 9007199254740993, 0.5)
    assert row.price == decimal.Decimal("12.34") and row.flag is True
    assert row.day == dt.date(2024, 2, 29) and row.at == dt.datetime(2024, 2, 29, 12, tzinfo=dt.UTC)
    assert row.token == token and row.doc == {"k": [1, 2]} and row.size == "l"
    assert row.tags == ["x", "y"] and row.scores == [1, 2, 3]
    assert row.created_at == row.updated_at


async def test_defaults_are_applied_by_the_database(kitchen: Database):
    (row,) = await as_tenant(kitchen, "kitchen",
                             "INSERT INTO t_kitchen.thing (label) VALUES ('defaults') RETURNING count, flag, doc, size")
    assert (row.count, row.flag, row.doc, row.size) == (7, False, {"a": 1}, "m")


async def test_updated_at_is_kept_current_by_the_database(kitchen: Database):
    (before,) = await as_tenant(kitchen, "kitchen",
                                "INSERT INTO t_kitchen.thing (label) VALUES ('touch') RETURNING created_at, updated_at")
    await asyncio.sleep(0.01)
    (after,) = await as_tenant(kitchen, "kitchen",
                               "UPDATE t_kitchen.thing SET notes = 'x' WHERE label = 'touch' RETURNING created_at, updated_at")
    assert after.created_at == before.created_at and after.updated_at > before.updated_at


async def test_enum_values_are_enforced(kitchen: Database):
    with pytest.raises(IntegrityError, match="thing_size_check"):
        await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.thing (label, size) VALUES ('bad-size', 'xl')")


async def test_unique_fields_and_unique_sets_are_enforced(kitchen: Database):
    await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.thing (label) VALUES ('dup')")
    with pytest.raises(IntegrityError, match="thing_label_key"):
        await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.thing (label) VALUES ('dup')")
    (thing,) = await as_tenant(kitchen, "kitchen", "SELECT id FROM t_kitchen.thing WHERE label = 'dup'")
    await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.part (thing_id, name) VALUES (:t, 'p')", {"t": thing.id})
    with pytest.raises(IntegrityError, match="part_thing_id_name_key"):
        await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.part (thing_id, name) VALUES (:t, 'p')", {"t": thing.id})


async def test_refs_follow_their_on_delete_rule(kitchen: Database):
    make = "INSERT INTO t_kitchen.thing (label, parent_id) VALUES (:label, :parent) RETURNING id"
    (parent,) = await as_tenant(kitchen, "kitchen", make, {"label": "parent", "parent": None})
    (child,) = await as_tenant(kitchen, "kitchen", make, {"label": "child", "parent": parent.id})
    (keeper,) = await as_tenant(kitchen, "kitchen", make, {"label": "keeper", "parent": None})
    await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.part (thing_id, keeper_id, name) VALUES (:t, :k, 'bolt')",
                    {"t": parent.id, "k": keeper.id})
    with pytest.raises(IntegrityError, match="part_keeper_id_fkey"):  # restrict
        await as_tenant(kitchen, "kitchen", "DELETE FROM t_kitchen.thing WHERE id = :id", {"id": keeper.id})
    await as_tenant(kitchen, "kitchen", "DELETE FROM t_kitchen.thing WHERE id = :id", {"id": parent.id})
    (orphan,) = await as_tenant(kitchen, "kitchen", "SELECT parent_id FROM t_kitchen.thing WHERE id = :id", {"id": child.id})
    assert orphan.parent_id is None  # set_null
    parts = await as_tenant(kitchen, "kitchen", "SELECT 1 FROM t_kitchen.part WHERE thing_id = :id", {"id": parent.id})
    assert parts == []  # cascade
    with pytest.raises(IntegrityError, match="part_thing_id_fkey"):
        await as_tenant(kitchen, "kitchen", "INSERT INTO t_kitchen.part (thing_id) VALUES (:t)", {"t": uuid.uuid4()})


async def test_fk_columns_and_declared_indexes_are_indexed(kitchen: Database):
    async with kitchen.begin() as conn:
        names = set((await conn.execute(sa.text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 't_kitchen'"))).scalars())
    assert {"ix_thing_parent_id", "ix_thing_owner_id", "ix_thing_size_day", "ix_part_thing_id", "ix_part_keeper_id"} <= names


async def test_tenant_schema_and_tables_are_owned_by_its_nologin_role(kitchen: Database):
    role = kitchen.role("kitchen")
    async with kitchen.begin() as conn:
        owner = await conn.scalar(sa.text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 't_kitchen'"))
        tables = set((await conn.execute(sa.text(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 't_kitchen'"))).scalars())
        flags = (await conn.execute(sa.text("SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
                                    {"r": role})).one()
    assert owner == role and tables == {role}
    assert tuple(flags) == (False, False, False)


async def test_a_tenant_role_cannot_touch_another_tenants_tables(kitchen: Database):
    await create_tenant(kitchen, "pantry", source=EVERY_TYPE.replace("name: kitchen", "name: pantry"))
    await as_tenant(kitchen, "pantry", "INSERT INTO t_pantry.thing (label) VALUES ('secret')")
    for statement in ("SELECT * FROM t_pantry.thing", "INSERT INTO t_pantry.thing (label) VALUES ('x')",
                      "SELECT * FROM system.tenants"):
        with pytest.raises(DBAPIError, match="permission denied"):
            await as_tenant(kitchen, "kitchen", statement)


async def test_the_superuser_connection_is_not_what_tenant_work_runs_as(kitchen: Database):
    async with kitchen.begin() as conn:
        await conn.exec_driver_sql(f'SET LOCAL ROLE "{kitchen.role("kitchen")}"')
        current = await conn.scalar(sa.text("SELECT current_user"))
        superuser = await conn.scalar(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    assert current == kitchen.role("kitchen") and superuser is False


async def test_request_connections_switch_roles_between_tenants(kitchen: Database):
    for slug in ("kitchen", "system", "kitchen"):
        async with kitchen.as_role(kitchen.role(slug)) as conn:
            assert await conn.fetchval("SELECT current_user") == kitchen.role(slug)
