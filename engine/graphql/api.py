"""One GraphQL request against one tenant (`/graphql/v1`, GET or POST).

A document is parsed and validated against the caller's role's schema once, and each operation compiled
once per (runtime version, roles, document, operation, shaping variables): a repeated query costs two
dict lookups and one SQL statement. Introspection runs in graphql-core over the same schema. Mutations
run their root fields in order in one transaction (`engine.graphql.mutations`). Errors answer 200 with
`errors[].extensions.code`, as GraphQL servers do, refused credentials too (`invalid-jwt`, as Hasura);
only a malformed HTTP request is a 4xx.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from graphql import GraphQLError as CoreError
from graphql import GraphQLSchema, execute, parse, validate
from graphql.language import BREAK, Visitor, ast, visit
from graphql.utilities import value_from_ast_untyped
from graphql.validation import ValidationContext, ValidationRule

from engine import audit
from engine.answer import Answer
from engine.authz import Caller
from engine.authz.permissions import Permissions
from engine.database import Database
from engine.errors import TOKEN_REFUSALS, BackSaasError, DatabaseUnavailable
from engine.graphql.compiler import (
    ENGINE_CODES,
    GraphQLError,
    QueryCompiler,
    StreamRequest,
    Values,
    as_graphql_error,
    as_list,
    stream_request,
)
from engine.graphql.cost import mutation_items
from engine.graphql.mutations import MutationRunner, objects_variable
from engine.graphql.schema import build_schema, graph_relations
from engine.graphql.variables import coerce_variables, signatures
from engine.limits import Bounds, RowBudget
from engine.query.plan import Relation
from engine.query.sql import EMPTY_ARRAY, StatementBuilder, compile_statement
from engine.runtime import TenantRuntime

DEFAULT_LIMITS = {"max_depth": 12, "max_cost": 500}  # a plan's `limits.graphql` overrides them
CACHE_SIZE = 1024
INTROSPECTION = ("__schema", "__type", "__typename")
# Introspection (`__schema`, `__type`) is bounded by these instead of the plan's limits: GraphiQL's and the
# codegen tools' standard query is 14 levels deep and selects 229 fields (graphql-core's
# get_introspection_query with every option), and what it reads is the schema, not the tenant's rows
INTROSPECTION_LIMITS = (20, 400)
MAX_BATCH = 20  # operations of one batched request (a JSON array), each checked as if sent alone
JSON = [("Content-Type", "application/json")]




@dataclass(frozen=True)
class Document:
    """A parsed, validated document and what its operations need."""

    node: ast.DocumentNode
    fragments: Mapping[str, ast.FragmentDefinitionNode]
    digest: bytes


@dataclass(frozen=True)
class CompiledQuery:
    sql: str
    slots: tuple[int | None, ...]
    constants: tuple[Any, ...]
    build: Any  # (variables, user id) -> values
    entities: frozenset[str]  # what it reads


@dataclass(frozen=True)
class KnownInsert:
    """A mutation that is one `insert_*` root field without an upsert's update, as found once per (roles,
    signed in or not, document, operation, plan bounds, variables but the objects): its next requests go
    from their objects to the statement cached for their keys, without collecting fields, resolving
    arguments or counting nested rows again (a flat insert's rows are its objects)."""

    field: ast.FieldNode
    entity: str
    objects: list[Any]  # the document's own (when `variable` is None)
    on_conflict: Any
    one: bool
    variable: str | None  # the variable that is the whole `object`/`objects` argument
    shape: tuple[Any, ...]  # MutationRunner.insert_shape

    def objects_of(self, variables: Mapping[str, Any]) -> list[Any]:
        if self.variable is None:
            return self.objects
        value = variables.get(self.variable)
        return [value] if self.one else as_list(value)


@dataclass(frozen=True)
class Subscription:
    """A validated subscription: its statement, the request's variables, and the tables it watches."""

    compiled: CompiledQuery
    variables: dict[str, Any]
    tables: frozenset[str]
    stream: tuple[str, StreamRequest] | None = None  # a streaming subscription: its field's key, what it asks for


def plan_limits(max_depth: int, max_cost: int) -> type[ValidationRule]:
    class PlanLimits(ValidationRule):
        """Refuses, before anything runs, operations nested deeper than the tenant's plan allows or
        selecting more fields (its cost: every field selected, fragments expanded) than it allows."""

        def enter_operation_definition(self, node: ast.OperationDefinitionNode, *_: Any) -> None:
            selections = node.selection_set.selections
            schema_fields = tuple(s for s in selections if isinstance(s, ast.FieldNode)
                                  and s.name.value in ("__schema", "__type"))
            data_fields = tuple(s for s in selections if s not in schema_fields)
            for part, (most_deep, most_cost), what in (
                    (data_fields, (max_depth, max_cost), "the plan allows"),
                    (schema_fields, INTROSPECTION_LIMITS, "introspection allows")):
                selection_set = ast.SelectionSetNode(selections=part)
                depth = _depth(selection_set, self.context, 0)
                if depth > most_deep:
                    self.report_error(CoreError(f"the query is {depth} levels deep; {what} {most_deep}",
                                                node, extensions={"code": "query-too-deep"}))
                cost = _cost(selection_set, self.context)
                if cost > most_cost:
                    self.report_error(CoreError(f"the query selects {cost} fields; {what} {most_cost}",
                                                node, extensions={"code": "query-too-costly"}))

    return PlanLimits


def _cost(selection_set: ast.SelectionSetNode | None, context: ValidationContext,
          seen: frozenset[str] = frozenset()) -> int:
    cost = 0
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, ast.FieldNode):
            cost += 1 + _cost(selection.selection_set, context, seen)
        elif isinstance(selection, ast.InlineFragmentNode):
            cost += _cost(selection.selection_set, context, seen)
        elif isinstance(selection, ast.FragmentSpreadNode) and selection.name.value not in seen:
            fragment = context.get_fragment(selection.name.value)
            if fragment is not None:
                cost += _cost(fragment.selection_set, context, seen | {selection.name.value})
    return cost


