"""plan_migration(old model, new model) -> the ordered steps, each with the exact SQL it will run.

Plans are computed from the two models, never from introspecting the database: what was deployed is
known from the recorded version. The planner is pure (no connection); the one fact it needs about the
data, which tables hold rows, is passed in. It never executes anything: `engine.storage.deploy` does.

Order matters and is fixed by phases: constraints that go away are dropped first, then fields and
entities, then renames, then new tables and columns and column changes, and new constraints last
(so foreign keys can point at tables created in the same plan).

One exception looks at the database: `bounds_checks` lists every bounds CHECK a model implies, so that
tables deployed before the engine made them get them (engine.storage.deploy.ensure_bounds_checks): a plan
from an unchanged model would never add them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable

from engine.errors import Problem
from engine.schema.model import Entity, Field, Schema
from engine.storage import naming
from engine.storage.tables import (
    DIALECT,
    ON_DELETE_SQL,
    bounds_name,
    bounds_of,
    build_column,
    build_metadata,
    column_type,
    default_sql,
    foreign_keys,
    index_sets,
    server_default,
    unique_sets,
)

PHASES = ("drop_constraints", "drop", "rename", "create", "alter", "add_constraints")


@dataclass(frozen=True)
class Step:
    kind: str  # add_entity, drop_entity, rename_entity, add_field, drop_field, rename_field, alter_field, add_index, ...
    target: str  # entity or entity.field
    description: str
    sql: tuple[str, ...]
    destructive: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "description": self.description,
                "sql": list(self.sql), "destructive": self.destructive}


@dataclass(frozen=True)
class MigrationPlan:
    steps: tuple[Step, ...]
    blockers: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.blockers

    @property
    def destructive(self) -> bool:
        return any(s.destructive for s in self.steps)

    def script(self) -> str:
        """The whole plan as one SQL script, for a dry run."""
        return "\n".join(f"-- {s.description}\n" + "\n".join(f"{q};" for q in s.sql) for s in self.steps)


class _Statements:
    """A file-like sink for Alembic's offline mode: each write() is exactly one statement."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def write(self, text: str) -> None:
        statement = text.strip().rstrip(";").strip()
        if statement:
            self.statements.append(statement)

    def flush(self) -> None:
        pass


def alembic_sql(build: Callable[[Operations], None]) -> tuple[str, ...]:
    """The SQL Alembic's Operations API would run, rendered offline for PostgreSQL."""
    sink = _Statements()
    context = MigrationContext.configure(dialect=DIALECT,
                                         opts={"as_sql": True, "output_buffer": sink, "literal_binds": True})
    build(Operations(context))
    return tuple(sink.statements)


def ddl(construct: Any) -> str:
    return str(construct.compile(dialect=DIALECT)).strip()


def quote(name: str) -> str:
    return DIALECT.identifier_preparer.quote(name)


def bounds_checks(model: Schema, pg_schema: str) -> dict[tuple[str, str], str]:
    """Every bounds CHECK of `model` (`{column}_bounds`, engine.storage.tables): (table, constraint) -> the
    ALTER TABLE adding it NOT VALID, so that rows written before it are left as they are (a table of an
    older engine may hold some out of bounds) while every write from then on is checked."""
    tables = build_metadata(model, pg_schema).tables
    found: dict[tuple[str, str], str] = {}
    for entity in model.entities:
        named = {c.name: c for c in tables[f"{pg_schema}.{entity.name}"].constraints}
        for f in entity.fields:
            if bounds_of(f) is not None:
                name = bounds_name(f.column)
                found[(entity.name, name)] = ddl(AddConstraint(named[name])) + " NOT VALID"
    return found


def touch_trigger_sql(pg_schema: str, table: str) -> str:
    return (f"CREATE TRIGGER {quote(naming.trigger_name(table))} BEFORE UPDATE ON {quote(pg_schema)}.{quote(table)} "
            f"FOR EACH ROW EXECUTE FUNCTION {quote(pg_schema)}.{quote(naming.TOUCH_FUNCTION)}()")


# -- constraints, keyed by what they mean so that renames are told apart from changes ---------------

ConstraintKey = tuple[Any, ...]


