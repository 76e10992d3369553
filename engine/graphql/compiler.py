"""A validated GraphQL query, compiled whole into ONE SQL statement whose result is the `data` object.

The document's selections become the same read plans REST builds (`engine.query.plan`), rendered by
the same statement builder, so the two dialects read alike and no Python runs per row. Values become
numbered parameters: a literal is a constant of the compiled operation; a variable at a value's place
(`{_eq: $title}`, `_by_pk(id: $id)`) is read from each request's variables, so one compiled operation
serves every request of the same document. A variable that shapes the statement (a whole `where`,
`limit`, `order_by`, `@include(if:)`) is part of the cache key instead (`shape`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import orjson
from graphql import GraphQLSchema, Undefined
from graphql.language import ast
from graphql.utilities import value_from_ast_untyped

from engine.authz.permissions import Permissions
from engine.errors import BackSaasError, DatabaseUnavailable, database_error, is_outage_state
from engine.graphql.cost import as_list
from engine.limits import MAX_JSON_PATH_STEPS
from engine.query.plan import (
    Aggregate,
    AggregateField,
    Column,
    Condition,
    CountFilter,
    Embed,
    Filter,
    Membership,
    Order,
    ReadPlan,
    Relation,
    RelationFilter,
    Step,
)

# Hasura's operator -> (the plan's operator, negated)
OPERATORS = {"_eq": ("eq", False), "_neq": ("neq", False), "_gt": ("gt", False), "_gte": ("gte", False),
             "_lt": ("lt", False), "_lte": ("lte", False), "_in": ("in", False), "_nin": ("in", True),
             "_like": ("like", False), "_nlike": ("like", True), "_ilike": ("ilike", False), "_nilike": ("ilike", True),
             "_similar": ("similar", False), "_nsimilar": ("similar", True), "_regex": ("match", False),
             "_nregex": ("match", True), "_iregex": ("imatch", False), "_niregex": ("imatch", True),
             "_contains": ("cs", False), "_contained_in": ("cd", False), "_has_key": ("has_key", False),
             "_has_keys_any": ("has_keys_any", False), "_has_keys_all": ("has_keys_all", False)}
LISTS = ("_in", "_nin", "_has_keys_any", "_has_keys_all")  # operators whose value is a list of values
PATTERN_OPERATORS = ("_similar", "_nsimilar", "_regex", "_nregex", "_iregex", "_niregex")
MAX_PATTERN = 1000  # characters of a regular expression; PostgreSQL's engine also runs under statement_timeout
# aggregate functions of `aggregate {...}` and of `order_by: {x_aggregate: {...}}`, besides count
SUMMARIES = ("sum", "avg", "min", "max", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp")
ORDERS = {"asc": (False, None), "asc_nulls_first": (False, "first"), "asc_nulls_last": (False, "last"),
          "desc": (True, None), "desc_nulls_first": (True, "first"), "desc_nulls_last": (True, "last")}


class GraphQLError(BackSaasError):
    """An error of a GraphQL request, reported in `errors[]` with `extensions.code` (Hasura's codes)."""

    status = 200

    def __init__(self, code: str, message: str, path: list[str | int] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.path = path


ENGINE_CODES = {"permission_denied": "permission-error", "validation_failed": "validation-failed",
                "embed_too_deep": "query-too-deep", "query_too_costly": "query-too-costly",
                "too_many_items": "too-many-items", "too_many_rows": "too-many-rows"}
HASURA_CODES = {"23505": "constraint-violation", "23503": "constraint-violation", "23502": "constraint-violation",
                "23514": "constraint-violation", "23001": "constraint-violation",  # RESTRICT (PostgreSQL 18)
                "42501": "permission-error"}


def as_graphql_error(exc: asyncpg.PostgresError) -> GraphQLError:
    """The database's refusal as a GraphQL error (a 200 with `errors`), except an outage: that raises
    `DatabaseUnavailable`, a 503 with `Retry-After` like every surface's, for load balancers and clients."""
    sqlstate = getattr(exc, "sqlstate", "") or ""
    if is_outage_state(sqlstate):
        raise DatabaseUnavailable() from exc
    message = str(exc.args[0]) if exc.args else str(exc)  # str(exc) adds the DETAIL, which is added once below
    mapped = database_error(sqlstate, message, getattr(exc, "detail", None))
    code = HASURA_CODES.get(sqlstate, "data-exception" if sqlstate.startswith("22") else "unexpected")
    return GraphQLError(code, mapped.message + (f" ({mapped.detail})" if mapped.detail else ""))


@dataclass(frozen=True)
class Slot:
    """Where a parameter's value comes from: a constant of the document, a request variable, or the caller."""

    constant: Any = None
    variable: str | None = None
    caller: bool = False
    many: bool = False  # a list (`_in`): each item as text
    encoding: str = "text"  # "json": as JSON text (a json column's value); "array": a PostgreSQL array literal;
    # "pattern": a regular expression, refused unless RE2 (linear time, no backreferences) could run it too


def array_literal(value: Any) -> str:
    """A list as PostgreSQL's array literal text (`{"a","b \\"c\\""}`), each item quoted."""
    if not isinstance(value, list):
        raise GraphQLError("validation-failed", "expected a list for an array column")
    items = []
    for item in value:
        if item is None:
            items.append("NULL")
        else:
            text = as_text(item)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def safe_pattern(value: Any) -> str:
    """A regular expression a request may run in the database: short, and one RE2 accepts (so no
    backreference or lookaround, which make PostgreSQL's engine backtrack)."""
    from engine.validation import pattern_problem

    text = as_text(value)
    if len(text) > MAX_PATTERN:
        raise GraphQLError("validation-failed", f"a pattern is at most {MAX_PATTERN} characters")
    problem = pattern_problem(text)
    if problem is not None:
        raise GraphQLError("validation-failed", f"pattern refused: {problem}")
    return text


def encoded(value: Any, encoding: str) -> Any:
    if value is None:
        return None
    if encoding == "json":
        return orjson.dumps(value).decode()
    if encoding == "array":
        return array_literal(value)
    if encoding == "pattern":
        return safe_pattern(value)
    return as_text(value)


def variables_in(node: ast.ValueNode) -> Iterator[str]:
    """The names of the variables a value of the document uses, at any depth."""
    if isinstance(node, ast.VariableNode):
        yield node.name.value
    elif isinstance(node, ast.ListValueNode):
        for item in node.values:
            yield from variables_in(item)
    elif isinstance(node, ast.ObjectValueNode):
        for part in node.fields:
            yield from variables_in(part.value)


def given(value: Any) -> Any:
    """A value written in the document, without what its omitted variables left undefined: an input
    object's field whose variable was not given is absent (the spec's input coercion: `_set: {title: $t}`
    without `$t` sets nothing), a list's item is null."""
    if isinstance(value, dict):
        return {k: given(v) for k, v in value.items() if v is not Undefined}
    if isinstance(value, list):
        return [None if v is Undefined else given(v) for v in value]
    return value


JSON_PATH_STEP = re.compile(r"""\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(?:"([^"]*)"|'([^']*)')\]""")


def json_path(text: Any) -> list[str]:
    """Hasura's JSON select path (`$.a.b[0]`, `a.b`, `$["a key"]`) as the keys and positions of `#>`."""
    if not isinstance(text, str):
        raise GraphQLError("validation-failed", "a json field's path is a string, e.g. \"$.a.b[0]\"")
    rest, steps = text.removeprefix("$"), []
    while rest:
        found = JSON_PATH_STEP.match(rest)
        if found is None or (not steps and not text.startswith("$") and rest.startswith(".")):
            raise GraphQLError("validation-failed", f"invalid json path '{text}': expected .key, [index] or [\"key\"]")
        steps.append(next(g for g in found.groups() if g is not None))
        rest = rest[found.end():]
    if len(steps) > MAX_JSON_PATH_STEPS:
        raise GraphQLError("validation-failed", f"a json path has at most {MAX_JSON_PATH_STEPS} steps")
    return steps


def as_text(value: Any) -> Any:
    """A value as the text PostgreSQL casts to the column's type (lists stay lists of texts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return None if value is None else str(value)


STREAM_CURSOR = "__stream_cursor"  # the variable a stream's statement reads the cursor from (gateway/graphql_ws.py)
STREAM_CURSOR_KEY = "$cursor"  # each streamed row's cursor value as text, taken out before it is sent (no GraphQL
# name: no alias of the selection can be it)


@dataclass(frozen=True)
class StreamRequest:
    """Hasura's `{entity}_stream(batch_size, cursor: [{initial_value: {column: value}, ordering}])`."""

    batch_size: int
    column: str
    descending: bool
    initial: Any


def stream_request(arguments: Mapping[str, Any]) -> StreamRequest:
    """The stream a `_stream` field's resolved arguments ask for: one cursor of one column, a positive batch."""
    batch_size, cursors = arguments.get("batch_size"), as_list(arguments.get("cursor"))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GraphQLError("validation-failed", "batch_size must be a positive integer")
    if len(cursors) != 1 or not isinstance(cursors[0], dict):
        raise GraphQLError("validation-failed", "a stream takes exactly one cursor")
    initial = cursors[0].get("initial_value")
    if not isinstance(initial, dict) or len(initial) != 1:
        raise GraphQLError("validation-failed", "a cursor's initial_value names exactly one column")
    (column, value), = initial.items()
    return StreamRequest(batch_size, column, cursors[0].get("ordering") == "DESC", value)


@dataclass
class Values:
    """The parameters of the statement being compiled, and the variables that shape it."""

    variables: Mapping[str, Any]
    slots: list[Slot] = field(default_factory=list)
    shape: dict[str, Any] = field(default_factory=dict)

    def add(self, slot: Slot) -> int:
        self.slots.append(slot)
        return len(self.slots) - 1

    def leaf(self, node: ast.ValueNode, many: bool = False, encoding: str = "text") -> int:
        """A compared value's parameter: a variable's, or the document's own value (`[$a, "b"]` included:
        its variables then shape the statement, their values written into it)."""
        if isinstance(node, ast.VariableNode):
            return self.add(Slot(variable=node.name.value, many=many, encoding=encoding))
        return self.add(Slot(constant=self.resolve(node), many=many, encoding=encoding))

    def resolve(self, node: ast.ValueNode | None) -> Any:
        """A structural argument's value; every variable used in it, at any depth (`order_by: {title: $d}`),
        becomes part of the cache key, since its value is written into the statement."""
        if node is None:
            return None
        for name in variables_in(node):
            self.shape[name] = self.variables.get(name)
        if isinstance(node, ast.VariableNode):
            return self.variables.get(node.name.value)
        return given(value_from_ast_untyped(node, self.variables))

    def builder(self) -> Callable[[Mapping[str, Any], str | None], list[Any]]:
        """How to make a request's parameter values from its variables and the caller's user id."""
        slots = tuple(self.slots)

        def build(variables: Mapping[str, Any], user_id: str | None) -> list[Any]:
            values = []
            for slot in slots:
                value = user_id if slot.caller else variables.get(slot.variable) if slot.variable else slot.constant
                if slot.many:
                    if value is None:
                        raise GraphQLError("validation-failed", "expected a list of values for _in/_nin")
                    values.append([encoded(v, slot.encoding) for v in as_list(value)])
                else:
                    values.append(encoded(value, slot.encoding))
            return values

        return build


class QueryCompiler:
    """Turns the root fields of one operation into plans; fragments are inlined, directives applied."""

    def __init__(self, schema: GraphQLSchema, relations: Mapping[str, Mapping[str, Relation]],
                 columns: Mapping[str, Mapping[str, str]], fragments: Mapping[str, ast.FragmentDefinitionNode],
                 values: Values, permissions: Permissions) -> None:
        self.schema, self.relations, self.columns = schema, relations, columns
        self.fragments, self.values, self.permissions = fragments, values, permissions
        self.entities: set[str] = set()  # every entity the operation reads (what a subscription watches)

    # -- selections --

    def fields(self, selection_set: ast.SelectionSetNode | None) -> list[ast.FieldNode]:
        """The fields of a selection set with fragments inlined and @skip/@include applied, one per response
        key (the spec's CollectFields): a key selected twice, directly or through fragments, is one field
        whose selection is both selections (MergeSelectionSets; validation already made sure they are the
        same field with the same arguments), so the answer never carries a key twice."""
        grouped: dict[str, list[ast.FieldNode]] = {}
        self.collect(selection_set, grouped)
        found = []
        for nodes in grouped.values():
            if len(nodes) == 1 or nodes[0].selection_set is None:
                found.append(nodes[0])
                continue
            merged = tuple(s for n in nodes for s in (n.selection_set.selections if n.selection_set else ()))
            first = nodes[0]
            found.append(ast.FieldNode(alias=first.alias, name=first.name, arguments=first.arguments,
                                       directives=(), selection_set=ast.SelectionSetNode(selections=merged)))
        return found

    def collect(self, selection_set: ast.SelectionSetNode | None, grouped: dict[str, list[ast.FieldNode]],
                seen: frozenset[str] = frozenset()) -> None:
        for selection in selection_set.selections if selection_set else ():
            if not self.included(selection):
                continue
            if isinstance(selection, ast.FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, ast.InlineFragmentNode):
                self.collect(selection.selection_set, grouped, seen)
            elif isinstance(selection, ast.FragmentSpreadNode) and selection.name.value not in seen:
                name = selection.name.value
                self.collect(self.fragments[name].selection_set, grouped, seen | {name})

    def included(self, node: ast.SelectionNode) -> bool:
        for directive in node.directives or ():
            condition = next((a.value for a in directive.arguments if a.name.value == "if"), None)
            value = bool(self.values.resolve(condition))
            if (directive.name.value == "skip" and value) or (directive.name.value == "include" and not value):
                return False
        return True

    @staticmethod
    def arguments(node: ast.FieldNode) -> dict[str, ast.ValueNode]:
        return {a.name.value: a.value for a in node.arguments or ()}

    # -- plans --

    def plan(self, entity: str, node: ast.FieldNode, action: str = "read", *, by_pk: bool = False,
             selection: ast.SelectionSetNode | None = None) -> ReadPlan:
        """The plan of one level: its row scope, the field's arguments and its selection."""
        args = self.arguments(node)
        self.entities.add(entity)
        scope = self.scope(entity, action)
        conditions: list[Filter | Membership | RelationFilter | Condition] = []
        if by_pk:
            conditions.append(Filter("id", "eq", self.values.leaf(args["id"])))
        if args.get("where") is not None:
            conditions.append(self.condition(entity, args["where"]))
        columns, embeds, aggregates = self.selection(entity, selection if selection is not None else node.selection_set)
        order = self.order(entity, self.values.resolve(args.get("order_by")))
        distinct = tuple(as_list(self.values.resolve(args.get("distinct_on"))))
        leading = order[:len(distinct)]
        if distinct and order and (len(leading) < len(distinct) or any(o.through or o.aggregate or o.path for o in leading)
                                   or {o.column for o in leading} != set(distinct)):
            raise GraphQLError("validation-failed", '"distinct_on" columns must match initial "order_by" columns')
        return ReadPlan(entity, columns, embeds, Condition("and", tuple(conditions)) if conditions else None, order,
                        self.count(args.get("limit"), "limit"), self.count(args.get("offset"), "offset"),
                        distinct, aggregates, scope=scope)

    def stream(self, entity: str, node: ast.FieldNode) -> ReadPlan:
        """Hasura's `{entity}_stream`: `batch_size` rows of the field's plan (its `where`, the caller's read
        scope) past the cursor, in the cursor column's order; the cursor is the statement's parameter
        STREAM_CURSOR, and each row carries its value under STREAM_CURSOR_KEY for the next batch."""
        args = self.arguments(node)
        stream = stream_request({k: self.values.resolve(args.get(k)) for k in ("batch_size", "cursor")})
        if stream.column not in self.columns[entity]:
            raise GraphQLError("validation-failed", f"no column '{stream.column}' in {entity}")
        plan = self.plan(entity, node)
        after = Filter(stream.column, "lt" if stream.descending else "gt", self.values.add(Slot(variable=STREAM_CURSOR)))
        return replace(plan, columns=(*plan.columns, Column(STREAM_CURSOR_KEY, stream.column, as_text=True)),
                       where=Condition("and", (*([plan.where] if plan.where else []), after)),
                       order=(Order(stream.column, descending=stream.descending),), limit=stream.batch_size)

    def caller_param(self) -> int:
        return self.values.add(Slot(caller=True))

    def scope(self, entity: str, action: str) -> Condition | None:
        """The caller's row scope for `action` on `entity` (`engine.authz.permissions`); `Forbidden` when none."""
        return self.permissions.scope(entity, action, self.caller_param)

    def shown(self, entity: str) -> Condition | None:
        """The scope of what a write returns: the read scope."""
        return self.permissions.shown(entity, self.caller_param)

    def count(self, node: ast.ValueNode | None, name: str) -> int | None:
        value = self.values.resolve(node)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise GraphQLError("validation-failed", f"{name} must be a non-negative integer")
        return value

    def selection(self, entity: str, selection_set: ast.SelectionSetNode | None
                  ) -> tuple[tuple[Column, ...], tuple[Embed, ...], tuple[Aggregate, ...]]:
        columns: list[Column] = []
        embeds: list[Embed] = []
        aggregates: list[Aggregate] = []
        kinds = self.columns[entity]
        relations = self.relations[entity]
        for node in self.fields(selection_set):
            name = node.name.value
            alias = node.alias.value if node.alias else name
            if name == "__typename":
                columns.append(Column(alias, "id", constant=entity))
            elif name in kinds:  # decimals as JSON numbers, as REST (and PostgREST) send them
                path = next((a.value for a in node.arguments or () if a.name.value == "path"), None)
                at = None if path is None else self.values.add(Slot(constant=json_path(self.values.resolve(path)),
                                                                    encoding="array"))
                columns.append(Column(alias, name, at=at))
            elif name in relations:
                relation = relations[name]
                embeds.append(Embed(alias, relation, self.plan(relation.target, node)))
            elif name.endswith("_aggregate") and name[:-10] in relations:
                relation = relations[name[:-10]]
                aggregates.append(self.aggregate(alias, relation, relation.target, node))
        return tuple(columns), tuple(embeds), tuple(aggregates)

    def aggregate(self, alias: str, relation: Relation | None, entity: str, node: ast.FieldNode) -> Aggregate:
        summaries: list[tuple[str, tuple[AggregateField, ...]]] = []
        nodes: list[str] = []
        node_selection: ast.SelectionSetNode | None = None
        for part in self.fields(node.selection_set):
            part_alias = part.alias.value if part.alias else part.name.value
            if part.name.value == "aggregate":
                summaries.append((part_alias, tuple(self.summary_fields(part))))
            elif part.name.value == "nodes":
                nodes.append(part_alias)
                node_selection = part.selection_set  # every `nodes` alias lists the same rows
            else:
                raise GraphQLError("validation-failed", f"'{part.name.value}' is not supported on an aggregate")
        plan = self.plan(entity, node, selection=node_selection)
        return Aggregate(alias, relation, plan, tuple(summaries), tuple(nodes))

    def summary_fields(self, node: ast.FieldNode) -> list[AggregateField]:
        found = []
        for part in self.fields(node.selection_set):
            alias = part.alias.value if part.alias else part.name.value
            function = part.name.value
            if function == "count":
                args = self.arguments(part)
                counted = as_list(self.values.resolve(args.get("columns")))
                found.append(AggregateField(alias, "count", tuple((c, c) for c in counted),
                                            bool(self.values.resolve(args.get("distinct")))))
            elif function in SUMMARIES:
                columns = tuple((c.alias.value if c.alias else c.name.value, c.name.value)
                                for c in self.fields(part.selection_set) if c.name.value != "__typename")
                found.append(AggregateField(alias, function, columns))
            else:
                raise GraphQLError("validation-failed", f"'{function}' is not supported in an aggregate")
        return found

    # -- arguments --

    def entries(self, value: Any) -> list[tuple[str, Any]]:
        """The fields of an input object, given as AST or (from a structural variable) as a value."""
        if isinstance(value, ast.VariableNode):
            value = self.values.resolve(value)
        if isinstance(value, ast.ObjectValueNode):
            return [(f.name.value, f.value) for f in value.fields]
        return list(value.items()) if isinstance(value, dict) else []

    def items(self, value: Any) -> list[Any]:
        if isinstance(value, ast.VariableNode):
            value = self.values.resolve(value)
        if isinstance(value, ast.ListValueNode):
            return list(value.values)
        return list(value) if isinstance(value, list) else [value] if value is not None else []

    def leaf(self, value: Any, many: bool, encoding: str = "text") -> int:
        if isinstance(value, ast.ValueNode):
            if isinstance(value, ast.NullValueNode):
                return self.values.add(Slot(constant=None))
            return self.values.leaf(value, many, encoding)
        return self.values.add(Slot(constant=value, many=many, encoding=encoding))

    def condition(self, entity: str, where: Any) -> Condition:
        """`post_bool_exp` as a condition; comparison values become parameters."""
        items: list[Filter | Membership | RelationFilter | CountFilter | Condition] = []
        kinds = self.columns[entity]
        for key, value in self.entries(where):
            if key in ("_and", "_or"):
                parts = tuple(self.condition(entity, v) for v in self.items(value))
                items.append(Condition("and" if key == "_and" else "or", parts))
            elif key == "_not":
                items.append(Condition("and", (self.condition(entity, value),), negate=True))
            elif key in kinds:
                if kinds[key] == "array" and any(op in ("_in", "_nin") for op, _ in self.entries(value)):
                    raise GraphQLError("validation-failed", f"{key} is an array: _in and _nin compare single values "
                                                            "(use _eq for the whole array)")
                items += self.comparisons(key, value, kinds[key])
            elif key not in self.relations[entity] and key.endswith("_aggregate"):
                items.append(self.count_filter(entity, key.removesuffix("_aggregate"), value))
            else:
                relation = self.relations[entity][key]
                self.entities.add(relation.target)
                items.append(RelationFilter(relation, self.condition(relation.target, value),
                                            self.scope(relation.target, "read")))
        return Condition("and", tuple(items))

    def count_filter(self, entity: str, name: str, aggregate: Any) -> CountFilter:
        """`{posts_aggregate: {count: {predicate, filter, distinct, arguments}}}`: the count of the related
        rows the caller may read (their row scope, as every relation's), compared by the predicate."""
        relation = self.relations[entity][name]
        self.entities.add(relation.target)
        spec = dict(self.entries(dict(self.entries(aggregate)).get("count")))
        if spec.get("predicate") is None:
            raise GraphQLError("validation-failed", f"{name}_aggregate.count needs a predicate, e.g. {{_gt: 0}}")
        where = self.condition(relation.target, spec["filter"]) if spec.get("filter") is not None \
            else Condition("and", ())
        columns = tuple(as_list(self.values.resolve(spec.get("arguments"))))
        distinct = self.values.resolve(spec.get("distinct")) is True
        return CountFilter(relation, where, self.scope(relation.target, "read"),
                           tuple(self.comparisons("", spec["predicate"], "integer")), columns, distinct)

    def comparisons(self, column: str, comparison: Any, kind: str = "") -> list[Filter]:
        """A column's `{_op: value}`: each a filter, its value a parameter encoded for the column (a json
        column's values as JSON, an array column's as an array literal, patterns checked)."""
        found = []
        for op, value in self.entries(comparison):
            if op == "_is_null":
                is_null = self.values.resolve(value) if isinstance(value, ast.ValueNode) else value
                found.append(Filter(column, "is_null", 0, negate=not is_null))
                continue
            if value is None or isinstance(value, ast.NullValueNode):
                raise GraphQLError("validation-failed", f"{column}.{op} needs a value (use _is_null for nulls)")
            plan_op, negate = OPERATORS[op]
            encoding = ("pattern" if op in PATTERN_OPERATORS else "text" if op.startswith("_has_key")
                        else "json" if kind == "json" else "array" if kind == "array" else "text")
            found.append(Filter(column, plan_op, self.leaf(value, op in LISTS, encoding), negate=negate))
        return found

    def order(self, entity: str, order_by: Any) -> tuple[Order, ...]:
        orders: list[Order] = []
        for item in (order_by if isinstance(order_by, list) else [order_by] if order_by else []):
            orders += self.orders(entity, item, ())
        return tuple(orders)

    def orders(self, entity: str, item: Mapping[str, Any], through: tuple[Step, ...]) -> list[Order]:
        found = []
        for key, value in item.items():
            if isinstance(value, dict) and key.endswith("_aggregate") and key not in self.relations[entity]:
                relation = self.relations[entity][key[:-10]]  # an array relation: its rows the caller may read
                self.entities.add(relation.target)
                step = (*through, Step(relation, self.scope(relation.target, "read")))
                found += self.aggregate_orders(value, step)
            elif isinstance(value, dict):
                relation = self.relations[entity][key]  # among the related rows the caller may read
                self.entities.add(relation.target)
                found += self.orders(relation.target, value, (*through, Step(relation, self.scope(relation.target,
                                                                                                   "read"))))
            elif value is not None:  # `{code: null}` orders by nothing, as if absent
                descending, nulls = ORDERS[value]
                found.append(Order(key, descending, nulls, through))
        return found

    @staticmethod
    def aggregate_orders(item: Mapping[str, Any], through: tuple[Step, ...]) -> list[Order]:
        """`{count: desc, sum: {views: asc}}` of `{x_aggregate: ...}`: orders by a summary of the related rows."""
        found = []
        for function, value in item.items():
            if function == "count" and value is not None:
                found.append(Order("id", *ORDERS[value], through, aggregate="count"))
            elif function in SUMMARIES and isinstance(value, dict):
                found += [Order(column, *ORDERS[direction], through, aggregate=function)
                          for column, direction in value.items() if direction is not None]
        return found
