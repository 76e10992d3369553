"""The GraphQL schema of one tenant for one caller's roles, in Hasura's naming, built from the model.

Only what the roles may use is in it: an entity appears when they may read it, its mutation fields
when they may create, update or delete it, a relation when they may read its target. So introspection
and validation already refuse what authorization would (an anonymous caller of a tenant with no public
entities sees an empty query root). Built once per (runtime version, roles) and cached on the runtime.

Types are graphql-core's (the engine strawberry itself runs on); fields have no resolvers: operations
are compiled whole into SQL by `engine.graphql.compiler`.
"""

from __future__ import annotations

import re
from typing import Any

from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLEnumValue,
    GraphQLField,
    GraphQLFloat,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
)
from graphql.language import ast

from engine.authz import Authorizer
from engine.query.plan import Relation
from engine.schema.model import OWNER_COLUMN, USERS, Entity, Schema, visible_columns


def _scalar(name: str, description: str) -> GraphQLScalarType:
    """A scalar carried as JSON as it is (PostgreSQL casts and checks the value)."""

    def parse_literal(node: ast.ValueNode, variables: dict[str, Any] | None = None) -> Any:
        from graphql import value_from_ast_untyped

        return value_from_ast_untyped(node, variables)

    return GraphQLScalarType(name, description=description, serialize=lambda v: v, parse_value=lambda v: v,
                             parse_literal=parse_literal)


UUID = _scalar("uuid", "A UUID, as a string.")
TIMESTAMPTZ = _scalar("timestamptz", "A timestamp with its time zone, ISO 8601.")
DATE = _scalar("date", "A date, ISO 8601.")
NUMERIC = _scalar("numeric", "An exact decimal number (a JSON number in results, as the database writes it).")
BIGINT = _scalar("bigint", "A 64-bit integer.")
JSONB = _scalar("jsonb", "Any JSON value.")
SCALARS: dict[str, Any] = {
    "string": GraphQLString, "text": GraphQLString, "enum": GraphQLString, "integer": GraphQLInt,
    "bigint": BIGINT, "number": GraphQLFloat, "decimal": NUMERIC, "boolean": GraphQLBoolean,
    "date": DATE, "datetime": TIMESTAMPTZ, "uuid": UUID, "json": JSONB,
}
NUMERIC_TYPES = ("integer", "bigint", "number", "decimal")
ORDERED_TYPES = (*NUMERIC_TYPES, "string", "text", "enum", "date", "datetime")
ORDER_BY = GraphQLEnumType("order_by", {
    "asc": GraphQLEnumValue("asc"), "asc_nulls_first": GraphQLEnumValue("asc_nulls_first"),
    "asc_nulls_last": GraphQLEnumValue("asc_nulls_last"), "desc": GraphQLEnumValue("desc"),
    "desc_nulls_first": GraphQLEnumValue("desc_nulls_first"), "desc_nulls_last": GraphQLEnumValue("desc_nulls_last"),
}, description="Column ordering options")
CURSOR_ORDERING = GraphQLEnumType("cursor_ordering", {"ASC": GraphQLEnumValue("ASC"), "DESC": GraphQLEnumValue("DESC")},
                                  description="ordering argument of a cursor")
COMPARISONS = ("_eq", "_neq", "_gt", "_gte", "_lt", "_lte")
TEXT_OPERATORS = ("_like", "_nlike", "_ilike", "_nilike", "_similar", "_nsimilar", "_regex", "_nregex", "_iregex",
                  "_niregex")
GRAPHQL_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
# aggregate functions over numbers beyond sum and avg (Hasura's), each a float
DEVIATIONS = ("stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp")


def enum_type_name(entity: str, field: str) -> str:
    return f"{entity}_{field}_enum"