def constraint_keys(entity: Entity, column_map: dict[str, str] | None = None,
                    entity_map: dict[str, str] | None = None) -> dict[ConstraintKey, str]:
    """key -> current name; `column_map` and `entity_map` translate an old model's names into the new one's."""
    def cols(columns: Iterable[str]) -> tuple[str, ...] | None:
        if column_map is None:
            return tuple(columns)
        mapped = tuple(column_map.get(c) for c in columns)
        return None if None in mapped else mapped  # type: ignore[return-value]

    keys: dict[ConstraintKey, str] = {}
    for columns in unique_sets(entity):
        keys[("unique", cols(columns))] = naming.unique_name(entity.name, columns)
    for columns in index_sets(entity):
        keys[("index", cols(columns))] = naming.index_name(entity.name, columns)
    for f in entity.fields:
        if f.type == "enum":
            keys[("check", cols([f.column]), f.values)] = naming.check_name(entity.name, f.column)
        bounds = bounds_of(f)
        if bounds is not None:
            keys[("bounds", cols([f.column]), bounds)] = bounds_name(f.column)
    for column, target, on_delete in foreign_keys(entity):
        target = (entity_map or {}).get(target, target)
        keys[("fk", cols([column]), target, on_delete)] = naming.foreign_key_name(entity.name, column)
    return keys


# -- the planner ---------------------------------------------------------------------------------


