"""Schema deploys: every kind of step, the refusals, and the all-or-nothing apply with its recorded versions."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from engine.errors import MigrationFailed, MigrationRefused, SchemaInvalid, VersionConflict
from engine.schema import load_schema
from engine.storage.deploy import deploy, plan_deploy
from engine.storage.planner import plan_migration
from functions.tenants import create_tenant

BASE = """
name: notes
entities:
  note:
    fields:
      title: {type: string, max_length: 50, required: true}
      body:  {type: text}
      stars: {type: integer}
      kind:  {type: enum, values: [a, b]}
"""
_numbers = itertools.count()


async def tenant(db: Database, source: str = BASE, rows: int = 0) -> str:
    slug = f"mig-{next(_numbers)}"
    await create_tenant(db, slug, source=source)
    for i in range(rows):
        await sql(db, slug, f"INSERT INTO t_{slug.replace('-', '_')}.note (title, stars, kind) VALUES ('n{i}', {i}, 'a')")
    return slug


async def sql(db: Database, slug: str, statement: str) -> list[sa.Row]:
    async with db.begin() as conn:
        await conn.exec_driver_sql(f'SET LOCAL ROLE "{db.role(slug)}"')
        result = await conn.execute(sa.text(statement))
        return list(result) if result.returns_rows else []


async def columns(db: Database, slug: str, table: str = "note") -> dict[str, sa.Row]:
    async with db.begin() as conn:
        rows = await conn.execute(sa.text(
            "SELECT column_name, udt_name, is_nullable, column_default, character_maximum_length "
            "FROM information_schema.columns WHERE table_schema = :s AND table_name = :t"),
            {"s": f"t_{slug.replace('-', '_')}", "t": table})
        return {r.column_name: r for r in rows}


async def snapshot(db: Database, slug: str) -> list[tuple]:
    """Every column, constraint and index of a tenant's schema, and the row counts: to prove nothing changed."""
    schema = f"t_{slug.replace('-', '_')}"
    async with db.begin() as conn:
        cols = (await conn.execute(sa.text(
            "SELECT table_name, column_name, udt_name, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = :s ORDER BY 1, 2"), {"s": schema})).all()
        cons = (await conn.execute(sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = CAST(:s AS regnamespace) ORDER BY 1"),
            {"s": schema})).all()
        idx = (await conn.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1"),
                                  {"s": schema})).all()
        count = await conn.scalar(sa.text(f"SELECT count(*) FROM {schema}.note"))
    return [*map(tuple, cols), *map(tuple, cons), *map(tuple, idx), ("rows", count)]


def kinds(deployment) -> list[str]:
    return [s.kind for s in deployment.plan.steps]


async def test_first_deploy_records_version_1_with_source_and_checksum(db: Database):
    slug = await tenant(db)
    async with db.begin() as conn:
        row = await catalog.find_tenant(conn, slug)
        (version,) = await catalog.version_history(conn, row.id)
    assert version.version == 1 and version.source == BASE and version.checksum == catalog.checksum(BASE)
    assert version.actor == "engine" and version.created_at is not None


async def test_add_entity_with_a_relation(db: Database):
    slug = await tenant(db)
    new = BASE + "  tag:\n    fields:\n      note: {type: ref, to: note, on_delete: cascade}\n      label: {type: string}\n"
    done = await deploy(db, slug, new)
    assert kinds(done) == ["add_entity", "add_relation"] and done.version == 2
    assert set(await columns(db, slug, "tag")) == {"id", "note_id", "label", "created_at", "updated_at"}


async def test_add_optional_field_and_required_field_with_default_on_a_table_with_rows(db: Database):
    slug = await tenant(db, rows=2)
    new = BASE.replace("      kind:", "      views: {type: integer, required: true, default: 0}\n"
                                    "      note: {type: text}\n      kind:")
    done = await deploy(db, slug, new)
    assert kinds(done) == ["add_field", "add_field"]
    assert [r.views for r in await sql(db, slug, f"SELECT views FROM t_{slug.replace('-', '_')}.note")] == [0, 0]


