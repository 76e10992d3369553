"""GraphQL mutations: every root field, in order, in ONE transaction as the tenant's role.

The same checks as REST's write path, from the same place (`engine.authz.permissions`): Casbin per entity
and action, row scopes in the WHERE of updates and deletes and of an upsert's update (`on_conflict` is an
update: the update permission and its scope, owner_id never set), the read scope on whatever `returning`
shows, `owner_id` from the caller, bodies validated by the entity's JSON Schema, users' `roles` and
`verified` reserved to admins. `update_*` and `delete_*` are one statement each (a CTE whose
returned rows the same read builder turns into `returning`), compiled once per document and shaping
variables like a query (the values they set and compare are parameters); flat inserts are one statement
too; nested ones go row by row so that object relations are inserted first and array relations after,
with their keys filled in; an entity's hooks take its writes through the write core. A mutation of one
field written by one statement runs without a transaction around it (two round trips fewer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
import sqlalchemy as sa
from graphql import GraphQLSchema
from graphql.language import ast
from sqlalchemy.dialects import postgresql

from engine import metering, quotas
from engine.authz import guard_user_fields
from engine.errors import Forbidden, Problem, ValidationFailed
from engine.graphql.compiler import GraphQLError, QueryCompiler, Slot, array_literal, as_graphql_error, as_list
from engine.graphql.schema import conflict_targets
from engine.limits import MAX_JSON_PATH_STEPS, RowBudget
from engine.query.plan import Condition, Filter, ReadPlan, Reference, Upsert
from engine.query.sql import (
    EMPTY_ARRAY,
    CompiledRead,
    StatementBuilder,
    bounded_target,
    compile_statement,
    condition_sql,
    insert_statement,
    json_source,
    referenced,
)
from engine.schema.model import OWNER_COLUMN
from engine.validation import date_part
from engine.writes import HookedWriter, upsert_hooks

if TYPE_CHECKING:
    from engine.graphql.api import Document, GraphQLApi

# the variables a statement's own values reach it by (no GraphQL name has a space): a flat insert's objects,
# an update's `_set` (one JSON object) and each operand of its column operators (`_inc`, `_append`, ...)
OBJECTS, SET, OPERAND = " objects", " set", " operand "
# Hasura's update operators on one column each, beside `_set`: what each takes, and the SQL it makes of the
# column and its operand (a text parameter, cast)
COLUMN_OPERATORS: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {
    "_inc": ("a number", lambda column, operand: column + sa.cast(operand, column.type)),
    "_append": ("JSON", lambda column, operand: column.op("||")(sa.cast(operand, postgresql.JSONB))),
    "_prepend": ("JSON", lambda column, operand: sa.cast(operand, postgresql.JSONB).op("||")(column)),
    "_delete_key": ("a key", lambda column, operand: column.op("-")(operand)),
    "_delete_elem": ("an index", lambda column, operand: column.op("-")(sa.cast(operand, sa.Integer))),
    "_delete_at_path": ("a path", lambda column, operand: column.op("#-")(sa.cast(operand, postgresql.ARRAY(sa.Text)))),
}
Operations = dict[str, tuple[str, Any]]  # column -> (operator, operand)
Builder = Callable[[Mapping[str, Any], str | None], list[Any]]  # a request's parameter values (Values.builder)


def operators_of(operations: Operations) -> tuple[tuple[str, str], ...]:
    """What shapes an update's statement: (column, operator) pairs, in order."""
    return tuple((column, operator) for column, (operator, _) in operations.items())


def operand_text(operator: str, operand: Any) -> Any:
    """An operand as its text parameter: JSON for `_append`/`_prepend`, an array literal for a path."""
    if operator in ("_append", "_prepend"):
        return orjson.dumps(operand).decode()
    if operator == "_delete_at_path":
        return array_literal(operand)
    return operand


def objects_variable(field: ast.FieldNode) -> str | None:
    """The variable that is an insert field's whole `objects`/`object` argument, if one is."""
    for argument in field.arguments or ():
        if argument.name.value in ("objects", "object") and isinstance(argument.value, ast.VariableNode):
            return argument.value.name.value
    return None