@dataclass
class _Planner:
    old: Schema | None
    new: Schema
    pg_schema: str
    nonempty: frozenset[str]
    allow_destructive: bool
    phases: dict[str, list[Step]] = field(default_factory=lambda: {p: [] for p in PHASES})
    blockers: list[Problem] = field(default_factory=list)
    entity_renames: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.new_tables = build_metadata(self.new, self.pg_schema).tables
        self.old_tables = build_metadata(self.old, self.pg_schema).tables if self.old else {}

    def table(self, name: str) -> sa.Table:
        return self.new_tables[f"{self.pg_schema}.{name}"]

    def qualified(self, table: str) -> str:
        return f"{quote(self.pg_schema)}.{quote(table)}"

    def add(self, phase: str, kind: str, target: str, description: str, sql: Iterable[str], *,
            destructive: bool = False) -> None:
        if destructive and not self.allow_destructive:
            self.blockers.append(Problem(target, f"{description}: destructive, refused without allow_destructive"))
        self.phases[phase].append(Step(kind, target, description, tuple(sql), destructive))

    def block(self, target: str, message: str) -> None:
        self.blockers.append(Problem(target, message))

    def plan(self) -> MigrationPlan:
        old_entities = {e.name: e for e in self.old.entities} if self.old else {}
        new_names = {e.name for e in self.new.entities}
        self.entity_renames = {e.renamed_from: e.name for e in self.new.entities
                               if e.renamed_from in old_entities and e.renamed_from not in new_names}
        matched: set[str] = set()
        for entity in self.new.entities:
            if entity.name in old_entities:
                before = old_entities[entity.name]
            elif entity.renamed_from in old_entities and entity.renamed_from not in new_names:
                before = old_entities[entity.renamed_from]
            else:
                self.add_entity(entity)
                continue
            matched.add(before.name)
            self.change_entity(before, entity)
        for name in old_entities:
            if name not in matched:
                self.add("drop", "drop_entity", name, f"drop entity {name} and all its rows",
                         [f"DROP TABLE {self.qualified(name)} CASCADE"], destructive=True)
        steps = tuple(s for phase in PHASES for s in self.phases[phase])
        return MigrationPlan(steps, tuple(self.blockers))

    # -- entities --

    def add_entity(self, entity: Entity) -> None:
        table = self.table(entity.name)
        sql = [ddl(CreateTable(table, include_foreign_key_constraints=[]))]
        sql += [ddl(CreateIndex(ix)) for ix in sorted(table.indexes, key=lambda ix: str(ix.name))]
        sql.append(touch_trigger_sql(self.pg_schema, entity.name))
        self.add("create", "add_entity", entity.name, f"add entity {entity.name}", sql)
        for constraint in table.foreign_key_constraints:
            column = constraint.column_keys[0]
            self.add("add_constraints", "add_relation", f"{entity.name}.{column}",
                     f"add relation {entity.name}.{column} -> {constraint.referred_table.name}", [ddl(AddConstraint(constraint))])

    def change_entity(self, before: Entity, after: Entity) -> None:
        if before.name != after.name:
            old_table, new_table = before.name, after.name
            self.add("rename", "rename_entity", after.name, f"rename entity {old_table} to {new_table}", [
                f"ALTER TABLE {self.qualified(old_table)} RENAME TO {quote(new_table)}",
                f"ALTER TABLE {self.qualified(new_table)} RENAME CONSTRAINT {quote(naming.primary_key_name(old_table))}"
                f" TO {quote(naming.primary_key_name(new_table))}",
                f"ALTER TRIGGER {quote(naming.trigger_name(old_table))} ON {self.qualified(new_table)}"
                f" RENAME TO {quote(naming.trigger_name(new_table))}",
            ])
        column_map = {c: c for c in ("id", "created_at", "updated_at")}
        if before.owner and after.owner:
            column_map["owner_id"] = "owner_id"
        elif after.owner:
            self.add("alter", "add_field", f"{after.name}.owner_id", f"add owner_id to {after.name}",
                     alembic_sql(lambda op: op.add_column(after.name, sa.Column("owner_id", sa.Uuid()), schema=self.pg_schema)))
        elif before.owner:
            self.add("drop", "drop_field", f"{after.name}.owner_id", f"drop owner_id of {before.name}",
                     alembic_sql(lambda op: op.drop_column(before.name, "owner_id", schema=self.pg_schema)), destructive=True)
        old_fields = {f.name: f for f in before.fields}
        new_names = {f.name for f in after.fields}
        for new_field in after.fields:
            if new_field.name in old_fields:
                old_field = old_fields.pop(new_field.name)
            elif new_field.renamed_from in old_fields and new_field.renamed_from not in new_names:
                old_field = old_fields.pop(new_field.renamed_from)
            else:
                self.add_field(before, after, new_field)
                continue
            if self.change_field(before, after, old_field, new_field):
                column_map[old_field.column] = new_field.column
        for gone in old_fields.values():
            self.add("drop", "drop_field", f"{after.name}.{gone.name}", f"drop field {before.name}.{gone.name} and its data",
                     alembic_sql(lambda op, g=gone: op.drop_column(before.name, g.column, schema=self.pg_schema)),
                     destructive=True)
        self.change_constraints(before, after, column_map)

    # -- fields --

    def add_field(self, before: Entity, entity: Entity, new: Field) -> None:
        target = f"{entity.name}.{new.name}"
        if new.required and not new.has_default and before.name in self.nonempty:
            self.block(target, f"cannot add required field {target}: {before.name} has rows and the field has no default "
                               "to fill them; give it a default or make it optional")
            return
        column = build_column(new)
        self.add("alter", "add_field", target, f"add field {target}",
                 alembic_sql(lambda op: op.add_column(entity.name, column, schema=self.pg_schema)))

    def change_field(self, before: Entity, after: Entity, old: Field, new: Field) -> bool:
        """Plan the changes of one kept field; False when its column cannot carry over (a blocker)."""
        target = f"{after.name}.{new.name}"
        table = before.name
        if old.column != new.column:
            if (old.type == "ref") != (new.type == "ref"):
                self.block(target, f"cannot change {target} between a ref and a {new.type if old.type == 'ref' else old.type}"
                                   "; add a new field instead")
                return False
            self.add("rename", "rename_field", target, f"rename field {before.name}.{old.name} to {new.name}",
                     alembic_sql(lambda op: op.alter_column(after.name, old.column, new_column_name=new.column,
                                                            schema=self.pg_schema)))
        if not self.change_type(after, old, new):
            return False
        if old.required != new.required:
            if new.required:
                sql: list[str] = []
                fill = default_sql(new)
                if fill is not None:
                    sql.append(f"UPDATE {self.qualified(after.name)} SET {quote(new.column)} = {fill} "
                               f"WHERE {quote(new.column)} IS NULL")
                elif table in self.nonempty:
                    self.block(target, f"cannot make {target} required: {before.name} has rows and the field has no "
                                       "default to fill missing values")
                    return True
                sql += alembic_sql(lambda op: op.alter_column(after.name, new.column, nullable=False, schema=self.pg_schema))
                self.add("alter", "alter_field", target, f"make {target} required", sql)
            else:
                self.add("alter", "alter_field", target, f"make {target} optional",
                         alembic_sql(lambda op: op.alter_column(after.name, new.column, nullable=True, schema=self.pg_schema)))
        if default_sql(old) != default_sql(new):
            description = f"drop the default of {target}" if default_sql(new) is None else f"set the default of {target}"
            self.add("alter", "alter_field", target, description,
                     alembic_sql(lambda op: op.alter_column(after.name, new.column, server_default=server_default(new),
                                                            existing_server_default=server_default(old),
                                                            schema=self.pg_schema)))
        return True

    def change_type(self, entity: Entity, old: Field, new: Field) -> bool:
        target = f"{entity.name}.{new.name}"
        if old.type == "ref" and new.type == "ref":
            if old.ref and new.ref and self.entity_renames.get(old.ref.to, old.ref.to) != new.ref.to:
                self.block(target, f"cannot point {target} at {new.ref.to} instead of {old.ref.to}; add a new field instead")
                return False
            return True
        old_type, new_type = column_type(old), column_type(new)
        old_sql, new_sql = ddl(old_type), ddl(new_type)
        if old_sql == new_sql:
            return True
        structured = {"json", "array", "ref"}
        if old.type in structured or new.type in structured:
            self.block(target, f"cannot change {target} from {old.type} to {new.type}; add a new field instead")
            return False
        widening = _widens(old, new)
        verb = "widen" if widening else "narrow"
        self.add("alter", f"{verb}_field", target, f"{verb} {target} from {old_sql} to {new_sql}",
                 alembic_sql(lambda op: op.alter_column(entity.name, new.column, type_=new_type, existing_type=old_type,
                                                        postgresql_using=f"{quote(new.column)}::{new_sql}",
                                                        schema=self.pg_schema)),
                 destructive=not widening)
        return True

    # -- constraints and indexes --

    def change_constraints(self, before: Entity, after: Entity, column_map: dict[str, str]) -> None:
        old_keys = constraint_keys(before, column_map, self.entity_renames)
        new_keys = constraint_keys(after)
        table = self.table(after.name)
        new_objects = {c.name: c for c in (*table.constraints, *table.indexes)}
        for key, old_name in old_keys.items():
            new_name = new_keys.get(key)
            if key[1] is None:
                continue  # a column of it is dropped, and PostgreSQL drops the constraint with it
            if new_name is None:
                self.drop_constraint(before, after, key, old_name)
            elif new_name != old_name and key[0] == "bounds":  # replaced, whether or not an older deploy made it
                self.drop_constraint(before, after, key, old_name)
                self.add_constraint(after, key, new_objects[new_name])
            elif new_name != old_name:
                statement = (f"ALTER INDEX {quote(self.pg_schema)}.{quote(old_name)} RENAME TO {quote(new_name)}"
                             if key[0] in ("index", "unique") else
                             f"ALTER TABLE {self.qualified(after.name)} RENAME CONSTRAINT {quote(old_name)} TO {quote(new_name)}")
                self.add("rename", f"rename_{key[0]}", f"{after.name}.{new_name}", f"rename {old_name} to {new_name}",
                         [statement])
        for key, new_name in new_keys.items():
            if key not in old_keys:
                self.add_constraint(after, key, new_objects[new_name])

    def drop_constraint(self, before: Entity, after: Entity, key: ConstraintKey, name: str) -> None:
        kind = key[0]
        target = f"{after.name}.{','.join(key[1])}"
        if kind == "index":
            self.add("drop_constraints", "drop_index", target, f"drop index {name}",
                     [f"DROP INDEX {quote(self.pg_schema)}.{quote(name)}"])
            return
        destructive = False
        if kind == "check":
            replacement = next((k for k in constraint_keys(after) if k[0] == "check" and k[1] == key[1]), None)
            destructive = replacement is not None and not set(key[2]) <= set(replacement[2])
        description = {"unique": "drop unique constraint", "check": "change the values of",
                       "bounds": "drop or change the bounds", "fk": "drop or change relation"}[kind]
        # a field's bounds are enforced since this engine version: a table deployed before may lack them
        if_exists = " IF EXISTS" if kind == "bounds" else ""
        self.add("drop_constraints", f"drop_{kind}", target, f"{description} {name}",
                 [f"ALTER TABLE {self.qualified(before.name)} DROP CONSTRAINT{if_exists} {quote(name)}"],
                 destructive=destructive)

    def add_constraint(self, entity: Entity, key: ConstraintKey, construct: Any) -> None:
        kind = key[0]
        target = f"{entity.name}.{','.join(key[1])}"
        if kind == "index":
            self.add("add_constraints", "add_index", target, f"add index {construct.name}", [ddl(CreateIndex(construct))])
            return
        if kind == "fk":
            sql = [ddl(AddConstraint(construct))]
            description = f"add relation {entity.name}.{key[1][0]} -> {key[2]} (on delete {ON_DELETE_SQL[key[3]].lower()})"
        else:
            sql = [ddl(AddConstraint(construct))]
            description = {"unique": "add unique constraint", "check": "add allowed values",
                           "bounds": "enforce the bounds"}[kind] + f" {construct.name}"
        self.add("add_constraints", f"add_{kind}", target, description, sql)


def _widens(old: Field, new: Field) -> bool:
    """Whether every value of `old` fits `new` unchanged."""
    if (old.type, new.type) in {("integer", "bigint"), ("string", "text"), ("enum", "text"), ("enum", "string")}:
        return new.type != "string" or new.max_length is None
    if old.type == new.type == "string":
        return new.max_length is None or (old.max_length is not None and new.max_length >= old.max_length)
    if old.type == new.type == "decimal":
        if new.precision is None:
            return True
        if old.precision is None:
            return False
        old_scale, new_scale = old.scale or 0, new.scale or 0
        return new_scale >= old_scale and new.precision - new_scale >= old.precision - old_scale
    return False


def plan_migration(old: Schema | None, new: Schema, pg_schema: str, *, nonempty: Iterable[str] = (),
                   allow_destructive: bool = False) -> MigrationPlan:
    """The steps turning a tenant's tables from `old` (None: nothing yet) into `new`.

    `nonempty` names the entities whose tables hold rows (a required field without a default cannot be
    added to those). Destructive steps are planned but listed as blockers unless `allow_destructive`.
    """
    return _Planner(old, new, pg_schema, frozenset(nonempty), allow_destructive).plan()

