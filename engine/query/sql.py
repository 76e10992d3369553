"""ReadPlan -> one SQL statement (SQLAlchemy Core) whose single row is the response body, built by Postgres.

The body is `coalesce(json_agg(rows), '[]')` over a subquery of the selected columns; each embed is a
correlated subquery producing an object (`to_json`) or an array (`json_agg`). Filter values are bound
parameters sent as text and cast by Postgres to the column's type, so a bad value is the database's
22P02 (a 400), never Python's guess. Identifiers come only from the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from engine.authz import MEMBERSHIPS
from engine.query.plan import (
    CASTS,
    Aggregate,
    AggregateField,
    Column,
    Condition,
    CountFilter,
    Filter,
    JsonStep,
    Membership,
    Order,
    ReadPlan,
    Reference,
    RelationFilter,
    Upsert,
)

DIALECT = AsyncpgDialect()
# value operators beyond comparison, by the plan's (PostgREST's) names: containment of arrays and json
# (the value as text, cast to the column's type), POSIX regular expressions and SQL's SIMILAR TO (the
# pattern as text; its safety is checked where the value is made), json key existence (a key, or a list)
CONTAINMENT = {"cs": "@>", "cd": "<@", "ov": "&&"}
PATTERNS = {"match": "~", "imatch": "~*", "similar": "SIMILAR TO"}
KEY_TESTS = {"has_key": "?", "has_keys_any": "?|", "has_keys_all": "?&"}
EMPTY_ARRAY = sa.literal_column("'[]'::json")


def base_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type a filter value is cast to: without a length or scale, which a cast would silently apply."""
    if isinstance(type_, postgresql.ARRAY):  # varchar[] compares with varchar[] only (not text[])
        item = type_.item_type
        return postgresql.ARRAY(sa.String() if type(item) is sa.String else base_type(item))
    if isinstance(type_, sa.String):
        return sa.Text()
    if isinstance(type_, sa.Numeric) and not isinstance(type_, sa.Float):
        return sa.Numeric()
    return type_


def value_param(index: int, type_: TypeEngine[Any], *, many: bool = False) -> ColumnElement[Any]:
    if many:
        return sa.cast(sa.bindparam(f"v{index}", type_=postgresql.ARRAY(sa.Text())), postgresql.ARRAY(base_type(type_)))
    return sa.cast(sa.bindparam(f"v{index}", type_=sa.Text()), base_type(type_))


CAST_TYPES: dict[str, TypeEngine[Any]] = dict(zip(CASTS, (
    sa.Text(), sa.Integer(), sa.BigInteger(), sa.Numeric(), postgresql.DOUBLE_PRECISION(), sa.Boolean(), sa.Date(),
    postgresql.TIMESTAMP(timezone=True), postgresql.JSON(), postgresql.JSONB(), sa.Uuid()), strict=True))
TEXT_SEARCH = {"fts": sa.func.to_tsquery, "plfts": sa.func.plainto_tsquery, "phfts": sa.func.phraseto_tsquery,
               "wfts": sa.func.websearch_to_tsquery}
QUANTIFIED = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE",
              "ilike": "ILIKE", "match": "~", "imatch": "~*"}
TEXTUAL = ("like", "ilike", "match", "imatch")


def target_sql(column: ColumnElement[Any], path: tuple[JsonStep, ...]) -> ColumnElement[Any]:
    """A column, or the value at a JSON path in it (`->` json, `->>` text); keys are bound parameters."""
    for step in path:
        key = sa.bindparam(f"v{step.param}", type_=sa.Integer() if step.index else sa.Text())
        column = column.op(step.arrow, return_type=postgresql.JSONB() if step.arrow == "->" else sa.Text())(key)
    return column


def text_search_sql(item: Filter, column: ColumnElement[Any]) -> ColumnElement[bool]:
    """PostgREST's fts/plfts/phfts/wfts: the column's text as a tsvector matched by the value's tsquery,
    both in the configuration named (a bound regconfig) or the database's default."""
    query = sa.bindparam(f"v{item.param}", type_=sa.Text())
    if item.config is None:
        return sa.func.to_tsvector(column).op("@@", is_comparison=True)(TEXT_SEARCH[item.op](query))
    config = sa.cast(sa.bindparam(f"v{item.config}", type_=sa.Text()), postgresql.REGCONFIG)
    return sa.func.to_tsvector(config, column).op("@@", is_comparison=True)(TEXT_SEARCH[item.op](config, query))