def _depth(selection_set: ast.SelectionSetNode | None, context: ValidationContext, level: int,
           seen: frozenset[str] = frozenset()) -> int:
    deepest = level
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, ast.FieldNode) and selection.selection_set:
            deepest = max(deepest, _depth(selection.selection_set, context, level + 1, seen))
        elif isinstance(selection, ast.InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, context, level, seen))
        elif isinstance(selection, ast.FragmentSpreadNode) and selection.name.value not in seen:
            fragment = context.get_fragment(selection.name.value)
            if fragment is not None:
                deepest = max(deepest, _depth(fragment.selection_set, context, level, seen | {selection.name.value}))
    return deepest


def json_object_text(parts: list[Any]) -> Any:
    """The `data` object as text, keys in order. `json_build_object` takes at most 100 arguments (50 root
    fields; a document may select more): more are built 50 at a time and joined as text."""
    chunks = [sa.cast(sa.func.json_build_object(*parts[i:i + 100]), sa.Text) for i in range(0, len(parts), 100)]
    if len(chunks) <= 1:
        return chunks[0] if chunks else sa.literal_column("'{}'::text")
    inner = [sa.func.substr(sa.func.left(chunk, -1), 2) for chunk in chunks]  # each object without its braces
    return sa.func.concat("{", sa.func.concat_ws(",", *inner), "}")


def error_body(errors: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"errors": errors})


def refused_credentials(error: BackSaasError) -> Answer:
    """A 401 of the gateway's authentication on the GraphQL surface, as Hasura words it (HTTP 200): `invalid-jwt`
    for a token a refresh may mend (TOKEN_REFUSALS: Apollo's and urql's token-refresh links look for it), else
    `access-denied` (a key, or another tenant's credentials)."""
    code = "invalid-jwt" if error.code in TOKEN_REFUSALS else "access-denied"
    body = {"message": error.message, "extensions": {"code": code, "path": "$", "reason": error.code}}
    return Answer(200, JSON, error_body([body]))