class MutationRunner:
    def __init__(self, api: GraphQLApi, schema: GraphQLSchema, document: Document, operation: str | None,
                 variables: Mapping[str, Any]) -> None:
        self.api, self.schema, self.document, self.variables = api, schema, document, variables
        self.operation = operation  # its name: a document's operations may give one alias to different fields
        self.runtime, self.caller = api.runtime, api.caller
        self.inserted = 0

    async def execute(self, fields: list[ast.FieldNode]) -> bytes:
        """The mutation's root `fields` (collected by the caller's compiler), as the `data` object's text."""
        single = self.single_insert(fields)
        if single is not None and self.flat(single[0], single[1]):
            return await self.run_one(fields[0], *single)
        if len(fields) == 1 and self.one_statement(fields[0]):
            return await self.alone(fields[0], lambda conn: self.field(conn, fields[0]))
        return await self.run(fields)

    async def run(self, fields: list[ast.FieldNode]) -> bytes:
        results: list[tuple[str, bytes]] = []
        try:
            with metering.rows_kept_on_success():  # GraphQL answers a rolled-back mutation with 200 and errors
                async with self.api.db.as_role(self.runtime.role) as conn, conn.transaction():
                    for field in fields:
                        alias = field.alias.value if field.alias else field.name.value
                        try:
                            results.append((alias, await self.field(conn, field)))
                        except GraphQLError as error:
                            error.path = [alias]
                            raise
        except asyncpg.PostgresError as exc:
            raise as_graphql_error(exc) from exc
        return b"{" + b",".join(orjson.dumps(alias) + b":" + value for alias, value in results) + b"}"

    def compiler(self) -> QueryCompiler:
        return self.api.compiler(self.schema, self.document, self.variables)

    async def field(self, conn: asyncpg.Connection, field: ast.FieldNode) -> bytes:
        name = field.name.value
        if name == "__typename":
            return b'"mutation_root"'
        compiler = self.compiler()
        args = {a.name.value: compiler.values.resolve(a.value) for a in field.arguments or ()}
        kind, entity, variant = self.named(name)
        if kind == "insert":
            objects = [args["object"]] if variant == "_one" else as_list(args.get("objects"))
            if self.flat(entity, objects):
                return await self.insert_flat(conn, entity, objects, args.get("on_conflict"), field, variant == "_one")
            self.inserted = 0  # every row written, nested ones included (Hasura's affected_rows)
            if self.hooked_flat(entity, objects, args.get("on_conflict")):
                ids = await self.insert_hooked(conn, entity, objects)
            else:
                ids = [await self.insert(conn, entity, o, args.get("on_conflict")) for o in objects]
            written = [i for i in ids if i is not None]
            if variant == "_one":
                return await self.one_by_id(conn, entity, written[0] if written else None, field)
            return await self.response_by_ids(conn, entity, written, field, self.inserted)
        if kind == "update" and variant == "_many":
            answers = [await self.update_one_of_many(conn, entity, u, field) for u in as_list(args["updates"])]
            return b"[" + b",".join(answers) + b"]"
        single = variant == "_by_pk"
        if self.runtime.hooks(entity, kind):
            return await self.hooked_write(conn, kind, entity, None, args, field, single)
        changes, operations = self.changes(entity, args, kind)
        prepared = self.prepared_write(field, kind, entity, single, tuple(changes), operators_of(operations))
        return await self.run_write(conn, prepared, changes, operations)

    # -- inserts --

    def single_insert(self, fields: list[ast.FieldNode]) -> tuple[str, list[Any], Any, bool] | None:
        """(entity, objects, on_conflict, `_one`) when the mutation is one insert without an upsert's
        update: when its objects are `flat` too, one statement, atomic on its own, needs no transaction
        around it (two round trips fewer)."""
        if len(fields) != 1 or not fields[0].name.value.startswith("insert_"):
            return None
        compiler = self.compiler()
        args = {a.name.value: compiler.values.resolve(a.value) for a in fields[0].arguments or ()}
        rest = fields[0].name.value[len("insert_"):]
        one = rest.endswith("_one") and rest[:-4] in self.runtime.columns
        entity = rest[:-4] if one else rest
        on_conflict = args.get("on_conflict")
        objects = [args.get("object")] if one else as_list(args.get("objects"))
        if entity not in self.runtime.columns or (on_conflict and as_list(on_conflict.get("update_columns"))):
            return None
        return entity, objects, on_conflict, one

    def named(self, name: str) -> tuple[str, str, str]:
        """(kind, entity, variant) of a root field's name: `update_post_by_pk` is (update, post, _by_pk)."""
        kind, _, rest = name.partition("_")
        for suffix in ("_one", "_by_pk", "_many"):
            if rest.endswith(suffix) and rest[:-len(suffix)] in self.runtime.columns:
                return kind, rest[:-len(suffix)], suffix
        return kind, rest, ""

    def one_statement(self, field: ast.FieldNode) -> bool:
        """Whether the field writes by ONE statement: an update or delete (not `_many`) of an entity
        without hooks for it."""
        kind, entity, variant = self.named(field.name.value)
        return kind in ("update", "delete") and variant != "_many" and entity in self.runtime.columns \
            and not self.runtime.hooks(entity, kind)

    async def run_one(self, field: ast.FieldNode, entity: str, objects: list[dict[str, Any]], on_conflict: Any,
                      one: bool, shape: tuple[Any, ...] | None = None) -> bytes:
        """`run` for the flat insert `single_insert` found (`shape`: its `insert_shape`, when the caller
        keeps it)."""
        return await self.alone(field, lambda conn: self.insert_flat(conn, entity, objects, on_conflict, field, one,
                                                                     shape))

    async def alone(self, field: ast.FieldNode, write: Callable[[asyncpg.Connection], Awaitable[bytes]]) -> bytes:
        """`run` for a mutation of one field whose `write` is ONE statement, atomic on its own: on a
        connection as the tenant, without a transaction around it (two round trips fewer)."""
        alias = field.alias.value if field.alias else field.name.value
        try:
            async with self.api.db.as_role(self.runtime.role) as conn:
                value = await write(conn)
        except asyncpg.PostgresError as exc:
            raise as_graphql_error(exc) from exc
        except GraphQLError as error:
            error.path = [alias]
            raise
        return b"{" + orjson.dumps(alias) + b":" + value + b"}"

    def flat(self, entity: str, objects: list[Any]) -> bool:
        """Whether `objects` can be inserted by ONE statement: no create hooks on the entity, no nested
        relations, every object with the same keys (a key absent from all is the column's default)."""
        if not objects or self.runtime.hooks(entity, "create") or not self.unnested(entity, objects):
            return False
        keys = objects[0].keys()
        return all(o.keys() == keys for o in objects)

    async def insert_flat(self, conn: asyncpg.Connection, entity: str, objects: list[dict[str, Any]],
                          on_conflict: Mapping[str, Any] | None, field: ast.FieldNode, single: bool,
                          shape: tuple[Any, ...] | None = None) -> bytes:
        """Flat objects in ONE statement: INSERT ... SELECT from the JSON of all of them, and the response
        (`returning` through the read scope, `affected_rows`) read from the rows it wrote, in the same
        statement; compiled once per `insert_shape` and the objects' keys."""
        self.api.permissions.of(entity, "create")
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        for obj in objects:
            self.validate(entity, obj, partial=False)
        owned = model_entity.owner and self.caller.user_id is not None
        rows = [{**o, OWNER_COLUMN: self.caller.user_id} for o in objects] if owned else objects
        keys = tuple(rows[0])
        key = (shape or self.insert_shape(field, on_conflict), keys)
        found = self.runtime.statements.get(key)
        if found is None:
            compiler = self.compiler()
            body = compiler.values.add(Slot(variable=OBJECTS))
            upsert = self.upsert(compiler, entity, on_conflict) if on_conflict else None
            table = self.runtime.tables[entity]
            written = insert_statement(table, keys, body, upsert, self.runtime.tables,
                                       references=self.references(compiler, entity, keys)
                                       ).returning(*table.c).cte("written")
            found = self.api.remember(key, (compile_statement(self.written_body(compiler, entity, written, field,
                                                                                single)),
                                            compiler.values.builder(), upsert))
        compiled, build, upsert = found
        values = build({**self.variables, OBJECTS: orjson.dumps(rows).decode()}, self.caller.user_id)
        quotas.guard_write("create")  # a tenant at its rows or storage quota inserts nothing (engine/quotas.py)
        body_text, count = await conn.fetchrow(compiled.sql, *compiled.arguments(values))
        metering.wrote(count)
        if count < len(rows) and upsert is not None and upsert.update and upsert.where is None:
            raise Forbidden(f"a {entity} row this insert conflicts with is outside what the caller may update")
        self.inserted += count
        return (body_text or "null").encode()

    def insert_shape(self, field: ast.FieldNode, on_conflict: Mapping[str, Any] | None) -> tuple[Any, ...]:
        """What a flat insert's statement depends on but its objects' keys: the caller's roles and whether
        signed in, the document, operation and field, `on_conflict`, the plan's bounds and the request's other
        variables (all but the one that is the whole `objects`/`object` argument, whose values are a
        parameter of the statement, not part of its shape)."""
        alias = field.alias.value if field.alias else field.name.value
        skip = objects_variable(field)
        others = orjson.dumps({k: v for k, v in self.variables.items() if k != skip}, option=orjson.OPT_SORT_KEYS)
        return ("graphql-insert", self.caller.roles, self.caller.user_id is not None, self.document.digest,
                self.operation, alias, orjson.dumps(on_conflict, option=orjson.OPT_SORT_KEYS), others, self.api.bounds)

    def written_body(self, compiler: QueryCompiler, entity: str, written: Any, field: ast.FieldNode,
                     single: bool, reached: Any = None) -> sa.Select[Any]:
        """(the field's answer as JSON text, the number of rows written) over the `written` rows, and with
        `reached` the rows an update or a delete reached (`bounded_target`); what they show passes the read
        scope."""
        extra = () if reached is None else (reached,)
        builder = StatementBuilder(self.runtime.tables)
        count = sa.select(sa.func.count()).select_from(written).scalar_subquery()
        if single:
            plan = self.returning_plan(compiler, entity, field.selection_set)
            rows = builder.rows(replace(plan.returned(plan.scope), limit=1), source=written).subquery()
            return sa.select(sa.select(sa.cast(sa.func.to_json(rows.table_valued()), sa.Text)).scalar_subquery(), count,
                             *extra)
        parts, selection = self.response_parts(field, compiler)
        values: list[Any] = []
        for alias, what in parts:
            values.append(sa.literal_column(f"'{alias}'"))
            if what == "affected_rows":
                values.append(count)
            elif what == "__typename":
                values.append(sa.literal_column(f"'{entity}_mutation_response'"))
            else:
                plan = self.returning_plan(compiler, entity, selection)
                rows = builder.rows(plan.returned(plan.scope), source=written).subquery()
                values.append(sa.select(sa.func.coalesce(sa.func.json_agg(rows.table_valued()), EMPTY_ARRAY))
                              .scalar_subquery())
        return sa.select(sa.cast(sa.func.json_build_object(*values), sa.Text), count, *extra)

    def validate(self, entity: str, values: dict[str, Any], *, partial: bool, prefix: str = "") -> None:
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        guard_user_fields(entity, self.caller, [values], self.runtime.model)
        columns = self.runtime.columns[entity]  # a date given a timestamp is checked as the date PostgreSQL casts
        values = {k: date_part(v) if columns.get(k) == "date" else v for k, v in values.items()}
        problems = self.runtime.body_validator(model_entity, partial=partial).problems(values, prefix)
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid field(s) in {entity}", details=problems)

    def hooked_flat(self, entity: str, objects: list[Any], on_conflict: Any) -> bool:
        """Whether `objects` go to the write core in one call: an entity with create hooks, no upsert, no
        nested relations (the write core writes them in one statement when no before hook runs)."""
        return bool(objects) and not on_conflict and bool(self.runtime.hooks(entity, "create")) \
            and self.unnested(entity, objects)

    def unnested(self, entity: str, objects: list[Any]) -> bool:
        """Whether every one of `objects` is an object naming none of `entity`'s relations."""
        relations = self.api.relations()[entity]
        return all(isinstance(o, dict) and not any(k in relations for k in o) for o in objects)

    async def insert_hooked(self, conn: asyncpg.Connection, entity: str, objects: list[dict[str, Any]]) -> list[str]:
        """Objects of a hooked entity (without their nested relations) through the write core, together, in
        one statement when it has no before hook: their ids, in order (the write core checks the permission)."""
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        written = await HookedWriter(self.runtime, self.caller, conn, self.api.db, self.api.bounds).insert(
            model_entity, objects)
        self.inserted += len(written)
        return [row["id"] for row in written]

    async def insert(self, conn: asyncpg.Connection, entity: str, obj: Mapping[str, Any],
                     on_conflict: Mapping[str, Any] | None, prefix: str = "") -> str | None:
        """Insert one object with its nested relations; its id (None when on_conflict did nothing)."""
        self.api.permissions.of(entity, "create")
        relations = self.api.relations()[entity]
        columns = {k: v for k, v in obj.items() if k not in relations}
        children = []
        for key, nested in obj.items():
            if key not in relations:
                continue
            relation = relations[key]
            nested = nested or {}
            if relation.kind == "one":
                parent = await self.insert(conn, relation.target, nested.get("data") or {}, nested.get("on_conflict"),
                                           f"{prefix}{key}.data.")
                if parent is None:  # its on_conflict left the row it met alone: there is no row to point at
                    raise GraphQLError("validation-failed", f"cannot proceed to insert object relation '{key}' since "
                                       f"insert to table '{relation.target}' affects zero rows")
                columns[relation.source_column] = parent
            else:
                children += [(relation, child, nested.get("on_conflict")) for child in nested.get("data") or []]
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        if self.runtime.hooks(entity, "create"):
            if on_conflict:
                raise GraphQLError("validation-failed", f"on_conflict is not supported here: "
                                                        f"{upsert_hooks(self.runtime, entity, True)}")
            new_id = (await self.insert_hooked(conn, entity, [columns]))[0]
            for index, (relation, child, upsert) in enumerate(children):
                await self.insert(conn, relation.target, {**child, relation.target_column: new_id}, upsert,
                                  f"{prefix}{relation.name}.data[{index}].")
            return new_id
        self.validate(entity, columns, partial=False, prefix=prefix)
        if model_entity is not None and model_entity.owner and self.caller.user_id is not None:
            columns[OWNER_COLUMN] = self.caller.user_id
        table = self.runtime.tables[entity]
        compiler = self.compiler()
        body = compiler.values.add(Slot(constant=orjson.dumps(columns).decode()))
        upsert = self.upsert(compiler, entity, on_conflict) if on_conflict else None
        statement = insert_statement(table, list(columns), body, upsert, self.runtime.tables, many=False,
                                     references=self.references(compiler, entity, columns))
        compiled = compile_statement(statement.returning(sa.cast(table.c.id, sa.Text)))
        values = compiler.values.builder()(self.variables, self.caller.user_id)
        quotas.guard_write("create")  # a tenant at its rows or storage quota inserts nothing (engine/quotas.py)
        new_id = await conn.fetchval(compiled.sql, *compiled.arguments(values))
        metering.wrote(int(new_id is not None))
        if new_id is None and upsert is not None and upsert.update and upsert.where is None:
            raise Forbidden(f"the {entity} row this insert conflicts with is outside what the caller may update")
        self.inserted += new_id is not None
        for index, (relation, child, upsert) in enumerate(children):
            if new_id is None:
                break
            await self.insert(conn, relation.target, {**child, relation.target_column: new_id}, upsert,
                              f"{prefix}{relation.name}.data[{index}].")
        return new_id

    def references(self, compiler: QueryCompiler, entity: str, columns: Iterable[str]) -> tuple[Reference, ...]:
        """The ref columns a write of `columns` sets, each to name a row the caller may read (the permissions')."""
        return self.api.permissions.references(entity, self.api.relations()[entity], columns, compiler.caller_param)

    def upsert(self, compiler: QueryCompiler, entity: str, on_conflict: Mapping[str, Any]) -> Upsert:
        """`on_conflict` is an update of the row it meets: the update permission (the schema offers it only
        to roles that have it), within the update's row scope, never of owner_id; no columns: do nothing.
        `where` (Hasura's) narrows the rows it updates further: a conflicting row outside it stays as it is."""
        where = on_conflict.get("where")
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        targets = conflict_targets(model_entity)[on_conflict["constraint"]]
        scope = compiler.scope(entity, "update")
        update = tuple(c for c in as_list(on_conflict.get("update_columns")) if c != OWNER_COLUMN)
        refusal = upsert_hooks(self.runtime, entity, bool(update))
        if refusal is not None:
            raise GraphQLError("validation-failed", f"on_conflict is not supported here: {refusal}")
        return Upsert(targets, update, scope, compiler.condition(entity, where) if where is not None else None)

    # -- responses --

    def returning_plan(self, compiler: QueryCompiler, entity: str, selection: ast.SelectionSetNode | None,
                       extra: list[Any] | None = None) -> ReadPlan:
        """The rows a response lists, read through the caller's read scope (as Hasura's `returning`)."""
        fake = ast.FieldNode(name=ast.NameNode(value=entity), arguments=(), selection_set=selection)
        plan = RowBudget(self.api.bounds).admit(compiler.plan(entity, fake), truncate_root=False)  # engine.limits
        if extra:
            plan = replace(plan, where=Condition("and", tuple([*(plan.where.items if plan.where else ()), *extra])))
        return plan

    async def fetch(self, conn: asyncpg.Connection, compiler: QueryCompiler, statement: sa.Select[Any]) -> bytes:
        compiled = compile_statement(statement)
        values = compiler.values.builder()(self.variables, self.caller.user_id)
        result = await conn.fetchval(compiled.sql, *compiled.arguments(values))
        return (result or "null").encode()

    def response_parts(self, field: ast.FieldNode, compiler: QueryCompiler
                       ) -> tuple[list[tuple[str, str]], ast.SelectionSetNode | None]:
        """(alias, what) of a mutation_response selection, and the `returning` selection."""
        parts, returning = [], None
        for part in compiler.fields(field.selection_set):
            alias = part.alias.value if part.alias else part.name.value
            parts.append((alias, part.name.value))
            if part.name.value == "returning":
                returning = part.selection_set
        return parts, returning

    async def one_by_id(self, conn: asyncpg.Connection, entity: str, row_id: str | None, field: ast.FieldNode) -> bytes:
        if row_id is None:
            return b"null"
        compiler = self.compiler()
        plan = self.returning_plan(compiler, entity, field.selection_set,
                                   [Filter("id", "eq", compiler.values.add(Slot(constant=row_id)))])
        rows = StatementBuilder(self.runtime.tables).rows(plan).subquery()
        return await self.fetch(conn, compiler, sa.select(sa.cast(sa.func.to_json(rows.table_valued()), sa.Text)))

    async def response_by_ids(self, conn: asyncpg.Connection, entity: str, ids: list[str], field: ast.FieldNode,
                              affected: int | None = None) -> bytes:
        compiler = self.compiler()
        parts, selection = self.response_parts(field, compiler)
        builder = StatementBuilder(self.runtime.tables)
        rows = []
        for position, row_id in enumerate(ids if selection is not None else ()):
            plan = self.returning_plan(compiler, entity, selection,
                                       [Filter("id", "eq", compiler.values.add(Slot(constant=row_id)))])
            row = sa.select(sa.func.to_json(builder.rows(plan).subquery().table_valued())).scalar_subquery()
            rows.append(sa.select(sa.literal_column(str(position)).label("o"), row.label("v")))
        listed: Any = sa.cast(EMPTY_ARRAY, postgresql.JSON)
        if rows:  # in insertion order
            ordered = sa.union_all(*rows).subquery("ordered")
            listed = (sa.select(sa.func.json_agg(postgresql.aggregate_order_by(ordered.c.v, ordered.c.o)))
                      .where(ordered.c.v.is_not(None)).scalar_subquery())
        values: list[Any] = []
        for alias, what in parts:
            values.append(sa.literal_column(f"'{alias}'"))
            values.append(sa.literal_column(str(len(ids) if affected is None else affected)) if what == "affected_rows"
                          else sa.literal_column(f"'{entity}_mutation_response'") if what == "__typename"
                          else sa.func.coalesce(listed, EMPTY_ARRAY))
        return await self.fetch(conn, compiler, sa.select(sa.cast(sa.func.json_build_object(*values), sa.Text)))

    # -- updates and deletes --

    def scoped_where(self, compiler: QueryCompiler, entity: str, action: str, where: Any) -> Condition:
        """The rows an update or a delete reaches: the caller's row scope for it and the request's `where`."""
        scope = compiler.scope(entity, action)
        return Condition("and", (*((scope,) if scope is not None else ()), compiler.condition(entity, where)))

    def changes(self, entity: str, args: Mapping[str, Any], kind: str, *, hooked: bool = False
                ) -> tuple[dict[str, Any], Operations]:
        """An update's `_set` and column operators (`_inc`, `_append`, ...), checked (the permission first,
        then the quota, then the values: a `hooked` entity's by the write core); none for a delete, whose
        permission alone is checked."""
        self.api.permissions.of(entity, kind)
        if kind == "delete":
            return {}, {}
        quotas.guard_write("update")
        changes = dict(args.get("_set") or {})
        operations: Operations = {}
        for operator in COLUMN_OPERATORS:
            for column, operand in (args.get(operator) or {}).items():
                if column in changes or column in operations:  # Hasura refuses it too: which would win?
                    raise GraphQLError("validation-failed", f"column found in multiple operators: {column}")
                operations[column] = (operator, operand)
        if hooked:
            if operations:
                operator = next(iter(operations.values()))[0]
                raise GraphQLError("validation-failed", f"{operator} is not supported on '{entity}': it has hooks; use _set")
            return changes, operations
        self.validate(entity, changes, partial=True, prefix="_set.")
        self.check_operands(entity, operations)
        return changes, operations

    def check_operands(self, entity: str, operations: Operations) -> None:
        """Each operand of the kind its operator takes (GraphQL's types let a variable of `jsonb` through as
        anything); a json field whose schema constrains its values takes `_set` only, which is validated."""
        fields = {f.column: f for f in self.runtime.model.entity(entity).fields}  # type: ignore[union-attr]
        problems = []
        for column, (operator, operand) in operations.items():
            wanted = COLUMN_OPERATORS[operator][0]
            fits = {"a number": isinstance(operand, (int, float)) and not isinstance(operand, bool),
                    "a key": isinstance(operand, str), "JSON": True,
                    "an index": isinstance(operand, int) and not isinstance(operand, bool),
                    "a path": isinstance(operand, list) and all(isinstance(k, str) for k in operand)
                    and len(operand) <= MAX_JSON_PATH_STEPS}[wanted]
            if not fits:
                bound = f" of at most {MAX_JSON_PATH_STEPS} keys" if wanted == "a path" else ""
                problems.append(Problem(f"{operator}.{column}", f"must be {wanted}{bound}"))
            elif operator != "_inc" and fields[column].schema is not None:
                problems.append(Problem(f"{operator}.{column}", "the field's values must match its schema: use _set"))
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid operand(s)", details=problems)

    def prepared_write(self, field: ast.FieldNode, kind: str, entity: str, single: bool, set_columns: tuple[str, ...],
                       operators: tuple[tuple[str, str], ...]) -> tuple[CompiledRead, Builder]:
        """An `update_*`/`delete_*` field's statement and how to make its parameters: compiled once per
        (roles, signed in or not, document, operation, field, plan bounds), then per the variables that
        shape it (as queries are, `GraphQLApi.compiled`) and the columns it sets and increments; what it
        sets and the values its `where` compares are parameters."""
        alias = field.alias.value if field.alias else field.name.value
        selections = tuple(s.loc.start if s.loc else -1 for s in (field.selection_set.selections
                                                                   if field.selection_set else ()))
        base = ("graphql-write", self.caller.roles, self.caller.user_id is not None, self.document.digest,
                self.operation, alias, selections, self.api.bounds)
        statements = self.runtime.statements
        shape = statements.get(base)
        if shape is not None:
            found = statements.get((base, self.shaped(shape), set_columns, operators))
            if found is not None:
                return found
        compiler = self.compiler()
        arguments = {a.name.value: a.value for a in field.arguments or ()}  # AST: its variables become parameters
        statement = self.write_statement(compiler, kind, entity, self.target(compiler, kind, single, arguments),
                                         set_columns, operators, field, single)
        prepared = (compile_statement(statement), compiler.values.builder())
        names = self.api.remember(base, tuple(sorted(compiler.values.shape)))
        return self.api.remember((base, self.shaped(names), set_columns, operators), prepared)

    def shaped(self, names: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
        return tuple((n, orjson.dumps(self.variables.get(n), option=orjson.OPT_SORT_KEYS)) for n in names)

    @staticmethod
    def target(compiler: QueryCompiler, kind: str, single: bool, arguments: Mapping[str, Any]) -> Any:
        """The rows a field names, as the compiler's `where` takes it: `where`, or by_pk's key as `{id: {_eq}}`."""
        if not single:
            return arguments.get("where")
        key = arguments["pk_columns"] if kind == "update" else arguments["id"]
        if isinstance(key, ast.ObjectValueNode):
            key = next(f.value for f in key.fields if f.name.value == "id")
        elif kind == "update":  # `pk_columns: $pk`: the key's value shapes the statement
            key = (compiler.values.resolve(key) or {}).get("id")
        return {"id": {"_eq": key}}

    def write_statement(self, compiler: QueryCompiler, kind: str, entity: str, where: Any, set_columns: tuple[str, ...],
                        operators: tuple[tuple[str, str], ...], field: ast.FieldNode, single: bool) -> sa.Select[Any]:
        """ONE statement: the UPDATE or DELETE of the rows `where` names within the caller's row scope (none
        past the plan's `max_write_rows`: `bounded_target`), and the field's answer over the rows it wrote
        (`written_body`). The values set come in one JSON parameter (`SET`), each column operator's operand
        in its own (`OPERAND` + column)."""
        condition = self.scoped_where(compiler, entity, kind, where)
        table = self.runtime.tables[entity]
        reach = condition_sql(condition, table, self.runtime.tables)
        if single:  # by its primary key: one row at most, no bound to keep
            where, reached = reach, sa.literal(0)
        else:
            ids, reached = bounded_target(sa.select(table.c.id).where(reach), self.api.bounds.max_write_rows)
            where = sa.and_(reach, table.c.id.in_(ids))
        if kind == "delete":
            written = sa.delete(table).where(where).returning(*table.c).cte("written")
        elif not set_columns and not operators:  # Hasura writes nothing and says so: no rows affected
            written, reached = sa.select(*table.c).where(sa.false()).cte("written"), sa.literal(0)
        else:
            values: dict[str, Any] = {}
            if set_columns:
                source = json_source(table, compiler.values.add(Slot(variable=SET)), many=False)
                guarded = {r.column: r for r in self.references(compiler, entity, set_columns)}
                values.update({k: referenced(sa.select(source.c[k]).scalar_subquery(), guarded[k], self.runtime.tables)
                               if k in guarded else sa.select(source.c[k]).scalar_subquery() for k in set_columns})
            for column, operator in operators:
                operand = sa.bindparam(f"v{compiler.values.add(Slot(variable=OPERAND + column))}", type_=sa.Text())
                values[column] = COLUMN_OPERATORS[operator][1](table.c[column], operand)
            written = sa.update(table).values(values).where(where).returning(*table.c).cte("written")
        return self.written_body(compiler, entity, written, field, single, reached)

    async def run_write(self, conn: asyncpg.Connection, prepared: tuple[CompiledRead, Builder], changes: dict[str, Any],
                        operations: Operations) -> bytes:
        """A prepared update or delete with this request's values; the rows it wrote counted for the meter."""
        compiled, build = prepared
        variables = {**self.variables, SET: orjson.dumps(changes).decode(),
                     **{OPERAND + column: operand_text(operator, operand)
                        for column, (operator, operand) in operations.items()}}
        body, count, reached = await conn.fetchrow(compiled.sql, *compiled.arguments(build(variables,
                                                                                           self.caller.user_id)))
        self.api.bounds.check_reached(reached, "update" if changes or operations else "delete")
        metering.wrote(count)
        return (body or "null").encode()

    async def update_one_of_many(self, conn: asyncpg.Connection, entity: str, update: Mapping[str, Any],
                                 field: ast.FieldNode) -> bytes:
        """One of `update_*_many`'s `updates` (their values are the request's: compiled for each)."""
        where = update.get("where") or {}
        if self.runtime.hooks(entity, "update"):
            return await self.hooked_write(conn, "update", entity, where, update, field, False)
        changes, operations = self.changes(entity, update, "update")
        compiler = self.compiler()
        statement = self.write_statement(compiler, "update", entity, where, tuple(changes), operators_of(operations),
                                         field, False)
        return await self.run_write(conn, (compile_statement(statement), compiler.values.builder()), changes, operations)

    async def hooked_write(self, conn: asyncpg.Connection, kind: str, entity: str, where: Any, args: Mapping[str, Any],
                           field: ast.FieldNode, single: bool) -> bytes:
        """An update or delete of an entity with hooks: the rows it reaches (`where`, or the field's own
        `target`) locked, then written through the write core (its hooks, its validation), the answer read
        back by id through the read scope."""
        changes, _ = self.changes(entity, args, kind, hooked=True)
        compiler = self.compiler()
        if where is None:
            where = self.target(compiler, kind, single, {a.name.value: a.value for a in field.arguments or ()})
        condition = self.scoped_where(compiler, entity, kind, where)
        model_entity = self.runtime.model.entity(entity)
        assert model_entity is not None
        writer = HookedWriter(self.runtime, self.caller, conn, self.api.db, self.api.bounds)
        olds = await writer.lock(model_entity, condition, compiler.values.builder()(self.variables, self.caller.user_id),
                                 kind)
        ids = [o["id"] for o in olds]
        if kind == "update":
            await writer.update(model_entity, olds, changes)
        response = await (self.one_by_id(conn, entity, ids[0] if ids else None, field) if single
                          else self.response_by_ids(conn, entity, ids, field))
        if kind == "delete":
            await writer.delete(model_entity, olds)
        return response