def quantified_sql(item: Filter, column: ColumnElement[Any]) -> ColumnElement[bool]:
    """`op(any).{a,b}` / `op(all).{a,b}`: the column compared with ANY or ALL of a list parameter
    (patterns as text, other values cast to the column's type)."""
    values = sa.bindparam(f"v{item.param}", type_=postgresql.ARRAY(sa.Text())) if item.op in TEXTUAL \
        else value_param(item.param, column.type, many=True)
    return column.op(QUANTIFIED[item.op], is_comparison=True)(sa.any_(values) if item.quantifier == "any"
                                                             else sa.all_(values))


def filter_sql(item: Filter, table: sa.FromClause) -> ColumnElement[bool]:
    column = target_sql(table.c[item.column], item.path)
    op = item.op
    expression: ColumnElement[bool]
    if item.quantifier is not None:
        expression = quantified_sql(item, column)
    elif op in TEXT_SEARCH:
        expression = text_search_sql(item, column)
    elif op == "isdistinct":
        expression = column.is_distinct_from(value_param(item.param, column.type))
    elif op == "is_null" or op == "is_unknown":
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
    elif op in CONTAINMENT:
        expression = column.op(CONTAINMENT[op], is_comparison=True)(value_param(item.param, column.type))
    elif op in PATTERNS:
        pattern = sa.bindparam(f"v{item.param}", type_=sa.Text())
        expression = column.op(PATTERNS[op], is_comparison=True)(pattern)
    elif op in KEY_TESTS:
        keys = sa.bindparam(f"v{item.param}", type_=sa.Text() if op == "has_key" else postgresql.ARRAY(sa.Text()))
        expression = column.op(KEY_TESTS[op], is_comparison=True)(keys)
    else:
        value = value_param(item.param, column.type)
        expression = {"eq": column == value, "neq": column != value, "gt": column > value, "gte": column >= value,
                      "lt": column < value, "lte": column <= value}[op]
    return sa.not_(expression) if item.negate else expression


def membership_sql(item: Membership, table: sa.FromClause, tables: Mapping[str, sa.Table]) -> ColumnElement[bool]:
    memberships = tables[MEMBERSHIPS].alias("m")  # never correlated with the memberships being written
    roles = [sa.literal_column(f"'{role}'") for role in item.roles]  # identifiers of the model, never input
    return table.c[item.column].in_(
        sa.select(memberships.c.tenant_id).where(memberships.c.user_id == value_param(item.param, sa.Uuid()),
                                                 memberships.c.role.in_(roles)))


def relation_filter_sql(item: RelationFilter, table: sa.FromClause, tables: Mapping[str, sa.Table]) -> ColumnElement[bool]:
    related = tables[item.relation.target].alias()
    conditions = [related.c[item.relation.target_column] == table.c[item.relation.source_column]]
    if item.scope is not None:
        conditions.append(condition_sql(item.scope, related, tables))
    conditions.append(condition_sql(item.where, related, tables))
    return sa.exists(sa.select(sa.literal_column("1")).select_from(related).where(*conditions))


class _Counted:
    """The count of a `CountFilter` where `filter_sql` looks for a table's column: its predicates are
    filters like any other (`_gt`, `_in`, `_is_null`...), over that one value."""

    def __init__(self, count: ColumnElement[Any]) -> None:
        self.c = {"": count}


def count_filter_sql(item: CountFilter, table: sa.FromClause, tables: Mapping[str, sa.Table]) -> ColumnElement[bool]:
    related = tables[item.relation.target].alias()
    conditions = [related.c[item.relation.target_column] == table.c[item.relation.source_column],
                  condition_sql(item.where, related, tables)]
    if item.scope is not None:
        conditions.append(condition_sql(item.scope, related, tables))
    columns = [related.c[c] for c in item.columns]
    value: ColumnElement[Any] = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
    counted = sa.func.count(sa.distinct(value) if item.distinct else value) if columns else sa.func.count()
    count = sa.select(counted).select_from(related).where(*conditions).scalar_subquery()
    return sa.and_(*(filter_sql(predicate, _Counted(count)) for predicate in item.predicates))  # type: ignore[arg-type]


PREPARER = postgresql.dialect().identifier_preparer