class MalformedRequest(BackSaasError):
    """A request that is no GraphQL request (its JSON, its `query` or `variables`): a 400 with Hasura's code
    (`invalid-json`, `parse-failed`) and where in the request (`$.variables`), in GraphQL's `errors` shape."""

    status = 400

    def __init__(self, code: str, message: str, where: str = "$") -> None:
        super().__init__(message)
        self.code, self.where = code, where

    @classmethod
    def of_body(cls, error: BackSaasError) -> MalformedRequest:
        """A body the gateway refused before it was parsed (gateway/bodies.py: a NUL character), located."""
        path = error.details[0].path if error.details else ""
        return cls("parse-failed", error.message, "$" + (path if not path or path.startswith("[") else f".{path}"))

    def answer(self) -> Answer:
        return Answer(400, JSON, error_body([{"message": self.message, "extensions": {"path": self.where,
                                                                                      "code": self.code}}]))


class NulStrings(Visitor):
    """Finds a string of a document holding a NUL character (which no value PostgreSQL keeps may hold)."""

    found = False

    def enter_string_value(self, node: ast.StringValueNode, *_: Any) -> Any:
        if "\x00" in node.value:
            self.found = True
            return BREAK
        return None


def problem(code: str, message: str, path: list[str | int] | None = None) -> dict[str, Any]:
    """One of `errors`: the message, Hasura's `extensions` (its code, and where in the request as a JSON
    path: `$.selectionSet.{field}`, else `$`), and the spec's `path` to the field it is about."""
    where = "$" + "".join(f".selectionSet.{p}" if isinstance(p, str) else f"[{p}]" for p in path or ())
    found: dict[str, Any] = {"message": message, "extensions": {"path": where, "code": code}}
    if path:
        found["path"] = path
    return found