def graphql_enum_values(values: tuple[str, ...]) -> bool:
    """Whether every value of an `enum` field can be a GraphQL enum value (a name, not true/false/null, not
    reserved `__`): the field is then a GraphQL enum type, else a String as before."""
    return bool(values) and all(GRAPHQL_NAME.fullmatch(v) and v not in ("true", "false", "null")
                                and not v.startswith("__") for v in values)


def graph_relations(model: Schema) -> dict[str, dict[str, Relation]]:
    """entity -> relation name -> relation, as Hasura names them: object relations (`one`) by ref field
    name (and `owner`), array relations (`many`) by the ref's reverse name."""
    found: dict[str, dict[str, Relation]] = {e.name: {} for e in model.entities}
    for entity in model.entities:
        links = [(f.name, f.column, f.ref.to, f.ref.reverse) for f in entity.refs if f.ref]
        if entity.owner:
            links.append(("owner", OWNER_COLUMN, USERS, entity.name))
        for name, column, target, reverse in links:
            found[entity.name][name] = Relation(name, "one", target, column, "id")
            found[target].setdefault(reverse, Relation(reverse, "many", entity.name, "id", column))
    return found


JSON_PATH_HELP = "JSON select path: the value at this path in the field (`$.a.b[0]`, `a.b`), or null"


def column_types(entity: Entity, enums: dict[str, GraphQLEnumType] | None = None) -> dict[str, tuple[str, Any]]:
    """column -> (field type, GraphQL type of its value). An `enum` field whose values are all GraphQL names
    is the enum type `{entity}_{field}_enum` (one instance per schema, kept in `enums`)."""
    items = {f.column: f.items for f in entity.fields if f.type == "array"}
    values = {f.column: f.values for f in entity.fields if f.type == "enum"}
    enums = {} if enums is None else enums
    result = {}
    for column, kind in visible_columns(entity).items():
        if kind == "array":
            result[column] = (kind, GraphQLList(GraphQLNonNull(SCALARS[items[column] or "string"])))
        elif kind == "enum" and graphql_enum_values(values.get(column, ())):
            name = enum_type_name(entity.name, column)
            if name not in enums:
                enums[name] = GraphQLEnumType(name, {v: GraphQLEnumValue(v) for v in values[column]},
                                              description=f"the values of {entity.name}.{column}")
            result[column] = (kind, enums[name])
        else:
            result[column] = (kind, SCALARS[kind])
    return result


def conflict_targets(entity: Entity) -> dict[str, tuple[str, ...]]:
    """`on_conflict.constraint` names (Hasura's: `post_pkey`, `post_author_id_title_key`) -> their columns."""
    columns = {f.name: f.column for f in entity.fields}
    sets = [("id",), *((columns[f.name],) for f in entity.fields if f.unique),
            *(tuple(columns.get(n, n) for n in unique) for unique in entity.unique)]
    return {f"{entity.name}_pkey" if s == ("id",) else f"{entity.name}_{'_'.join(s)}_key": s for s in sets}