class SchemaQualified(ColumnElement[bool]):
    """A condition rendered with schema-qualified tables even where SQLAlchemy renders bare names: in ON
    CONFLICT DO UPDATE's WHERE it drops every schema, its subqueries' included (a scope or `where` through a
    relation or a membership would name a table of no schema on the search path)."""

    inherit_cache = True
    type = sa.Boolean()

    def __init__(self, condition: ColumnElement[bool]) -> None:
        self.condition = condition


@compiles(SchemaQualified)
def _render_schema_qualified(element: SchemaQualified, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.condition, **{**kw, "use_schema": True})


def condition_sql(condition: Condition, table: sa.FromClause, tables: Mapping[str, sa.Table]) -> ColumnElement[bool]:
    parts = [filter_sql(i, table) if isinstance(i, Filter)
             else membership_sql(i, table, tables) if isinstance(i, Membership)
             else relation_filter_sql(i, table, tables) if isinstance(i, RelationFilter)
             else count_filter_sql(i, table, tables) if isinstance(i, CountFilter)
             else condition_sql(i, table, tables) for i in condition.items]
    if not parts:  # GraphQL's `{}` and `_and: []` hold for every row
        combined: ColumnElement[bool] = sa.true()
    else:
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
        columns: list[ColumnElement[Any]] = [self.column(c, table).label(c.alias) for c in plan.columns]
        joined: sa.FromClause = table
        for e in plan.embeds:
            related = (e.relation.target_column, table.c[e.relation.source_column])
            if e.spread:  # the to-one row's keys beside the parent's own: one lateral subquery, NULLs without a row
                spread = self.rows(e.plan, related).lateral(f"s{next(self.names)}")
                joined = joined.outerjoin(spread, sa.true())
                columns += [spread.c[k].label(k) for k in e.plan.keys()]
            else:
                columns.append(self.embed(e.relation.kind, e.plan, related).label(e.alias))
        columns += [self.aggregate(a, (a.relation.target_column, table.c[a.relation.source_column])).label(a.alias)
                    for a in plan.aggregates if a.relation is not None]
        statement = sa.select(*columns).select_from(joined)
        if any(c.aggregate for c in plan.columns):  # grouped by every other selected column
            statement = statement.group_by(*(self.column(c, table) for c in plan.columns if not c.aggregate))
        if link is not None:
            statement = statement.where(table.c[link[0]] == link[1]).correlate(link[1].table)
        reach = plan.reach()
        if reach is not None:
            statement = statement.where(condition_sql(reach, table, self.tables))
        orders = list(plan.order)
        if plan.distinct:  # PostgreSQL wants DISTINCT ON's columns to lead the ORDER BY
            statement = statement.ext(postgresql.distinct_on(*(table.c[c] for c in plan.distinct)))
            leading = [o.column for o in orders[:len(plan.distinct)] if not o.through]
            if leading != list(plan.distinct):
                orders = [Order(c) for c in plan.distinct] + orders
        for order in orders:
            column = self.order_expression(order, table)
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

    @staticmethod
    def column(column: Column, table: sa.FromClause) -> ColumnElement[Any]:
        if column.constant is not None:  # a name of the model (a GraphQL type name), never input
            return sa.literal_column(f"'{column.constant}'", sa.Text)
        if column.aggregate is not None:  # PostgREST's aggregates (count(), col.sum(), ...): a name of the plan
            target = target_sql(table.c[column.column], column.path) if column.column else None
            if target is not None and column.aggregated_as is not None:
                target = sa.cast(target, CAST_TYPES[column.aggregated_as])
            value = sa.func.count() if target is None else getattr(sa.func, column.aggregate)(target)
            return sa.cast(value, CAST_TYPES[column.cast]) if column.cast is not None else value
        value = target_sql(table.c[column.column], column.path)
        if column.at is not None:
            path = sa.cast(sa.bindparam(f"v{column.at}", type_=sa.Text()), postgresql.ARRAY(sa.Text()))
            value = value.op("#>", return_type=postgresql.JSONB())(path)
        if column.cast is not None:
            return sa.cast(value, CAST_TYPES[column.cast])
        return sa.cast(value, sa.Text) if column.as_text else value

    def order_expression(self, order: Order, table: sa.FromClause) -> ColumnElement[Any]:
        """The column to order by, or for an order through relations the related row's column, among the
        related rows the caller may read (another's row orders as a missing one: null)."""
        if not order.through:
            return target_sql(table.c[order.column], order.path)
        step, rest = order.through[0], order.through[1:]
        related = self.tables[step.relation.target].alias(f"t{next(self.names)}")
        if step.relation.kind == "many":  # an aggregate's relation, always the last step
            inner = sa.func.count() if order.aggregate == "count" \
                else getattr(sa.func, order.aggregate or "max")(related.c[order.column])
        else:
            inner = self.order_expression(Order(order.column, through=rest, aggregate=order.aggregate), related)
        statement = sa.select(inner).select_from(related).where(
            related.c[step.relation.target_column] == table.c[step.relation.source_column])
        if step.scope is not None:
            statement = statement.where(condition_sql(step.scope, related, self.tables))
        return statement.scalar_subquery()

    def aggregate(self, aggregate: Aggregate, link: tuple[str, ColumnElement[Any]] | None = None) -> ColumnElement[Any]:
        """One JSON object: each summary over the rows of the aggregate's plan, and the rows themselves."""
        table = self.tables[aggregate.plan.entity]
        every_column = tuple(Column(c, c) for c in table.c.keys())
        base_plan = ReadPlan(aggregate.plan.entity, every_column, where=aggregate.plan.where, order=aggregate.plan.order,
                             limit=aggregate.plan.limit, offset=aggregate.plan.offset, distinct=aggregate.plan.distinct,
                             scope=aggregate.plan.scope)
        parts: list[ColumnElement[Any]] = []
        base = self.rows(base_plan, link).subquery(f"r{next(self.names)}")
        for alias, fields in aggregate.summaries:
            parts += [sa.literal_column(f"'{alias}'"),
                      sa.func.json_build_object(*(p for f in fields for p in self.summary(f, base)))]
        for alias in aggregate.nodes:
            node_plan = ReadPlan(aggregate.plan.entity, aggregate.plan.columns, aggregate.plan.embeds,  # of the rows
                                 order=aggregate.plan.order, aggregates=aggregate.plan.aggregates, scope=None)  # above
            nodes = self.rows(node_plan, source=self.rows(base_plan, link).subquery()).subquery(f"r{next(self.names)}")
            parts += [sa.literal_column(f"'{alias}'"),
                      sa.select(sa.func.coalesce(sa.func.json_agg(nodes.table_valued()), EMPTY_ARRAY)).scalar_subquery()]
        built = sa.select(sa.func.json_build_object(*parts))
        # the summaries aggregate `base` into one row; `nodes` alone read their rows in their own subqueries
        return (built.select_from(base) if aggregate.summaries else built).scalar_subquery()

    @staticmethod
    def summary(field: AggregateField, rows: sa.FromClause) -> list[ColumnElement[Any]]:
        """(key, value) of one aggregate field; aliases and columns are names of the model or of the
        validated document (GraphQL names), rendered as literals."""
        key = sa.literal_column(f"'{field.alias}'")
        if field.function == "count":
            if not field.columns:
                return [key, sa.func.count()]
            counted: ColumnElement[Any] = (rows.c[field.columns[0][1]] if len(field.columns) == 1
                                           else sa.tuple_(*(rows.c[c] for _, c in field.columns)))
            return [key, sa.func.count(sa.distinct(counted)) if field.distinct else sa.func.count(counted)]
        function = getattr(sa.func, field.function)
        return [key, sa.func.json_build_object(*(p for alias, column in field.columns
                                                 for p in (sa.literal_column(f"'{alias}'"), function(rows.c[column]))))]

    def embed(self, kind: str, plan: ReadPlan, link: tuple[str, ColumnElement[Any]]) -> ColumnElement[Any]:
        rows = self.rows(plan, link).subquery(f"r{next(self.names)}")
        if kind == "one":
            return sa.select(sa.func.to_json(rows.table_valued())).scalar_subquery()
        return sa.select(sa.func.coalesce(sa.func.json_agg(rows.table_valued()), EMPTY_ARRAY)).scalar_subquery()

    def count(self, plan: ReadPlan) -> ColumnElement[Any]:
        table = self.tables[plan.entity].alias(f"t{next(self.names)}")
        statement = sa.select(sa.func.count()).select_from(table)
        reach = plan.reach()
        if reach is not None:
            statement = statement.where(condition_sql(reach, table, self.tables))
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
    from engine.audit import audited_if_write  # every write carries its request's audit context (engine/audit.py)

    return audited_if_write(CompiledRead(str(compiled), slots, constants))