async def test_required_field_without_default_is_refused_on_a_table_with_rows(db: Database):
    slug = await tenant(db, rows=1)
    new = BASE.replace("      kind:", "      views: {type: integer, required: true}\n      kind:")
    with pytest.raises(MigrationRefused) as refused:
        await deploy(db, slug, new)
    assert refused.value.details[0].path == "note.views"
    assert "has rows and the field has no default" in refused.value.details[0].message
    empty = await tenant(db)
    assert kinds(await deploy(db, empty, new)) == ["add_field"]  # an empty table takes it


async def test_add_and_drop_index(db: Database):
    slug = await tenant(db)
    with_index = BASE + "    indexes: [[stars, kind]]\n"
    assert kinds(await deploy(db, slug, with_index)) == ["add_index"]
    done = await deploy(db, slug, BASE)
    assert kinds(done) == ["drop_index"] and not done.plan.destructive


async def test_rename_field_keeps_its_data_and_renames_its_constraints(db: Database):
    slug = await tenant(db, rows=1)
    renamed = BASE.replace("      kind:  {type: enum, values: [a, b]}",
                           "      category: {type: enum, values: [a, b], renamed_from: kind}")
    done = await deploy(db, slug, renamed)
    assert kinds(done) == ["rename_field", "rename_check"]
    (row,) = await sql(db, slug, f"SELECT category FROM t_{slug.replace('-', '_')}.note")
    assert row.category == "a"
    plan_again = await plan_deploy(db, slug, renamed.replace("[a, b]", "[a, b, c]"))
    assert [s.kind for s in plan_again.plan.steps] == ["drop_check", "add_check"]  # named as the planner expects


async def test_rename_entity_keeps_rows_and_relations(db: Database):
    source = BASE + "  tag:\n    fields:\n      note: {type: ref, to: note, reverse: tags}\n"
    slug = await tenant(db, source, rows=1)
    schema = f"t_{slug.replace('-', '_')}"
    await sql(db, slug, f"INSERT INTO {schema}.tag (note_id) SELECT id FROM {schema}.note")
    renamed = (source.replace("  note:\n    fields:", "  memo:\n    renamed_from: note\n    fields:")
               .replace("to: note", "to: memo"))
    done = await deploy(db, slug, renamed)
    assert kinds(done)[0] == "rename_entity"
    (row,) = await sql(db, slug, f"SELECT m.title FROM {schema}.memo m JOIN {schema}.tag t ON t.note_id = m.id")
    assert row.title == "n0"
    assert kinds(await deploy(db, slug, renamed.replace("[a, b]", "[a, b, c]"))) == ["drop_check", "add_check"]


async def test_change_of_default_and_of_nullability(db: Database):
    slug = await tenant(db, rows=1)
    changed = BASE.replace("body:  {type: text}", "body:  {type: text, default: 'see: here', required: true}")
    done = await deploy(db, slug, changed)
    assert sorted(s.description for s in done.plan.steps) == ["make note.body required", "set the default of note.body"]
    cols = await columns(db, slug)
    assert cols["body"].is_nullable == "NO" and cols["body"].column_default == "'see: here'::text"
    (row,) = await sql(db, slug, f"SELECT body FROM t_{slug.replace('-', '_')}.note")
    assert row.body == "see: here"  # existing NULLs were filled with the default first
    back = await deploy(db, slug, BASE)
    assert sorted(s.description for s in back.plan.steps) == ["drop the default of note.body", "make note.body optional"]
    assert (await columns(db, slug))["body"].is_nullable == "YES"


async def test_making_a_field_required_without_default_is_refused_on_a_table_with_rows(db: Database):
    slug = await tenant(db, rows=1)
    with pytest.raises(MigrationRefused, match="refused"):
        await deploy(db, slug, BASE.replace("body:  {type: text}", "body:  {type: text, required: true}"))


async def test_widening_integer_to_bigint_longer_string_and_more_enum_values(db: Database):
    slug = await tenant(db, rows=1)
    wider = (BASE.replace("stars: {type: integer}", "stars: {type: bigint}")
             .replace("max_length: 50", "max_length: 200").replace("[a, b]", "[a, b, c]"))
    done = await deploy(db, slug, wider)
    assert sorted(kinds(done)) == ["add_check", "drop_check", "widen_field", "widen_field"]
    assert not done.plan.destructive
    cols = await columns(db, slug)
    assert cols["stars"].udt_name == "int8" and cols["title"].character_maximum_length == 200