class SchemaBuilder:
    """Builds the types of one (model, roles); each named type once."""

    def __init__(self, model: Schema, authorizer: Authorizer, roles: tuple[str, ...]) -> None:
        self.model, self.authorizer, self.roles = model, authorizer, roles
        self.relations = graph_relations(model)
        self.types: dict[str, Any] = {}
        self.enums: dict[str, GraphQLEnumType] = {}
        self.readable = [e for e in model.entities if self.may(e.name, "read")]
        self.readable_names = {e.name for e in self.readable}

    def may(self, entity: str, action: str) -> bool:
        """Whether the roles reach some rows of `entity` for `action` (a `member` scope needs a signed-in user)."""
        return self.authorizer.scope(self.roles, entity, action) is not None or (
            "authenticated" in self.roles and bool(self.authorizer.member_roles(entity, action)))

    def columns(self, entity: Entity) -> dict[str, tuple[str, Any]]:
        return column_types(entity, self.enums)

    def named(self, name: str, make: Any) -> Any:
        if name not in self.types:
            self.types[name] = make()
        return self.types[name]

    def comparison(self, kind: str, graphql_type: Any) -> GraphQLInputObjectType:
        """Hasura's `{type}_comparison_exp`: comparisons, lists, null tests, and per kind the text patterns,
        json containment and keys, array containment; an enum compares by equality and membership."""
        array = isinstance(graphql_type, GraphQLList)
        type_name = f"{graphql_type.of_type.of_type.name}_array" if array else graphql_type.name
        name = f"{type_name}_comparison_exp"

        def make() -> GraphQLInputObjectType:
            enum = isinstance(graphql_type, GraphQLEnumType)
            fields = {op: GraphQLInputField(graphql_type) for op in (("_eq", "_neq") if enum else COMPARISONS)}
            fields["_in"] = fields["_nin"] = GraphQLInputField(GraphQLList(GraphQLNonNull(graphql_type)))
            fields["_is_null"] = GraphQLInputField(GraphQLBoolean)
            if graphql_type is GraphQLString:
                fields.update({op: GraphQLInputField(GraphQLString) for op in TEXT_OPERATORS})
            if kind == "json" or array:
                fields["_contains"] = fields["_contained_in"] = GraphQLInputField(graphql_type)
            if kind == "json":
                fields["_has_key"] = GraphQLInputField(GraphQLString)
                fields["_has_keys_any"] = fields["_has_keys_all"] = GraphQLInputField(
                    GraphQLList(GraphQLNonNull(GraphQLString)))
            return GraphQLInputObjectType(name, fields)

        return self.named(name, make)

    def links(self, entity: Entity) -> dict[str, Relation]:
        return {n: r for n, r in self.relations[entity.name].items() if r.target in self.readable_names}

    def bool_exp(self, entity: Entity) -> GraphQLInputObjectType:
        def fields() -> dict[str, GraphQLInputField]:
            result = {c: GraphQLInputField(self.comparison(k, t)) for c, (k, t) in self.columns(entity).items()}
            for name, relation in self.links(entity).items():
                result[name] = GraphQLInputField(self.bool_exp(self.entity(relation.target)))
                if relation.kind == "many":
                    result[f"{name}_aggregate"] = GraphQLInputField(self.aggregate_bool_exp(self.entity(relation.target)))
            me = self.bool_exp(entity)
            result["_and"] = result["_or"] = GraphQLInputField(GraphQLList(GraphQLNonNull(me)))
            result["_not"] = GraphQLInputField(me)
            return result

        name = f"{entity.name}_bool_exp"
        return self.named(name, lambda: GraphQLInputObjectType(
            name, fields, description=f"Boolean expression to filter rows from the table \"{entity.name}\"."))

    def aggregate_bool_exp(self, entity: Entity) -> GraphQLInputObjectType:
        """Hasura's `{target}_aggregate_bool_exp`: a predicate on the count of the related rows."""
        name = f"{entity.name}_aggregate_bool_exp"
        return self.named(name, lambda: GraphQLInputObjectType(name, lambda: {
            "count": GraphQLInputField(self.named(f"{name}_count", lambda: GraphQLInputObjectType(f"{name}_count", {
                "arguments": GraphQLInputField(GraphQLList(GraphQLNonNull(self.select_column(entity)))),
                "distinct": GraphQLInputField(GraphQLBoolean),
                "filter": GraphQLInputField(self.bool_exp(entity)),
                "predicate": GraphQLInputField(GraphQLNonNull(self.comparison("integer", GraphQLInt)))})))}))

    def order_by(self, entity: Entity) -> GraphQLInputObjectType:
        def fields() -> dict[str, GraphQLInputField]:
            result = {c: GraphQLInputField(ORDER_BY) for c, (k, _) in self.columns(entity).items()
                      if k not in ("json", "array")}
            for name, relation in self.links(entity).items():
                if relation.kind == "one":
                    result[name] = GraphQLInputField(self.order_by(self.entity(relation.target)))
                else:
                    result[f"{name}_aggregate"] = GraphQLInputField(self.aggregate_order_by(self.entity(relation.target)))
            return result

        name = f"{entity.name}_order_by"
        return self.named(name, lambda: GraphQLInputObjectType(name, fields))

    def aggregate_order_by(self, entity: Entity) -> GraphQLInputObjectType:
        """`{target}_aggregate_order_by`: order by the count of related rows, or by a summary of a column."""
        columns = self.columns(entity)

        def fields() -> dict[str, GraphQLInputField]:
            result = {"count": GraphQLInputField(ORDER_BY)}
            for function in ("avg", "max", "min", "sum", *DEVIATIONS):
                types = ORDERED_TYPES if function in ("max", "min") else NUMERIC_TYPES
                chosen = {c: GraphQLInputField(ORDER_BY) for c, (k, _) in columns.items() if k in types}
                if chosen:
                    name = f"{entity.name}_{function}_order_by"
                    result[function] = GraphQLInputField(self.named(name, lambda n=name, c=chosen:
                                                                    GraphQLInputObjectType(n, c)))
            return result

        name = f"{entity.name}_aggregate_order_by"
        return self.named(name, lambda: GraphQLInputObjectType(name, fields))

    def select_column(self, entity: Entity) -> GraphQLEnumType:
        name = f"{entity.name}_select_column"
        return self.named(name, lambda: GraphQLEnumType(
            name, {c: GraphQLEnumValue(c) for c in self.columns(entity)}))

    def list_args(self, entity: Entity) -> dict[str, GraphQLArgument]:
        return {
            "distinct_on": GraphQLArgument(GraphQLList(GraphQLNonNull(self.select_column(entity)))),
            "limit": GraphQLArgument(GraphQLInt), "offset": GraphQLArgument(GraphQLInt),
            "order_by": GraphQLArgument(GraphQLList(GraphQLNonNull(self.order_by(entity)))),
            "where": GraphQLArgument(self.bool_exp(entity)),
        }

    def entity(self, name: str) -> Entity:
        found = self.model.entity(name)
        assert found is not None  # relations only point at entities of the model
        return found

    def object_type(self, entity: Entity) -> GraphQLObjectType:
        """Hasura's type of a row: a NOT NULL column (the built-in ones, a `required` field) is non-null, as
        generated clients type it; a relation stays nullable (the row scope may hide its target)."""
        not_null = {"id", "created_at", "updated_at", *(f.column for f in entity.fields if f.required)}

        def fields() -> dict[str, GraphQLField]:
            result = {c: GraphQLField(GraphQLNonNull(t) if c in not_null else t,
                                      args={"path": GraphQLArgument(GraphQLString, description=JSON_PATH_HELP)}
                                      if k == "json" else None)
                      for c, (k, t) in self.columns(entity).items()}
            for name, relation in self.links(entity).items():
                target = self.entity(relation.target)
                if relation.kind == "one":
                    result[name] = GraphQLField(self.object_type(target))
                else:
                    result[name] = GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.object_type(target)))),
                                                args=self.list_args(target))
                    result[f"{name}_aggregate"] = GraphQLField(GraphQLNonNull(self.aggregate_type(target)),
                                                               args=self.list_args(target))
            return result

        return self.named(entity.name, lambda: GraphQLObjectType(
            entity.name, fields, description=entity.description or f"columns and relationships of \"{entity.name}\""))

    def aggregate_type(self, entity: Entity) -> GraphQLObjectType:
        columns = self.columns(entity)

        def numbers(suffix: str, types: tuple[str, ...], result_type: Any | None = None) -> GraphQLObjectType | None:
            chosen = {c: GraphQLField(result_type or t) for c, (k, t) in columns.items() if k in types}
            if not chosen:
                return None
            name = f"{entity.name}_{suffix}_fields"
            return self.named(name, lambda: GraphQLObjectType(name, chosen))

        def fields() -> dict[str, GraphQLField]:
            result = {"count": GraphQLField(GraphQLNonNull(GraphQLInt), args={
                "columns": GraphQLArgument(GraphQLList(GraphQLNonNull(self.select_column(entity)))),
                "distinct": GraphQLArgument(GraphQLBoolean)})}
            for function, types, result_type in (("sum", NUMERIC_TYPES, None), ("avg", NUMERIC_TYPES, GraphQLFloat),
                                                 ("min", ORDERED_TYPES, None), ("max", ORDERED_TYPES, None),
                                                 *((d, NUMERIC_TYPES, GraphQLFloat) for d in DEVIATIONS)):
                made = numbers(function, types, result_type)
                if made is not None:
                    result[function] = GraphQLField(made)
            return result

        fields_name = f"{entity.name}_aggregate_fields"
        name = f"{entity.name}_aggregate"
        return self.named(name, lambda: GraphQLObjectType(name, {
            "aggregate": GraphQLField(self.named(fields_name, lambda: GraphQLObjectType(fields_name, fields))),
            "nodes": GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.object_type(entity))))),
        }))

    # -- mutations --

    def writable_columns(self, entity: Entity) -> dict[str, tuple[str, Any]]:
        read_only = ("id", "created_at", "updated_at", OWNER_COLUMN)
        return {c: v for c, v in self.columns(entity).items() if c not in read_only}

    def insert_input(self, entity: Entity) -> GraphQLInputObjectType:
        def fields() -> dict[str, GraphQLInputField]:
            result = {c: GraphQLInputField(t) for c, (_, t) in self.writable_columns(entity).items()}
            for name, relation in self.links(entity).items():
                target = self.entity(relation.target)
                if not self.may(target.name, "create"):
                    continue
                if relation.kind == "one":
                    result[name] = GraphQLInputField(self.named(f"{target.name}_obj_rel_insert_input", lambda t=target:
                        GraphQLInputObjectType(f"{t.name}_obj_rel_insert_input", {
                            "data": GraphQLInputField(GraphQLNonNull(self.insert_input(t))), **self.upserts(t)})))
                else:
                    result[name] = GraphQLInputField(self.named(f"{target.name}_arr_rel_insert_input", lambda t=target:
                        GraphQLInputObjectType(f"{t.name}_arr_rel_insert_input", {
                            "data": GraphQLInputField(GraphQLNonNull(GraphQLList(GraphQLNonNull(
                                self.insert_input(t))))), **self.upserts(t)})))
            return result

        name = f"{entity.name}_insert_input"
        return self.named(name, lambda: GraphQLInputObjectType(name, fields))

    def upserts(self, entity: Entity) -> dict[str, GraphQLInputField]:
        """A nested insert's `on_conflict`, as its top-level one: offered only to roles that may update."""
        return {"on_conflict": GraphQLInputField(self.on_conflict(entity))} if self.may(entity.name, "update") else {}

    def on_conflict(self, entity: Entity) -> GraphQLInputObjectType:
        constraint = f"{entity.name}_constraint"
        update_column = f"{entity.name}_update_column"
        writable = self.writable_columns(entity)
        name = f"{entity.name}_on_conflict"
        return self.named(name, lambda: GraphQLInputObjectType(name, {
            "constraint": GraphQLInputField(GraphQLNonNull(self.named(constraint, lambda: GraphQLEnumType(
                constraint, {k: GraphQLEnumValue(k) for k in conflict_targets(entity)})))),
            "update_columns": GraphQLInputField(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.named(
                update_column, lambda: GraphQLEnumType(update_column, {c: GraphQLEnumValue(c) for c in writable})))))),
            "where": GraphQLInputField(self.bool_exp(entity)),
        }))

    def mutation_response(self, entity: Entity) -> GraphQLObjectType:
        name = f"{entity.name}_mutation_response"
        return self.named(name, lambda: GraphQLObjectType(name, {
            "affected_rows": GraphQLField(GraphQLNonNull(GraphQLInt)),
            "returning": GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.object_type(entity))))),
        }))

    def set_input(self, entity: Entity) -> GraphQLInputObjectType:
        name = f"{entity.name}_set_input"
        return self.named(name, lambda: GraphQLInputObjectType(
            name, {c: GraphQLInputField(t) for c, (_, t) in self.writable_columns(entity).items()}))

    def inc_input(self, entity: Entity) -> GraphQLInputObjectType | None:
        numbers = {c: GraphQLInputField(t) for c, (k, t) in self.writable_columns(entity).items() if k in NUMERIC_TYPES}
        if not numbers:
            return None
        name = f"{entity.name}_inc_input"
        return self.named(name, lambda: GraphQLInputObjectType(name, numbers))

    def json_inputs(self, entity: Entity) -> dict[str, GraphQLInputObjectType]:
        """Hasura's jsonb update operators, for an entity with json fields: `_append`/`_prepend` (a value
        merged in, `||`), `_delete_key` (a key, `-`), `_delete_elem` (an array index, `-`) and
        `_delete_at_path` (a path, `#-`)."""
        columns = [c for c, (kind, _) in self.writable_columns(entity).items() if kind == "json"]
        if not columns:
            return {}
        operand = {"_append": JSONB, "_prepend": JSONB, "_delete_key": GraphQLString, "_delete_elem": GraphQLInt,
                   "_delete_at_path": GraphQLList(GraphQLNonNull(GraphQLString))}
        return {operator: self.named(f"{entity.name}{operator}_input", lambda o=operator, t=kind: GraphQLInputObjectType(
                    f"{entity.name}{o}_input", {c: GraphQLInputField(t) for c in columns}))
                for operator, kind in operand.items()}

    def update_args(self, entity: Entity) -> dict[str, GraphQLArgument]:
        args = {"_set": GraphQLArgument(self.set_input(entity))}
        inc = self.inc_input(entity)
        if inc is not None:
            args["_inc"] = GraphQLArgument(inc)
        args.update({operator: GraphQLArgument(kind) for operator, kind in self.json_inputs(entity).items()})
        return args

    def mutation_fields(self) -> dict[str, GraphQLField]:
        fields: dict[str, GraphQLField] = {}
        for entity in self.readable:
            name, object_type = entity.name, self.object_type(entity)
            if self.may(name, "create") and self.writable_columns(entity):
                # an upsert updates the row it meets: offered only to roles that may update (as Hasura does)
                conflict = {"on_conflict": GraphQLArgument(self.on_conflict(entity))} if self.may(name, "update") else {}
                fields[f"insert_{name}"] = GraphQLField(self.mutation_response(entity), args={
                    "objects": GraphQLArgument(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.insert_input(entity))))),
                    **conflict})
                fields[f"insert_{name}_one"] = GraphQLField(object_type, args={
                    "object": GraphQLArgument(GraphQLNonNull(self.insert_input(entity))), **conflict})
            if self.may(name, "update"):
                pk = f"{name}_pk_columns_input"
                updates = f"{name}_updates"
                fields[f"update_{name}"] = GraphQLField(self.mutation_response(entity), args={
                    "where": GraphQLArgument(GraphQLNonNull(self.bool_exp(entity))), **self.update_args(entity)})
                fields[f"update_{name}_by_pk"] = GraphQLField(object_type, args={
                    "pk_columns": GraphQLArgument(GraphQLNonNull(self.named(pk, lambda p=pk: GraphQLInputObjectType(
                        p, {"id": GraphQLInputField(GraphQLNonNull(UUID))})))), **self.update_args(entity)})
                fields[f"update_{name}_many"] = GraphQLField(GraphQLList(self.mutation_response(entity)), args={
                    "updates": GraphQLArgument(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.named(
                        updates, lambda u=updates, e=entity: GraphQLInputObjectType(u, {
                            "where": GraphQLInputField(GraphQLNonNull(self.bool_exp(e))),
                            **{k: GraphQLInputField(a.type) for k, a in self.update_args(e).items()}}))))))})
            if self.may(name, "delete"):
                fields[f"delete_{name}"] = GraphQLField(self.mutation_response(entity), args={
                    "where": GraphQLArgument(GraphQLNonNull(self.bool_exp(entity)))})
                fields[f"delete_{name}_by_pk"] = GraphQLField(object_type, args={
                    "id": GraphQLArgument(GraphQLNonNull(UUID))})
        return fields

    def query_fields(self) -> dict[str, GraphQLField]:
        fields: dict[str, GraphQLField] = {}
        for entity in self.readable:
            object_type = self.object_type(entity)
            fields[entity.name] = GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(object_type))),
                                               args=self.list_args(entity),
                                               description=f"fetch data from the table: \"{entity.name}\"")
            fields[f"{entity.name}_aggregate"] = GraphQLField(GraphQLNonNull(self.aggregate_type(entity)),
                                                              args=self.list_args(entity))
            fields[f"{entity.name}_by_pk"] = GraphQLField(object_type, args={"id": GraphQLArgument(GraphQLNonNull(UUID))})
        return fields

    def stream_fields(self) -> dict[str, GraphQLField]:
        """Hasura's streaming subscriptions: `{entity}_stream(batch_size, cursor, where)`, the rows past the
        cursor's value of one ordered column, in batches (gateway/graphql_ws.py streams them)."""
        fields: dict[str, GraphQLField] = {}
        for entity in self.readable:
            name = entity.name
            columns = {c: t for c, (k, t) in self.columns(entity).items() if k in (*ORDERED_TYPES, "uuid")}
            value = self.named(f"{name}_stream_cursor_value_input", lambda n=name, c=columns: GraphQLInputObjectType(
                f"{n}_stream_cursor_value_input", {k: GraphQLInputField(t) for k, t in c.items()},
                description="Initial value of the column from where the streaming should start"))
            cursor = self.named(f"{name}_stream_cursor_input", lambda n=name, v=value: GraphQLInputObjectType(
                f"{n}_stream_cursor_input", {"initial_value": GraphQLInputField(GraphQLNonNull(v)),
                                             "ordering": GraphQLInputField(CURSOR_ORDERING)},
                description=f"Streaming cursor of the table \"{n}\""))
            fields[f"{name}_stream"] = GraphQLField(
                GraphQLNonNull(GraphQLList(GraphQLNonNull(self.object_type(entity)))),
                args={"batch_size": GraphQLArgument(GraphQLNonNull(GraphQLInt)),
                      "cursor": GraphQLArgument(GraphQLNonNull(GraphQLList(cursor))),
                      "where": GraphQLArgument(self.bool_exp(entity))},
                description=f"fetch data from the table in a streaming manner: \"{name}\"")
        return fields

    def build(self) -> GraphQLSchema:
        queries = self.query_fields()
        # a schema needs a query root with a field: a caller who may read nothing gets only `__typename`-able
        # `_empty` (always null), and introspection shows nothing of the tenant's data
        query = GraphQLObjectType("query_root", queries or {"_empty": GraphQLField(GraphQLString)})
        mutations = self.mutation_fields()
        mutation = GraphQLObjectType("mutation_root", mutations) if mutations else None
        streams = {k: v for k, v in self.stream_fields().items() if k not in queries}  # an entity `x_stream` wins
        subscription = GraphQLObjectType("subscription_root", {**queries, **streams}) if queries else None
        return GraphQLSchema(query, mutation, subscription)


def build_schema(model: Schema, authorizer: Authorizer, roles: tuple[str, ...]) -> GraphQLSchema:
    return SchemaBuilder(model, authorizer, roles).build()