def json_source(table: sa.Table, param: int, *, many: bool) -> sa.FromClause:
    """The rows of a JSON parameter (an object, or an array with `many`) typed as `table`'s rows."""
    row_type = sa.literal_column(f"NULL::{qualified(table)}")
    body = sa.cast(sa.bindparam(f"v{param}", type_=sa.Text()), postgresql.JSON)
    function = sa.func.json_populate_recordset if many else sa.func.json_populate_record
    return function(row_type, body).table_valued(*table.c.keys()).alias("j")


def qualified(table: sa.Table) -> str:
    return f"{PREPARER.quote(table.schema or '')}.{PREPARER.quote(table.name)}"


# -- the statements of REST's requests: ONE statement each, whose one row is the response --------------


def body_select(builder: StatementBuilder, plan: ReadPlan, source: sa.FromClause,
                count: ColumnElement[Any] | None = None, *, first_id: ColumnElement[Any] | None = None,
                representation: bool = True, written: sa.FromClause | None = None, csv: bool = False,
                reached: ColumnElement[Any] | None = None) -> sa.Select[Any]:
    """body (the rows as JSON text, or CSV text with `csv`, or NULL when not asked for), page_rows, total,
    first_id, written (the rows a write wrote, shown or not), inserted (of those, the new ones: an upsert's
    others were updated): the one row every REST statement returns; an update's or a delete's also
    `reached` (`bounded_target`)."""
    rows = builder.rows(plan, source=source).subquery("page") if representation else source
    body = (csv_body(plan, rows) if csv else sa.cast(sa.func.coalesce(sa.func.json_agg(rows.table_valued()),
                                                                      EMPTY_ARRAY), sa.Text)) \
        if representation else sa.null()
    written_rows = sa.select(sa.func.count()).select_from(written).scalar_subquery() if written is not None \
        else sa.null()
    inserted_rows = sa.select(sa.func.count()).select_from(written).where(written.c["inserted"]).scalar_subquery() \
        if written is not None and "inserted" in written.c else sa.null()
    extra = () if reached is None else (reached.label("reached"),)
    return sa.select(body.label("body"), sa.func.count().label("page_rows"),
                     (count if count is not None else sa.null()).label("total"),
                     (first_id if first_id is not None else sa.null()).label("first_id"),
                     written_rows.label("written"), inserted_rows.label("inserted"), *extra).select_from(rows)