class GraphQLApi:
    def __init__(self, runtime: TenantRuntime, db: Database, caller: Caller,
                 limits: Mapping[str, Any] | None = None) -> None:
        self.runtime, self.db, self.caller = runtime, db, caller
        self.method = "POST"  # the HTTP request's (`handle`): a GET may not run a mutation
        self.permissions = Permissions(runtime.authorizer, caller, runtime.columns)
        given = (limits or {}).get("graphql")
        given = given if isinstance(given, dict) else {}
        # an operator's plan with a malformed value keeps the default, never fails every request of its tenants
        self.limits = tuple(given[k] if isinstance(given.get(k), int) and not isinstance(given[k], bool)
                            and given[k] > 0 else DEFAULT_LIMITS[k] for k in ("max_depth", "max_cost"))
        self.bounds = Bounds.of_plan(limits)  # rows, relation depth, items (engine.limits)

    def schema(self) -> GraphQLSchema:
        key = ("graphql-schema", self.caller.roles)
        found = self.runtime.statements.get(key)
        if found is None:
            found = self.runtime.statements[key] = build_schema(self.runtime.model, self.runtime.authorizer,
                                                                self.caller.roles)
        return found

    def remember(self, key: Any, value: Any) -> Any:
        cache = self.runtime.statements
        if len(cache) >= CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = value
        return value

    async def handle(self, method: str, query: Mapping[str, str], body: bytes) -> Answer:
        self.method = method
        try:
            payload = self.payload(method, query, body)
            if isinstance(payload, list):  # a batch (Hasura, Apollo's BatchHttpLink): an array of answers, in order
                if not payload or len(payload) > MAX_BATCH:
                    raise MalformedRequest("validation-failed", f"a batch holds 1 to {MAX_BATCH} operations")
                requests = [self.request(p) for p in payload]  # all well-formed, or the whole batch is a 400
            else:
                requests = [self.request(payload)]
        except MalformedRequest as error:  # in GraphQL's shape, which GraphQL clients read
            return error.answer()
        if isinstance(payload, list):
            answers = [(await self.answer(*r)).body for r in requests]
            return Answer(200, JSON, b"[" + b",".join(answers) + b"]")
        return await self.answer(*requests[0])

    async def answer(self, document_text: str, operation_name: str | None, variables: dict[str, Any]) -> Answer:
        try:
            return await self.run(document_text, operation_name, variables)
        except GraphQLError as error:
            return Answer(200, JSON, error_body([problem(error.code, error.message, error.path)]))
        except DatabaseUnavailable:  # an outage is the HTTP answer's (503 with Retry-After), not an error of the query
            raise
        except BackSaasError as error:  # the engine's errors (authorization, validation), in GraphQL's shape
            if error.status == 403:  # a denial is audited as REST's are, though GraphQL answers it with a 200
                await audit.denied(self.db, self.runtime.tenant_id, error.message, audit.REQUEST.get() or {})
            code = ENGINE_CODES.get(error.code, error.code)
            details = [{"field": p.path, "message": p.message} for p in error.details]
            body = problem(code, error.message)
            if details:
                body["extensions"]["details"] = details
            return Answer(200, JSON, error_body([body]))

    @staticmethod
    def payload(method: str, query: Mapping[str, str], body: bytes) -> Any:
        """The request's JSON: from the query string of a GET, the body of a POST."""
        if method == "GET":
            payload: Any = dict(query)
            if "variables" in payload:
                try:
                    payload["variables"] = orjson.loads(payload["variables"])
                except orjson.JSONDecodeError as exc:
                    raise MalformedRequest("invalid-json", f"variables is not JSON: {exc}", "$.variables") from exc
            return payload
        try:
            return orjson.loads(body or b"null")
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest("invalid-json", f"the body is not valid JSON: {exc}") from exc

    @staticmethod
    def request(payload: Any) -> tuple[str, str | None, dict[str, Any]]:
        """(document, operation name, variables) of one operation's JSON object."""
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise MalformedRequest("parse-failed", 'expected a JSON object with a `query` string: {"query": "{ post { id } }"}')
        variables = payload.get("variables") or {}
        if not isinstance(variables, dict):
            raise MalformedRequest("parse-failed", "`variables` must be an object", "$.variables")
        name = payload.get("operationName")
        return payload["query"], name if isinstance(name, str) else None, variables

    def document(self, text: str, schema: GraphQLSchema) -> Document:
        """The document of `text`, parsed and validated once per (roles, plan limits, text); an invalid one's
        error is kept too (parsing and validating cost a few ms: a client repeating a broken query in a loop
        would spend them at every request)."""
        digest = hashlib.sha256(text.encode()).digest()
        key = ("graphql-document", self.caller.roles, self.limits, digest)
        found = self.runtime.statements.get(key)
        if found is None:
            found = self.remember(key, self.parsed(text, schema, digest))
        if isinstance(found, tuple):  # a document refused is refused again without parsing it again
            raise GraphQLError(*found)
        return found

    def parsed(self, text: str, schema: GraphQLSchema, digest: bytes) -> Document | tuple[str, str]:
        """The document parsed and validated, or (code, message) of the first error found."""
        try:
            node = parse(text)
        except CoreError as error:
            return "parse-failed", error.message
        nul = NulStrings()
        if "\\u" in text:  # a NUL is written \u0000 (variables' are refused with the body: gateway/bodies.py)
            visit(node, nul)
        if nul.found:
            return "validation-failed", "a string of the document holds a NUL character, which no value may hold"
        errors = validate(schema, node, rules=None) + validate(schema, node, [plan_limits(*self.limits)])
        if errors:
            first = errors[0]
            return (first.extensions or {}).get("code", "validation-failed"), first.message
        fragments = {d.name.value: d for d in node.definitions if isinstance(d, ast.FragmentDefinitionNode)}
        return Document(node, fragments, digest)

    def coerce(self, schema: GraphQLSchema, document: Document, operation: ast.OperationDefinitionNode,
               variables: dict[str, Any]) -> dict[str, Any]:
        """The request's variables coerced to the operation's types, resolved once per document and operation."""
        key = ("graphql-variables", self.caller.roles, document.digest, operation.name.value if operation.name else None)
        declared = self.runtime.statements.get(key)
        if declared is None:
            found = signatures(schema, operation)
            declared = self.remember(key, found if found is not None else False)  # False: graphql-core's alone
        return coerce_variables(schema, operation, variables, declared if declared is not False else None)

    @staticmethod
    def operation(document: Document, name: str | None) -> ast.OperationDefinitionNode:
        operations = [d for d in document.node.definitions if isinstance(d, ast.OperationDefinitionNode)]
        if name is not None:
            operations = [o for o in operations if o.name and o.name.value == name]
        if len(operations) != 1:
            raise GraphQLError("validation-failed", "name the operation to run (operationName)" if name is None
                               else f"no operation named '{name}'")
        return operations[0]

    async def run(self, text: str, operation_name: str | None, variables: dict[str, Any]) -> Answer:
        schema = self.schema()
        document = self.document(text, schema)
        operation = self.operation(document, operation_name)
        if operation.operation == ast.OperationType.SUBSCRIPTION:  # gateway/graphql_ws.py streams them
            raise GraphQLError("unexpected-payload", "subscriptions are not supported over HTTP, use websockets instead")
        coerced = self.coerce(schema, document, operation, variables)
        roots = [s for s in operation.selection_set.selections if isinstance(s, ast.FieldNode)]
        introspects = any(f.name.value in ("__schema", "__type") for f in roots)
        if introspects or (roots and all(f.name.value in INTROSPECTION for f in roots)):
            # what it answers depends on the schema (the roles), the document and the variables only
            key = ("graphql-introspection", self.caller.roles, document.digest, operation_name,
                   orjson.dumps(variables, option=orjson.OPT_SORT_KEYS))
            found = self.runtime.statements.get(key)
            if found is None:
                result = execute(schema, document.node, variable_values=variables, operation_name=operation_name)
                errors = [problem("validation-failed", e.message) for e in result.errors or ()]
                found = self.remember(key, orjson.dumps({"data": result.data, **({"errors": errors} if errors else {})}))
            return Answer(200, JSON, found)
        if operation.operation == ast.OperationType.MUTATION:
            if self.method != "POST":  # GraphQL over HTTP: a GET is safe, it never writes (a link can be a GET)
                return Answer(405, [*JSON, ("Allow", "POST")],
                              error_body([problem("validation-failed", "a mutation is sent with POST, not GET")]))
            runner = MutationRunner(self, schema, document, operation.name.value if operation.name else None, coerced)
            known = self.known_insert(runner, operation)
            objects = known.objects_of(coerced) if known is not None else None
            if known is not None and runner.flat(known.entity, objects):
                self.bounds.check_items(len(objects), "objects")
                data = await runner.run_one(known.field, known.entity, objects, known.on_conflict, known.one,
                                            known.shape)
                return Answer(200, JSON, b'{"data":' + data + b"}")
            compiler = self.compiler(schema, document, coerced)  # the rows it writes, counted before any work
            fields = compiler.fields(operation.selection_set)
            self.bounds.check_items(mutation_items(fields, coerced, compiler.relations), "objects")
            data = await runner.execute(fields)
            return Answer(200, JSON, b'{"data":' + data + b"}")
        compiled = self.compiled(schema, document, operation, coerced)
        return Answer(200, JSON, b'{"data":' + (await self.execute(compiled, coerced)).encode() + b"}")

    def known_insert(self, runner: MutationRunner, operation: ast.OperationDefinitionNode) -> KnownInsert | None:
        """The operation as a `KnownInsert`, when it is one: an operation whose one root field (no fragment,
        no directive) is an `insert_*`; then per its variables but the objects, as `single_insert` finds it."""
        name = operation.name.value if operation.name else None
        base = ("graphql-insert-of", self.caller.roles, self.caller.user_id is not None, runner.document.digest,
                name, self.bounds)
        variable = self.runtime.statements.get(base)  # the objects' variable; "" in the document; False: no insert
        if variable is None:
            roots = operation.selection_set.selections
            alone = len(roots) == 1 and isinstance(roots[0], ast.FieldNode) and not roots[0].directives \
                and roots[0].name.value.startswith("insert_")
            variable = self.remember(base, (objects_variable(roots[0]) or "") if alone else False)
        if variable is False:
            return None
        others = orjson.dumps({k: v for k, v in runner.variables.items() if k != variable}, option=orjson.OPT_SORT_KEYS)
        known = self.runtime.statements.get((base, others))
        if known is None:
            field = self.compiler(runner.schema, runner.document, runner.variables).fields(operation.selection_set)[0]
            single = runner.single_insert([field])
            known = self.remember((base, others), False if single is None else KnownInsert(
                field, *single, variable or None, runner.insert_shape(field, single[2])))
        return known or None

    async def execute(self, compiled: CompiledQuery, variables: Mapping[str, Any]) -> str:
        """The `data` of a compiled query for these variables: one statement, its text as is."""
        values = compiled.build(variables, self.caller.user_id)
        arguments = [values[s] if s is not None else c for s, c in zip(compiled.slots, compiled.constants, strict=True)]
        return await self.fetch(compiled.sql, arguments)

    def is_subscription(self, text: str, operation_name: str | None) -> bool:
        """Whether the document's operation is a subscription (errors raise `GraphQLError`)."""
        return self.operation(self.document(text, self.schema()), operation_name).operation \
            == ast.OperationType.SUBSCRIPTION

    def subscription(self, text: str, operation_name: str | None, variables: dict[str, Any]) -> Subscription:
        """A `subscription` document compiled like the query it mirrors (errors raise `GraphQLError`)."""
        schema = self.schema()
        document = self.document(text, schema)
        operation = self.operation(document, operation_name)
        if operation.operation != ast.OperationType.SUBSCRIPTION:
            raise GraphQLError("validation-failed", "not a subscription: run it with `answer`")
        coerced = self.coerce(schema, document, operation, variables)
        compiled = self.compiled(schema, document, operation, coerced)
        tables = frozenset(f"{self.runtime.pg_schema}.{e}" for e in compiled.entities)
        fields = self.compiler(schema, document, coerced).fields(operation.selection_set)
        streamed = [f for f in fields if self.streams(f.name.value)]
        if not streamed:
            return Subscription(compiled, coerced, tables)
        if len(fields) != 1:
            raise GraphQLError("validation-failed", "a streaming subscription has exactly one root field")
        field = streamed[0]
        arguments = {a.name.value: value_from_ast_untyped(a.value, coerced) for a in field.arguments or ()}
        stream = stream_request(arguments)  # a batch holds at most the plan's max_rows, as any list (the statement's)
        stream = dataclasses.replace(stream, batch_size=min(stream.batch_size, self.bounds.max_rows))
        return Subscription(compiled, coerced, tables, ((field.alias or field.name).value, stream))

    def streams(self, name: str) -> bool:
        """Whether root field `name` is an entity's streaming subscription (`{entity}_stream`), not an entity
        of that name (which the schema then gives the field to)."""
        return name.endswith("_stream") and name not in self.runtime.columns and name[:-7] in self.runtime.columns

    def relations(self) -> Mapping[str, Mapping[str, Relation]]:
        """The relations GraphQL names (entity -> field -> relation), made once per runtime."""
        relations = self.runtime.statements.get("graphql-relations")
        if relations is None:
            relations = self.runtime.statements["graphql-relations"] = graph_relations(self.runtime.model)
        return relations

    def compiler(self, schema: GraphQLSchema, document: Document, variables: Mapping[str, Any]) -> QueryCompiler:
        return QueryCompiler(schema, self.relations(), self.runtime.columns, document.fragments, Values(variables),
                             self.permissions)

    def compiled(self, schema: GraphQLSchema, document: Document, operation: ast.OperationDefinitionNode,
                 variables: Mapping[str, Any]) -> CompiledQuery:
        """The operation's statement: by (roles, signed in or not, document, operation), then by its shaping
        variables."""
        name = operation.name.value if operation.name else None
        signed_in = self.caller.user_id is not None  # the user id itself is a parameter, not part of the statement
        base = ("graphql-op", self.caller.roles, signed_in, document.digest, name, self.bounds)
        shape_names = self.runtime.statements.get(base)
        if shape_names is not None:
            key = (base, tuple((n, orjson.dumps(variables.get(n), option=orjson.OPT_SORT_KEYS)) for n in shape_names))
            found = self.runtime.statements.get(key)
            if found is not None:
                return found
        compiler = self.compiler(schema, document, variables)
        builder = StatementBuilder(self.runtime.tables)
        parts: list[Any] = []
        budget = RowBudget(self.bounds)  # the estimated rows of every root field together
        for field in compiler.fields(operation.selection_set):
            alias = field.alias.value if field.alias else field.name.value
            parts += [sa.literal_column(f"'{alias}'"), self.root(compiler, builder, field, budget)]
        statement = sa.select(json_object_text(parts))
        rendered = compile_statement(statement)
        compiled = CompiledQuery(rendered.sql, rendered.slots, rendered.constants, compiler.values.builder(),
                                 frozenset(compiler.entities))
        shape = tuple(sorted(compiler.values.shape))
        self.remember(base, shape)
        key = (base, tuple((n, orjson.dumps(variables.get(n), option=orjson.OPT_SORT_KEYS)) for n in shape))
        return self.remember(key, compiled)

    def root(self, compiler: QueryCompiler, builder: StatementBuilder, field: ast.FieldNode, budget: RowBudget) -> Any:
        name = field.name.value
        alias = field.alias.value if field.alias else name
        if name == "__typename":
            return sa.literal_column("'query_root'")
        if name in self.runtime.columns:
            rows = builder.rows(budget.admit(compiler.plan(name, field), field=alias)).subquery()
            return sa.select(sa.func.coalesce(sa.func.json_agg(rows.table_valued()), EMPTY_ARRAY)).scalar_subquery()
        if name.endswith("_by_pk") and name[:-6] in self.runtime.columns:
            plan = budget.admit(compiler.plan(name[:-6], field, by_pk=True), single=True, field=alias)
            rows = builder.rows(plan).subquery()
            return sa.select(sa.func.to_json(rows.table_valued())).scalar_subquery()
        if self.streams(name):
            rows = builder.rows(budget.admit(compiler.stream(name[:-7], field), field=alias)).subquery()
            return sa.select(sa.func.coalesce(sa.func.json_agg(rows.table_valued()), EMPTY_ARRAY)).scalar_subquery()
        if name.endswith("_aggregate") and name[:-10] in self.runtime.columns:
            return builder.aggregate(budget.admit_aggregate(compiler.aggregate(alias, None, name[:-10], field), alias))
        raise GraphQLError("validation-failed", f"no field '{name}' on query_root")

    async def fetch(self, sql: str, arguments: list[Any]) -> str:
        try:
            async with self.db.as_role(self.runtime.role) as conn:
                return await conn.fetchval(sql, *arguments)
        except asyncpg.PostgresError as exc:
            raise as_graphql_error(exc) from exc
