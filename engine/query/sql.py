"""ReadPlan -> one SQL statement (SQLAlchemy Core) whose single row is the response body, built by Postgres.

The body is `coalesce(json_agg(rows), '[]')` over a subquery of the selected columns; each embed is a
correlated subquery producing an object (`to_json`) or an array (`json_agg`). Filter values are bound
parameters sent as text and cast by Postgres to the column's type, so a bad value is the database's
22P02 (a 400), never Python's guess. Identifiers come only from the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from engine.query.plan import Condition, Filter, ReadPlan

DIALECT = AsyncpgDialect()
EMPTY_ARRAY = sa.literal_column("'[]'::json")


def base_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type a filter value is cast to: without a length or scale, which a cast would silently apply."""
    if isinstance(type_, postgresql.ARRAY):
        return postgresql.ARRAY(base_type(type_.item_type))
    if isinstance(type_, sa.String):
        return sa.Text()
    if isinstance(type_, sa.Numeric) and not isinstance(type_, sa.Float):
        return sa.Numeric()
    return type_


def value_param(index: int, type_: TypeEngine[Any], *, many: bool = False) -> ColumnElement[Any]:
    if many:
        return sa.cast(sa.bindparam(f"v{index}", type_=postgresql.ARRAY(sa.Text())), postgresql.ARRAY(base_type(type_)))
    return sa.cast(sa.bindparam(f"v{index}", type_=sa.Text()), base_type(type_))


def filter_sql(item: Filter, table: sa.FromClause) -> ColumnElement[bool]:
    column = table.c[item.column]
    op = item.op
    expression: ColumnElement[bool]
    if op == "is_null" or op == "is_unknown":
        expression = column.is_(None)
    elif op == "is_true":
        expression = column.is_(sa.true())
    elif op == "is_false":
        expression = column.is_(sa.false())
    elif op == "in":
        expression = column == sa.any_(value_param(item.param, column.type, many=True))
    elif op in ("like", "ilike"):
        pattern = sa.bindparam(f"v{item.param}", type_=sa.Text())
        expression = column.like(pattern) if op == "like" else column.ilike(pattern)
    else:
        value = value_param(item.param, column.type)
        expression = {"eq": column == value, "neq": column != value, "gt": column > value, "gte": column >= value,
                      "lt": column < value, "lte": column <= value}[op]
    return sa.not_(expression) if item.negate else expression


def condition_sql(condition: Condition, table: sa.FromClause) -> ColumnElement[bool]:
    parts = [filter_sql(i, table) if isinstance(i, Filter) else condition_sql(i, table) for i in condition.items]
    combined = sa.and_(*parts) if condition.kind == "and" else sa.or_(*parts)
    return sa.not_(combined) if condition.negate else combined


class StatementBuilder:
    """Builds the SELECTs of one statement; every level gets its own table alias (t0, t1, ...)."""

    def __init__(self, tables: Mapping[str, sa.Table]) -> None:
        self.tables = tables
        self.names = itertools.count()

    def rows(self, plan: ReadPlan, link: tuple[str, ColumnElement[Any]] | None = None,
             source: sa.FromClause | None = None) -> sa.Select[Any]:
        """The selected rows of one level, as a SELECT of labelled columns (from `source`, e.g. the rows
        a write returned, instead of the entity's table when given)."""
        table = (source if source is not None else self.tables[plan.entity]).alias(f"t{next(self.names)}")
        columns: list[ColumnElement[Any]] = [
            (sa.cast(table.c[c.column], sa.Text) if c.as_text else table.c[c.column]).label(c.alias) for c in plan.columns]
        columns += [self.embed(e.relation.kind, e.plan, (e.relation.target_column, table.c[e.relation.source_column]))
                    .label(e.alias) for e in plan.embeds]
        statement = sa.select(*columns).select_from(table)
        if link is not None:
            statement = statement.where(table.c[link[0]] == link[1]).correlate(link[1].table)
        if plan.where is not None:
            statement = statement.where(condition_sql(plan.where, table))
        for order in plan.order:
            column = table.c[order.column]
            clause = column.desc() if order.descending else column.asc()
            if order.nulls:
                clause = clause.nulls_first() if order.nulls == "first" else clause.nulls_last()
            statement = statement.order_by(clause)
        # literals, not parameters: they are part of the plan (and of its cache key), and a prepared
        # statement's generic plan would otherwise not know the LIMIT and pick a full sort over a top-N one
        if plan.limit is not None:
            statement = statement.limit(sa.literal_column(str(int(plan.limit))))
        if plan.offset is not None:
            statement = statement.offset(sa.literal_column(str(int(plan.offset))))
        return statement

    def embed(self, kind: str, plan: ReadPlan, link: tuple[str, ColumnElement[Any]]) -> ColumnElement[Any]:
        rows = self.rows(plan, link).subquery(f"r{next(self.names)}")
        if kind == "one":
            return sa.select(sa.func.to_json(rows.table_valued())).scalar_subquery()
        return sa.select(sa.func.coalesce(sa.func.json_agg(rows.table_valued()), EMPTY_ARRAY)).scalar_subquery()

    def count(self, plan: ReadPlan) -> ColumnElement[Any]:
        table = self.tables[plan.entity].alias(f"t{next(self.names)}")
        statement = sa.select(sa.func.count()).select_from(table)
        if plan.where is not None:
            statement = statement.where(condition_sql(plan.where, table))
        return statement.scalar_subquery()


@dataclass(frozen=True)
class CompiledRead:
    """A rendered statement and how to order a request's values into its positional parameters."""

    sql: str
    slots: tuple[int | None, ...]  # value index per $n, or None for a constant held in `constants`
    constants: tuple[Any, ...]

    def arguments(self, values: list[Any]) -> list[Any]:
        return [values[s] if s is not None else c for s, c in zip(self.slots, self.constants, strict=True)]


def compile_statement(statement: sa.Executable) -> CompiledRead:
    compiled = statement.compile(dialect=DIALECT)
    names = compiled.positiontup or []
    slots = tuple(int(n[1:]) if n.startswith("v") and n[1:].isdigit() else None for n in names)
    constants = tuple(None if n.startswith("v") and n[1:].isdigit() else compiled.params[n] for n in names)
    return CompiledRead(str(compiled), slots, constants)