def csv_field(name: str) -> str:
    return f'"{name.replace(chr(34), chr(34) * 2)}"' if any(c in name for c in ',"\n\r ') else name


def csv_body(plan: ReadPlan, rows: sa.FromClause) -> ColumnElement[Any]:
    """PostgREST's CSV: a header line of the selected names (a bound value), then each row as PostgreSQL
    writes a record (`(a,"b c",)` without its parentheses: NULL as an empty field, quotes doubled)."""
    names = plan.keys()
    header = sa.bindparam("csv_header", value=",".join(csv_field(n) for n in names), type_=sa.Text())
    record = sa.cast(rows.table_valued(), sa.Text)
    line = sa.func.substr(record, 2, sa.func.length(record) - 2)
    return header.concat(sa.func.coalesce(sa.literal_column("chr(10)").concat(
        sa.func.string_agg(line, sa.literal_column("chr(10)"))), ""))


def read_statement(plan: ReadPlan, tables: Mapping[str, sa.Table], count: bool, *, csv: bool = False) -> sa.Select[Any]:
    builder = StatementBuilder(tables)
    return body_select(builder, plan, tables[plan.entity], builder.count(plan) if count else None, csv=csv)


def missing_as_default(table: sa.Table, keys: Sequence[str], param: int) -> sa.Select[Any]:
    """PostgREST's `Prefer: missing=default`: each object's value of each key, or the column's default
    where the object lacks the key (not NULL, as json_populate_recordset would make it)."""
    raw = sa.func.json_array_elements(sa.cast(sa.bindparam(f"v{param}", type_=sa.Text()), postgresql.JSON)) \
        .table_valued("value").alias("raw")
    row_type = sa.literal_column(f"NULL::{qualified(table)}")
    source = sa.func.json_populate_record(row_type, raw.c.value).table_valued(*table.c.keys()).lateral("j")
    values = []
    for key in keys:  # names of the model; each default is the model's own SQL text
        default = table.c[key].server_default
        present = sa.cast(raw.c.value, postgresql.JSONB).op("?", is_comparison=True)(sa.literal_column(f"'{key}'"))
        values.append(sa.case((present, source.c[key]),
                              else_=default.arg if default is not None else sa.null()).label(key))  # type: ignore[attr-defined]
    return sa.select(*values).select_from(raw.join(source, sa.true()))


