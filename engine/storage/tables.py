"""Model -> SQLAlchemy Core tables in a tenant's Postgres schema.

A field type's storage lives here in one place: its column type, its server default, and the
constraints it implies (NOT NULL, UNIQUE, the CHECK of an enum, the CHECK of a field's bounds, the FK and
index of a ref). The database enforces a field's minimum, maximum and lengths itself, so a write that
skips the body validator (`_inc`, a hook, SQL run as the tenant's role) still cannot store a value past
them (DESIGN.md, wall 3). DDL is rendered for a paramstyle without `%` escapes, so a literal renders once. The
migration planner renders DDL from these objects and the read path builds statements on them, so the
two can never disagree about a column.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

from engine.errors import BOUNDS_SUFFIX
from engine.schema.model import OWNER_COLUMN, USERS, Entity, Field, Schema, thaw
from engine.storage import naming

# DDL is run as written (simple protocol, no bind parameters): a `named` paramstyle keeps `%` undoubled.
DIALECT = postgresql.dialect(paramstyle="named")
NUMERIC_TYPES = ("integer", "bigint", "number", "decimal")

_SCALARS: dict[str, Any] = {
    "text": sa.Text,
    "integer": sa.Integer,
    "bigint": sa.BigInteger,
    "number": sa.Double,
    "boolean": sa.Boolean,
    "date": sa.Date,
    "uuid": postgresql.UUID,
}


def scalar_type(type_name: str, field: Field | None = None) -> TypeEngine[Any]:
    if type_name == "string":
        return sa.String(field.max_length if field else None)
    if type_name == "decimal":
        return sa.Numeric(field.precision, field.scale) if field and field.precision else sa.Numeric()
    if type_name == "datetime":
        return sa.DateTime(timezone=True)
    return _SCALARS[type_name]()


def column_type(field: Field) -> TypeEngine[Any]:
    if field.type == "json":
        return postgresql.JSONB()
    if field.type == "enum":
        return sa.Text()
    if field.type == "ref":
        return postgresql.UUID()
    if field.type == "array":
        return postgresql.ARRAY(scalar_type(field.items or "string"))
    return scalar_type(field.type, field)


def render_literal(value: Any, type_: TypeEngine[Any]) -> str:
    """A SQL literal for DDL (defaults cannot be bound parameters), rendered by SQLAlchemy's quoting."""
    if isinstance(type_, postgresql.ARRAY):
        items = ", ".join(render_literal(v, type_.item_type) for v in value)
        return f"ARRAY[{items}]::{type_.compile(DIALECT)}" if items else f"'{{}}'::{type_.compile(DIALECT)}"
    if isinstance(type_, postgresql.JSONB):
        return f"{_text_literal(orjson.dumps(thaw(value)).decode())}::jsonb"
    if isinstance(type_, sa.Date | sa.DateTime) and isinstance(value, str):  # ISO text, cast by PostgreSQL
        return f"{_text_literal(value)}::{type_.compile(DIALECT)}"
    return str(sa.literal(value, type_).compile(dialect=DIALECT, compile_kwargs={"literal_binds": True}))


def _text_literal(text: str) -> str:
    return str(sa.literal(text, sa.Text()).compile(dialect=DIALECT, compile_kwargs={"literal_binds": True}))


def default_sql(field: Field) -> str | None:
    """The SQL expression of a field's default, or None."""
    if not field.has_default or field.default is None:
        return None
    if field.default == "now" and field.type in ("date", "datetime"):
        return "CURRENT_DATE" if field.type == "date" else "now()"
    return render_literal(field.default, column_type(field))


def server_default(field: Field) -> sa.TextClause | None:
    sql = default_sql(field)
    return sa.text(sql.replace(":", "\\:")) if sql is not None else None  # a literal colon is not a bind


def build_column(field: Field) -> sa.Column[Any]:
    return sa.Column(field.column, column_type(field), nullable=not field.required,
                     server_default=server_default(field), comment=field.description)


def enum_check(entity: Entity, field: Field) -> sa.CheckConstraint:
    column = sa.column(field.column)
    return sa.CheckConstraint(column.in_(list(field.values)), name=naming.check_name(entity.name, field.column))