async def test_narrowing_and_drops_are_refused_without_allow_destructive(db: Database):
    slug = await tenant(db, rows=1)
    narrower = (BASE.replace("max_length: 50", "max_length: 10").replace("[a, b]", "[a]")
                .replace("      body:  {type: text}\n", ""))
    before = await snapshot(db, slug)
    with pytest.raises(MigrationRefused) as refused:
        await deploy(db, slug, narrower)
    assert sorted(p.path for p in refused.value.details) == ["note.body", "note.kind", "note.title"]
    assert await snapshot(db, slug) == before
    done = await deploy(db, slug, narrower, allow_destructive=True)
    assert done.plan.destructive and "body" not in await columns(db, slug)


async def test_dropping_an_entity_is_destructive(db: Database):
    source = BASE + "  extra:\n    fields:\n      x: {type: text}\n"
    slug = await tenant(db, source)
    with pytest.raises(MigrationRefused, match="refused"):
        await deploy(db, slug, BASE)
    done = await deploy(db, slug, BASE, allow_destructive=True)
    assert kinds(done) == ["drop_entity"] and await columns(db, slug, "extra") == {}


async def test_a_failing_apply_leaves_the_database_and_version_untouched(db: Database):
    slug = await tenant(db, rows=2)
    await sql(db, slug, f"UPDATE t_{slug.replace('-', '_')}.note SET title = 'same'")
    # the first steps succeed, then a unique constraint fails on the duplicate titles: all must roll back
    failing = BASE.replace("      kind:", "      extra: {type: text}\n      kind:").replace(
        "title: {type: string, max_length: 50, required: true}",
        "title: {type: string, max_length: 50, required: true, unique: true}")
    before = await snapshot(db, slug)
    with pytest.raises(MigrationFailed, match="could not create unique index"):
        await deploy(db, slug, failing)
    assert await snapshot(db, slug) == before
    async with db.begin() as conn:
        row = await catalog.find_tenant(conn, slug)
        assert (await catalog.current_version(conn, row.id)).version == 1


async def test_an_invalid_schema_changes_nothing(db: Database):
    slug = await tenant(db)
    with pytest.raises(SchemaInvalid):
        await deploy(db, slug, BASE + "  bad:\n    fields:\n      x: {type: ref, to: nowhere}\n")
    async with db.begin() as conn:
        row = await catalog.find_tenant(conn, slug)
        assert (await catalog.current_version(conn, row.id)).version == 1


async def test_deploy_against_a_stale_plan_is_refused(db: Database):
    slug = await tenant(db)
    first = BASE.replace("      kind:", "      a1: {type: text}\n      kind:")
    planned = await plan_deploy(db, slug, first)
    await deploy(db, slug, BASE.replace("      kind:", "      a2: {type: text}\n      kind:"))  # someone else deploys
    with pytest.raises(VersionConflict):
        await deploy(db, slug, first, expected_checksum=planned.base_checksum)


async def test_redeploying_the_same_source_is_a_no_op(db: Database):
    slug = await tenant(db)
    done = await deploy(db, slug, BASE)
    assert not done.changed and done.version == 1


async def test_incompatible_type_changes_are_refused_even_when_destructive_is_allowed(db: Database):
    slug = await tenant(db)
    with pytest.raises(MigrationRefused, match="refused") as refused:
        await deploy(db, slug, BASE.replace("body:  {type: text}", "body:  {type: json}"), allow_destructive=True)
    assert "add a new field instead" in refused.value.details[0].message


def test_planner_is_pure_and_orders_drops_before_creates():
    old = load_schema(BASE + "  gone:\n    fields:\n      n: {type: ref, to: note}\n")
    new = load_schema(BASE + "  fresh:\n    fields:\n      n: {type: ref, to: note}\n")
    plan = plan_migration(old, new, "t_x", allow_destructive=True)
    assert [s.kind for s in plan.steps] == ["drop_entity", "add_entity", "add_relation"]
    assert "DROP TABLE t_x.gone" in plan.script() and plan.script().count("CREATE TABLE") == 1