def referenced(value: ColumnElement[Any], reference: Reference, tables: Mapping[str, sa.Table],
               batch: sa.Select[Any] | None = None) -> ColumnElement[Any]:
    """`value` of a ref column a write sets, when it is null or names a row of the target within the
    reference's scope (the caller's read scope there), or one of the rows `batch` (their ids) inserts with
    it; else the statement fails with PostgreSQL's foreign key error (23503,
    `backsaas_write.refused_reference`, engine/storage/deploy.py), worded alike for a row that does not exist
    and one the caller may not see."""
    target = tables[reference.target].alias(f"referenced_{reference.column}")
    visible = sa.exists(sa.select(sa.literal_column("1")).select_from(target)
                        .where(target.c.id == value, condition_sql(reference.scope, target, tables)))
    allowed = [value.is_(None), visible, *([value.in_(batch)] if batch is not None else [])]
    refused = sa.func.backsaas_write.refused_reference(reference.table, reference.column, reference.target,
                                                       sa.cast(value, sa.Text), type_=value.type)
    return sa.case((sa.or_(*allowed), value), else_=refused)


def checked_values(rows: sa.Select[Any], keys: Sequence[str], references: Sequence[Reference],
                   tables: Mapping[str, sa.Table]) -> sa.Select[Any]:
    """`rows` (a write's values, a column per key) with each reference's value `referenced`; a reference to
    the written entity may name a row of the same insert by the id it gives it (a tree sent in one body)."""
    if not references:
        return rows
    unchecked = rows.cte("unchecked")
    batch = sa.select(unchecked.alias("batch").c.id) if "id" in keys else None
    guarded = {r.column: r for r in references}
    return sa.select(*(referenced(unchecked.c[k], guarded[k], tables, batch if guarded[k].target == guarded[k].table
                                  else None).label(k) if k in guarded else unchecked.c[k] for k in keys))


def insert_statement(table: sa.Table, keys: Sequence[str], param: int, upsert: Upsert | None,
                     tables: Mapping[str, sa.Table], *, many: bool = True, defaults: bool = False,
                     references: Sequence[Reference] = ()) -> postgresql.Insert:
    """INSERT the rows of JSON parameter `param` (an array, or one object unless `many`); with `upsert`,
    a conflict updates the existing row only within the update's scope (else the row is left alone and
    not returned: the caller compares what was written with what was sent); with `defaults` (an array),
    a key an object lacks takes the column's default; each of `references` names a row the caller may read
    (an upsert's update sets the values checked so)."""
    source = json_source(table, param, many=many)
    # `{}` is a row of defaults (as PostgREST inserts it): the id alone, made as its default makes it
    values = [source.c[k] for k in keys] or [table.c.id.server_default.arg]  # type: ignore[union-attr]
    rows = missing_as_default(table, keys, param) if defaults and keys and many \
        else sa.select(*values).select_from(source)
    rows = checked_values(rows, keys, references, tables)
    statement = postgresql.insert(table).from_select(list(keys) or ["id"], rows)
    if upsert is None:
        return statement
    if not upsert.update:
        return statement.on_conflict_do_nothing(index_elements=list(upsert.target))
    # the scope and `where` hold for the conflicting row, looked at as a row of its own table: ON CONFLICT's
    # WHERE correlates no subquery for SQLAlchemy (a relation's EXISTS would take in any row, not this one)
    existing = table.alias("existing")
    conditions = [condition_sql(c, existing, tables) for c in (upsert.scope, upsert.where) if c is not None]
    where = None
    if conditions:
        conflicting = sa.literal_column(f"{PREPARER.quote(table.name)}.id")  # the target row, by its bare name
        where = SchemaQualified(sa.exists(sa.select(sa.literal_column("1")).select_from(existing)
                                          .where(existing.c.id == conflicting, *conditions)))
    return statement.on_conflict_do_update(index_elements=list(upsert.target),
                                           set_={c: statement.excluded[c] for c in upsert.update}, where=where)