def bounds_of(field: Field) -> tuple[Any, ...] | None:
    """(minimum, maximum, min_length, max_length) the database must enforce for `field`, or None.

    A string's max_length is its varchar's own; a bound that is not finite cannot be a SQL literal."""
    def finite(value: Any) -> Any:
        return value if isinstance(value, int | float) and math.isfinite(value) else None

    if field.type in NUMERIC_TYPES:
        bounds = (finite(field.minimum), finite(field.maximum), None, None)
    elif field.type in ("string", "text"):
        bounds = (None, None, field.min_length, field.max_length if field.type == "text" else None)
    else:
        return None
    return bounds if any(b is not None for b in bounds) else None


def bounds_name(column: str) -> str:
    """`{column}_bounds`: engine.errors names the field of a violation from it."""
    return naming.fit(f"{column}{BOUNDS_SUFFIX}")


def bounds_check(field: Field) -> sa.CheckConstraint | None:
    """The CHECK holding `field`'s bounds (NULL passes, as in JSON Schema's optional fields)."""
    bounds = bounds_of(field)
    if bounds is None:
        return None
    minimum, maximum, min_length, max_length = bounds
    column = sa.column(field.column)
    length = sa.func.char_length(column)
    terms = []
    if minimum is not None:
        terms.append(column >= minimum)
    if maximum is not None:
        terms.append(column <= maximum)
    if min_length is not None:
        terms.append(length >= min_length)
    if max_length is not None:
        terms.append(length <= max_length)
    return sa.CheckConstraint(sa.and_(*terms), name=bounds_name(field.column))


def unique_sets(entity: Entity) -> list[tuple[str, ...]]:
    """Column tuples that must be unique: single `unique: true` fields, then the entity's `unique:` lists."""
    sets = [(f.column,) for f in entity.fields if f.unique]
    sets += [tuple(entity.column_of(name) for name in names) for names in entity.unique]
    return list(dict.fromkeys(sets))


def index_sets(entity: Entity) -> list[tuple[str, ...]]:
    """Column tuples to index: every FK column (Postgres does not index them itself), then `indexes:`."""
    sets = [(f.column,) for f in entity.refs]
    if entity.owner:
        sets.append((OWNER_COLUMN,))
    sets += [tuple(entity.column_of(name) for name in names) for names in entity.indexes]
    return list(dict.fromkeys(sets))


def foreign_keys(entity: Entity) -> list[tuple[str, str, str]]:
    """(column, target entity, on_delete) for every ref, and for owner_id."""
    keys = [(f.column, f.ref.to, f.ref.on_delete) for f in entity.refs if f.ref]
    if entity.owner:
        keys.append((OWNER_COLUMN, USERS, "cascade"))
    return keys


ON_DELETE_SQL = {"cascade": "CASCADE", "restrict": "RESTRICT", "set_null": "SET NULL", "no_action": "NO ACTION"}


def build_table(entity: Entity, metadata: sa.MetaData, pg_schema: str) -> sa.Table:
    columns: list[Any] = [
        sa.Column("id", postgresql.UUID(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        *(build_column(f) for f in entity.fields),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    ]
    if entity.owner:
        columns.append(sa.Column(OWNER_COLUMN, postgresql.UUID(), nullable=True))
    constraints: list[Any] = [sa.PrimaryKeyConstraint("id", name=naming.primary_key_name(entity.name))]
    constraints += [sa.UniqueConstraint(*cols, name=naming.unique_name(entity.name, cols)) for cols in unique_sets(entity)]
    constraints += [enum_check(entity, f) for f in entity.fields if f.type == "enum"]
    constraints += [check for f in entity.fields if (check := bounds_check(f)) is not None]
    constraints += [
        sa.ForeignKeyConstraint([column], [f"{pg_schema}.{target}.id"], name=naming.foreign_key_name(entity.name, column),
                                ondelete=ON_DELETE_SQL[on_delete])
        for column, target, on_delete in foreign_keys(entity)
    ]
    table = sa.Table(entity.name, metadata, *columns, *constraints, schema=pg_schema)
    for cols in index_sets(entity):
        sa.Index(naming.index_name(entity.name, cols), *(table.c[c] for c in cols))
    return table


def build_metadata(model: Schema, pg_schema: str) -> sa.MetaData:
    """Every entity of `model` as a Table in `pg_schema`."""
    metadata = sa.MetaData()
    for entity in model.entities:
        build_table(entity, metadata, pg_schema)
    return metadata