async def test_date_and_datetime_defaults_deploy_and_fill_new_rows(db: Database):
    """`schema check` accepted them and the deploy failed with CompileError."""
    slug = await tenant(db)
    dated = BASE.replace("      kind:", "      due: {type: date, default: 2024-01-31}\n"
                                        "      at: {type: datetime, default: '2024-01-31T10:00:00Z'}\n"
                                        "      days: {type: array, items: date, default: [2024-02-01]}\n      kind:")
    await deploy(db, slug, dated)
    await sql(db, slug, f"INSERT INTO t_{slug.replace('-', '_')}.note (title) VALUES ('x')")
    (row,) = await sql(db, slug, f"SELECT due::text, extract(epoch FROM at) AS at, days::text "
                                 f"FROM t_{slug.replace('-', '_')}.note")
    assert (row.due, row.at, row.days) == ("2024-01-31", 1706695200, "{2024-02-01}")


async def test_a_percent_sign_in_a_string_default_is_stored_verbatim(db: Database):
    """`"%s"` was stored as `'%%%%s'`: the DDL's literal was escaped for a paramstyle it never went through."""
    slug = await tenant(db)
    await deploy(db, slug, BASE.replace("body:  {type: text}", "body:  {type: text, default: '%s 100% a:b'}"))
    await sql(db, slug, f"INSERT INTO t_{slug.replace('-', '_')}.note (title) VALUES ('x')")
    (row,) = await sql(db, slug, f"SELECT body FROM t_{slug.replace('-', '_')}.note")
    assert row.body == "%s 100% a:b"
    changed = await deploy(db, slug, BASE.replace("body:  {type: text}", "body:  {type: text, default: '50%'}"))
    assert kinds(changed) == ["alter_field"]
    assert (await columns(db, slug))["body"].column_default == "'50%'::text"


BOUNDED = BASE.replace("stars: {type: integer}", "stars: {type: integer, minimum: 0, maximum: 5}")


async def test_changing_a_fields_bounds_replaces_its_check_and_the_database_enforces_the_new_ones(db: Database):
    slug = await tenant(db, BOUNDED, rows=1)
    table = f"t_{slug.replace('-', '_')}.note"
    with pytest.raises(sa.exc.IntegrityError, match="stars_bounds"):
        await sql(db, slug, f"UPDATE {table} SET stars = 6")
    done = await deploy(db, slug, BOUNDED.replace("maximum: 5", "maximum: 100"))
    assert kinds(done) == ["drop_bounds", "add_bounds"]
    await sql(db, slug, f"UPDATE {table} SET stars = 100")
    with pytest.raises(sa.exc.IntegrityError, match="stars_bounds"):
        await sql(db, slug, f"UPDATE {table} SET stars = -1")


async def test_removing_a_fields_bounds_drops_its_check(db: Database):
    slug = await tenant(db, BOUNDED, rows=1)
    done = await deploy(db, slug, BASE)
    assert kinds(done) == ["drop_bounds"]
    await sql(db, slug, f"UPDATE t_{slug.replace('-', '_')}.note SET stars = 1000")


async def test_adding_bounds_that_existing_rows_break_fails_and_changes_nothing(db: Database):
    slug = await tenant(db, rows=3)  # stars 0, 1, 2
    before = await snapshot(db, slug)
    with pytest.raises(MigrationFailed, match="stars_bounds"):
        await deploy(db, slug, BASE.replace("stars: {type: integer}", "stars: {type: integer, maximum: 1}"))
    assert await snapshot(db, slug) == before


async def test_renaming_a_bounded_field_keeps_its_bounds_enforced(db: Database):
    slug = await tenant(db, BOUNDED, rows=1)
    renamed = BOUNDED.replace("stars: {type: integer,", "rating: {renamed_from: stars, type: integer,")
    done = await deploy(db, slug, renamed)
    assert kinds(done) == ["drop_bounds", "rename_field", "add_bounds"]
    with pytest.raises(sa.exc.IntegrityError, match="rating_bounds"):
        await sql(db, slug, f"UPDATE t_{slug.replace('-', '_')}.note SET rating = 6")


async def test_a_tenant_schema_declaring_a_platform_role_is_refused(db: Database):
    slug = await tenant(db)
    for role in ("platform_admin", "owner", "developer", "viewer"):
        with pytest.raises(SchemaInvalid) as refused:
            await deploy(db, slug, f"roles: [editor, {role}]\n" + BASE)
        assert [(p.path, p.message) for p in refused.value.details] == [
            ("roles[1]", f"'{role}' is a role of the platform and cannot be declared by a tenant")]