def rest_insert(tables: Mapping[str, sa.Table], returned: ReadPlan, keys: Sequence[str], upsert: Upsert | None,
                param: int, representation: bool, *, defaults: bool = False,
                references: Sequence[Reference] = ()) -> sa.Executable:
    """REST's POST: the rows as `returned` shows them (the read scope applied), or the new ids alone."""
    table = tables[returned.entity]
    statement = insert_statement(table, keys, param, upsert, tables, defaults=defaults, references=references)
    inserted = sa.literal_column("(xmax = 0)").label("inserted")  # false: an upsert updated the row it met
    if not representation:
        return statement.returning(sa.cast(table.c.id, sa.Text).label("id"), inserted)
    written = statement.returning(*table.c, inserted).cte("written")
    builder = StatementBuilder(tables)
    shown = builder.rows(ReadPlan(returned.entity, (Column("id", "id"),), scope=returned.scope), source=written)
    first_id = sa.select(sa.cast(shown.subquery().c.id, sa.Text)).limit(1).scalar_subquery()  # for Location
    return body_select(builder, returned, written, first_id=first_id, written=written)


def rest_update(tables: Mapping[str, sa.Table], plan: ReadPlan, returned: ReadPlan, keys: Sequence[str], param: int,
                representation: bool, at_most: int | None, references: Sequence[Reference] = ()) -> sa.Select[Any]:
    """REST's PATCH: the rows `plan` reaches (its scope and filters) set from JSON parameter `param`, none
    when they are more than `at_most` (`bounded_target`; None: the filters name one row by its id); each of
    `references` names a row the caller may read."""
    table = tables[plan.entity]
    source = json_source(table, param, many=False)
    guarded = {r.column: r for r in references}
    statement = sa.update(table).values({k: referenced(source.c[k], guarded[k], tables) if k in guarded else source.c[k]
                                         for k in keys})
    return _written(tables, plan, returned, statement, representation, at_most)


def rest_delete(tables: Mapping[str, sa.Table], plan: ReadPlan, returned: ReadPlan,
                representation: bool, at_most: int | None) -> sa.Select[Any]:
    return _written(tables, plan, returned, sa.delete(tables[plan.entity]), representation, at_most)


def bounded_target(first: sa.Select[Any], at_most: int) -> tuple[sa.Select[Any], ColumnElement[Any]]:
    """(the ids an UPDATE or DELETE may write, how many rows it reached) for the ids `first` selects
    (the caller's row scope and filters applied): `first` is read up to `at_most` + 1 rows, and past
    `at_most` no id is given, so the write changes nothing and its caller refuses it by the count
    (`Bounds.check_reached`). One statement, whatever the filters match: the work is the bound's. The
    write keeps its own condition beside these ids, so that a row changed meanwhile by another
    transaction is checked against the scope again as PostgreSQL rereads it (READ COMMITTED)."""
    target = first.limit(at_most + 1).cte("target")
    reached = sa.select(sa.func.count()).select_from(target).scalar_subquery()
    return sa.select(target.c.id).where(reached <= at_most), reached


def _written(tables: Mapping[str, sa.Table], plan: ReadPlan, returned: ReadPlan, statement: sa.Update | sa.Delete,
             representation: bool, at_most: int | None) -> sa.Select[Any]:
    table = tables[plan.entity]
    reached: ColumnElement[Any] = sa.literal(0)  # a row named by its id: no bound to keep
    if at_most is not None or plan.limit is not None or plan.offset is not None:
        # the rows it may reach: PostgREST's limited PATCH/DELETE takes the first of the plan's order (a page
        # no longer than the bound), and the bound looks at one row past itself
        page = plan.limit if at_most is None or (plan.limit is not None and plan.limit <= at_most) else None
        first = StatementBuilder(tables).rows(replace(plan, columns=(Column("id", "id"),), embeds=(), aggregates=(),
                                                      limit=page)).subquery()
        ids = sa.select(first.c.id)
        if at_most is not None:
            ids, reached = bounded_target(ids, at_most)
        statement = statement.where(table.c.id.in_(ids))
    if (reach := plan.reach()) is not None:
        statement = statement.where(condition_sql(reach, table, tables))
    written = statement.returning(*(table.c if representation else [table.c.id])).cte("written")
    return body_select(StatementBuilder(tables), returned, written, representation=representation, written=written,
                       reached=reached)
