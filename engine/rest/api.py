"""One REST request against one tenant: GET/HEAD, POST, PATCH, DELETE on `/rest/v1/{entity}`.

Thin on purpose: parse the dialect (`params`, `prefer`), authorize, plan, take the statement for that
plan's shape from the runtime's cache (compiled on first use), run it in one transaction as the tenant's
role, and shape the response. Reads and writes alike are ONE statement whose result is the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson

from engine import metering, quotas
from engine.answer import Answer
from engine.authz import Caller, guard_user_fields
from engine.authz.permissions import Permissions
from engine.database import Database
from engine.errors import (
    BackSaasError,
    Forbidden,
    InvalidBody,
    Problem,
    QueryParseError,
    SchemaNotExposed,
    UnfilteredWrite,
    UnknownColumn,
    UnknownEntity,
    ValidationFailed,
    database_error_of,
)
from engine.limits import Bounds, RowBudget, validate_sized
from engine.query.plan import ReadPlan, Reference, Upsert
from engine.query.sql import CompiledRead, read_statement, rest_delete, rest_insert, rest_update
from engine.rest import rpc
from engine.rest.media import (
    CONTENT_TYPES,
    CSV,
    NULLS_STRIPPED,
    OBJECT,
    MediaNotAvailable,
    Prefer,
    cast_strings,
    negotiate,
    not_one,
    parse_body,
    parse_range,
    read_range,
    typed,
    without_nulls,
)
from engine.rest.params import ReadParser, has_root_filters, is_root_filter, shaping, unquote
from engine.rest.shapes import Shape, filled, placed, shape_of
from engine.runtime import TenantRuntime
from engine.schema.model import OWNER_COLUMN, Entity
from engine.validation import READ_ONLY
from engine.writes import HookedWriter, upsert_hooks


class PutFilters(BackSaasError):
    """PostgREST's PGRST105: a PUT names its row by the primary key, `eq`, and nothing else."""

    code = "PGRST105"
    status = 405


class PutMismatch(BackSaasError):
    """PostgREST's PGRST115: a PUT's body is another row than its URL names."""

    code = "PGRST115"
    status = 400


PREPARED_CACHE_SIZE = 2048  # prepared requests kept per runtime, by exact request
EXPOSED_PROFILES = ("public", "")

WRITE_ACTIONS = {"POST": "create", "PUT": "create", "PATCH": "update"}  # and DELETE: "delete"

class RestApi:
    """The REST dialect over one tenant runtime (stateless but for the runtime's statement cache)."""

    def __init__(self, runtime: TenantRuntime, db: Database, caller: Caller,
                 conn: asyncpg.Connection | None = None, limits: Mapping[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.db = db
        self.caller = caller
        self.conn = conn  # a hook's or function's transaction to run in, instead of a pooled connection
        self.bounds = Bounds.of_plan(limits)  # the tenant's plan's limits (engine.limits)
        self.who = (caller.roles, caller.user_id, self.bounds)  # what a prepared request depends on (not the session)

    @cached_property
    def permissions(self) -> Permissions:
        """The caller's permissions, made when a plan is (a prepared request repeated needs none)."""
        return Permissions(self.runtime.authorizer, self.caller, self.runtime.columns)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection statements run on, acting as the tenant's role; errors become the catalogue's."""
        try:
            if self.conn is not None:
                yield self.conn
            else:
                async with self.db.as_role(self.runtime.role) as conn:
                    yield conn
        except asyncpg.PostgresError as exc:
            raise database_error_of(exc) from exc

    async def handle(self, method: str, entity_name: str, query: bytes, headers: Mapping[str, str],
                     body: bytes) -> Answer:
        """Answer one request; `query` is the raw query string (parsed only when no cached read has it).
        `Accept: ...;nulls=stripped` (supabase-js's `stripNulls()`) leaves the null fields out of the answer."""
        answer = await self.answer(method, entity_name, query, headers, body)
        if NULLS_STRIPPED in headers.get("accept", ""):
            return without_nulls(answer)
        return answer

    async def answer(self, method: str, entity_name: str, query: bytes, headers: Mapping[str, str],
                     body: bytes) -> Answer:
        profile = headers.get("accept-profile" if method in ("GET", "HEAD") else "content-profile", "")
        if profile not in EXPOSED_PROFILES:
            raise SchemaNotExposed(f"schema '{profile}' is not exposed", hint="use the profile 'public' or none")
        if entity_name.startswith("rpc/"):  # PostgREST's RPC: the tenant's exposed functions (engine/rest/rpc.py)
            if method == "OPTIONS":
                return Answer(200, [("Allow", rpc.allowed(self.runtime, entity_name[4:]))], b"")
            return await rpc.call(self, entity_name[4:], method, query, headers, body)
        entity = self.runtime.model.entity(entity_name)
        if entity is None:
            raise UnknownEntity(f"relation '{entity_name}' does not exist",
                                hint=f"entities: {', '.join(e.name for e in self.runtime.model.entities)}")
        if method == "OPTIONS":  # PostgREST's answer to an OPTIONS that is no CORS preflight (gateway/cors.py's)
            return Answer(200, [("Allow", "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE")], b"")
        if method in ("GET", "HEAD"):
            return await self.read(entity, query, headers, head=method == "HEAD")
        # a write the caller may not make is refused before its body or filters are read: a refused caller
        # learns nothing of the fields' rules or names (the planner asks Casbin the same, memoized, question)
        self.permissions.of(entity.name, WRITE_ACTIONS.get(method, "delete"))
        params = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
        if method == "POST":
            return await self.insert(entity, params, headers, body)
        if method == "PUT":
            return await self.put(entity, params, headers, body)
        if method == "PATCH":
            return await self.update(entity, query, params, headers, body)
        return await self.delete(entity, query, params, headers)

    # -- planning --

    def parser(self) -> ReadParser:
        return ReadParser(self.runtime.model, self.runtime.relations, self.permissions, self.caller.user_id,
                          self.bounds)

    def plan(self, entity: Entity, action: str, params: Sequence[tuple[str, str]]) -> tuple[ReadPlan, list[Any]]:
        """The plan of the request, every level of it authorized for this caller (row scopes included)."""
        parser = self.parser()
        return parser.parse(entity.name, params, action), parser.values

    def write_plan(self, entity: Entity, action: str, params: list[tuple[str, str]], keys: tuple[str, ...] = ()
                   ) -> tuple[ReadPlan, ReadPlan, list[Any], tuple[Reference, ...]]:
        """(the rows the write reaches, what it shows of the rows it wrote: under the read scope, values, the
        references setting `keys` makes: each must name a row the caller may read)."""
        parser = self.parser()
        plan = parser.parse(entity.name, params, action)
        references = self.permissions.references(entity.name, parser.relations[entity.name], keys, parser.caller_param)
        return plan, parser.returned(plan), parser.values, references

    def prepared(self, key: Any, prepare: Any, *args: Any) -> Any:
        """What a request needs before the database (plan, values, statement) is a pure function of the
        request, so the runtime keeps it, bounded, for requests that repeat (one dict lookup; `prepare(*args)`
        only when it is not kept, so a repeated request builds no closure either)."""
        found = self.runtime.prepared.get(key)
        if found is None:
            found = prepare(*args)
            if len(self.runtime.prepared) >= PREPARED_CACHE_SIZE:
                del self.runtime.prepared[next(iter(self.runtime.prepared))]
            self.runtime.prepared[key] = found
        return found

    def prepared_request(self, key: tuple[Any, ...], prepare: Callable[..., tuple[Any, ...]], *args: Any
                         ) -> Any:
        """What `prepare(query, *args)` makes of a request (plan, values, ...: its values second), kept by the
        request's exact text (`key`, whose third item is the query string), a repeated request being one dict
        lookup. A request not seen before is made from its shape when it has one that can be kept
        (engine/rest/shapes.py: its query with its plain comparisons' operands taken out), else from its
        text; a request differing from one seen before only in those operands is not parsed again."""
        return self.prepared(key, self.prepare_request, key, prepare, args)

    def prepare_request(self, key: tuple[Any, ...], prepare: Callable[..., tuple[Any, ...]], args: tuple[Any, ...]
                        ) -> tuple[Any, ...]:
        shape = shape_of(key[2].decode("utf-8", "replace"))
        if shape is not None:
            kept = self.prepared(("shape", *key[:2], shape.query, *key[3:]), self.prepare_shape, shape, prepare, args)
            if kept is not False:
                made, positions = kept
                return (made[0], filled(made[1], positions, shape.operands), *made[2:])
        return prepare(key[2], *args)

    @staticmethod
    def prepare_shape(shape: Shape, prepare: Callable[..., tuple[Any, ...]], args: tuple[Any, ...]) -> Any:
        """(what `prepare` makes of the shape, where its operands go in the values); False when the operands
        do not reach the values as written (each request is then made from its own text)."""
        try:
            made = prepare(shape.query.encode(), *args)
        except BackSaasError:  # the request's own preparation words the error, with its own values
            return False
        positions = placed(shape, (made[0], *made[2:]), made[1])
        return False if positions is None else (made, positions)

    def statement(self, key: Any, build: Any) -> CompiledRead:
        return self.runtime.statement(key, build)

    async def run(self, compiled: CompiledRead, values: list[Any], *, many: bool = False,
                  single: bool = False, expect: int | None = None, bounded: str | None = None) -> Any:
        """Execute one statement as the tenant's role: its one row, or all its rows with `many`.

        `single` (a write whose client asked for exactly one object, `Accept: application/vnd.pgrst.object+json`,
        whatever its `return=`) wraps it in a transaction that is rolled back unless exactly one row was
        written (and, with a body, shown), as PostgREST does: a 406 never leaves a change.
        `expect` (an upsert's row count) rolls it back unless every row sent was written: a conflicting
        row outside the caller's update scope is left alone by the statement, and refused here (403).
        `bounded` (an update's or a delete's action) refuses the write its statement left undone for
        reaching more than the plan's `max_write_rows` (400 `too_many_rows`)."""
        try:  # `connection()` inlined: this is every one-statement request's path
            if self.conn is not None:
                return await self.run_on(self.conn, compiled, values, many, single, expect, bounded)
            async with self.db.as_role(self.runtime.role) as conn:
                return await self.run_on(conn, compiled, values, many, single, expect, bounded)
        except asyncpg.PostgresError as exc:
            raise database_error_of(exc) from exc

    async def run_on(self, conn: asyncpg.Connection, compiled: CompiledRead, values: list[Any], many: bool,
                     single: bool, expect: int | None, bounded: str | None) -> Any:
        fetch = conn.fetch if many else conn.fetchrow
        if not single and expect is None:
            row = await fetch(compiled.sql, *compiled.arguments(values))
            if bounded is not None:
                self.bounds.check_reached(row["reached"], bounded)
            return row
        async with conn.transaction():
            row = await fetch(compiled.sql, *compiled.arguments(values))
            if bounded is not None:
                self.bounds.check_reached(row["reached"], bounded)
            if single:
                written = len(row) if many else row["written"] if row["written"] is not None else row["page_rows"]
                if written != 1 or (not many and row["page_rows"] != 1):
                    raise not_one(written if written != 1 else row["page_rows"])
            if expect is not None and (len(row) if many else row["written"]) != expect:
                raise Forbidden("a row this upsert conflicts with is outside what the caller may update; "
                                "nothing was changed")
            return row

    # -- reads --

    async def read(self, entity: Entity, query: bytes, headers: Mapping[str, str], *, head: bool) -> Answer:
        media = negotiate(headers.get("accept", ""))
        key = ("read", entity.name, query, headers.get("range"), headers.get("prefer"), media == CSV, self.who)
        plan, values, compiled, prefer = self.prepared_request(key, self.prepare_read, entity, headers, media)
        row = await self.run(compiled, values)
        return self.respond_read(row, plan, media, prefer, head=head)

    def prepare_read(self, query: bytes, entity: Entity, headers: Mapping[str, str], media: str
                     ) -> tuple[ReadPlan, list[Any], CompiledRead, Prefer]:
        limit, offset = parse_range(headers.get("range"))
        plan, values = self.plan(entity, "read", parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True))
        if limit is not None or offset is not None:  # the Range header wins over limit= and offset=
            plan = RowBudget(self.bounds).admit(replace(plan, limit=limit, offset=offset))
        prefer = Prefer.parse(headers.get("prefer", ""))
        csv = media == CSV
        compiled = self.statement(("read", plan, prefer.counted, csv),
                                  lambda: read_statement(plan, self.runtime.tables, prefer.counted, csv=csv))
        return plan, values, compiled, prefer

    def respond_read(self, row: asyncpg.Record, plan: ReadPlan, media: str, prefer: Prefer, *,
                     head: bool = False) -> Answer:
        """PostgREST's read answer: 200, or 206 when a counted read sends part of the rows, 416 with
        `Content-Range: */N` past the end; `Content-Range: first-last/total` (`*` when not counted)."""
        rows: int = row["page_rows"]
        ranged = read_range(rows, row["total"] if prefer.counted else None, plan.offset or 0, prefer.applied(write=False))
        if isinstance(ranged, Answer):
            return ranged
        return self.shaped(*ranged, row["body"], rows, media, head=head)

    @staticmethod
    def shaped(status: int, response_headers: list[tuple[str, str]], body: str, rows: int, media: str, *,
               head: bool = False) -> Answer:
        """The body as the client accepted it: the array, its one object (406 unless exactly one), or CSV."""
        if media == OBJECT:
            if rows != 1:
                raise not_one(rows)
            body = body[1:-1]
        return Answer(status, [*response_headers, ("Content-Type", CONTENT_TYPES[media])], b"" if head else body.encode())

    def respond_write(self, action: str, media: str, prefer: Prefer, *, written: int, row: asyncpg.Record | None,
                      status: int = 201, location: str | None = None, upsert: bool = False) -> Answer:
        """PostgREST's write answer: `Content-Range` `*/*` (`*/N` counted) for POST and DELETE,
        `0-(N-1)/*` for PATCH; the body with `return=representation` (201 or 200), else 201 or 204;
        `Location` with `return=headers-only`; `Preference-Applied` for what was honoured."""
        total = str(written) if prefer.counted else "*"
        span = f"0-{written - 1}" if action == "update" and written else "*"
        response_headers = [("Content-Range", f"{span}/{total}"),
                            *prefer.applied(write=True, resolution=upsert, missing=action == "create")]
        if location is not None and prefer.returns("headers-only"):
            response_headers.append(("Location", location))
        if row is not None and prefer.returns("representation"):
            if action != "create":
                status = 200
            return self.shaped(status, response_headers, row["body"], row["page_rows"], media)
        return Answer(status if action == "create" else 204, response_headers, b"")

    # -- writes --

    def body(self, entity: Entity, headers: Mapping[str, str], body: bytes) -> Any:
        """The body as JSON values: CSV lines and form fields typed by their columns, and in JSON the
        strings sent for numbers, booleans, arrays and dates cast as PostgreSQL casts them."""
        payload, textual = parse_body(headers.get("content-type", ""), body)
        objects = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(o, dict) for o in objects):
            return payload  # refused by the write with its own message
        columns = self.runtime.columns[entity.name]
        objects = typed(objects, dict(columns)) if textual else cast_strings(objects, columns)
        return objects if isinstance(payload, list) else objects[0]

    def write_media(self, headers: Mapping[str, str]) -> str:
        media = negotiate(headers.get("accept", ""))
        if media == CSV and Prefer.parse(headers.get("prefer", "")).returns("representation"):
            raise MediaNotAvailable("text/csv is sent for reads; a write's representation is JSON",
                                    hint="Accept: application/json")
        return media

    def validate(self, entity: Entity, payload: Any, *, partial: bool) -> None:
        guard_user_fields(entity.name, self.caller, payload if isinstance(payload, list) else [payload],
                          self.runtime.model)
        validator = self.runtime.body_validator(entity, partial=partial)
        if isinstance(payload, list):
            problems = [p for i, item in enumerate(payload) for p in validator.problems(item, f"[{i}].")]
        else:
            problems = validator.problems(payload)
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid field(s) in the body", details=problems)

    async def put(self, entity: Entity, params: list[tuple[str, str]], headers: Mapping[str, str],
                  body: bytes) -> Answer:
        """PostgREST's PUT: the one row `?id=eq.X` names, as the body gives it whole (its `id` the same),
        created or replaced: an upsert on the id (`insert`'s: the caller's create permission, and its update
        scope over a row that exists). 200 with `return=representation`, else 204."""
        filters = [(k, v) for k, v in params if is_root_filter(k)]
        if len(filters) != 1 or filters[0][0] != "id" or not filters[0][1].startswith("eq."):
            raise PutFilters("Filters must include all and only primary key columns with 'eq' operators",
                             hint="PUT /entity?id=eq.<id> with the whole row as the body")
        payload = self.body(entity, headers, body)
        if not isinstance(payload, dict) or str(payload.get("id")).lower() != unquote(filters[0][1][3:]).lower():
            raise PutMismatch("Payload values do not match URL in primary key column(s)",
                              details=[Problem("id", "the body's id must be the one the URL names")])
        prefer = ", ".join(p for p in (headers.get("prefer"), "resolution=merge-duplicates") if p)
        answer = await self.insert(entity, [*params, ("on_conflict", "id")], {**headers, "prefer": prefer},
                                   orjson.dumps(payload))
        kept = [(name, value) for name, value in answer.headers if name not in ("Location", "Preference-Applied")]
        return Answer(200 if answer.body else 204, kept, answer.body)

    async def insert(self, entity: Entity, params: list[tuple[str, str]], headers: Mapping[str, str],
                     body: bytes) -> Answer:
        media = self.write_media(headers)
        payload = self.body(entity, headers, body)
        objects = payload if isinstance(payload, list) else [payload]
        self.bounds.check_items(len(objects), "body")  # before any work per item
        if not objects or not all(isinstance(o, dict) for o in objects):
            raise InvalidBody("expected a JSON object or a non-empty array of objects")
        named = dict(params) if params else {}
        columns_param = named.get("columns")
        keys = tuple(unquote(c.strip()) for c in columns_param.split(",")) if columns_param else tuple(objects[0])
        if columns_param:  # as PostgREST: only the listed keys are read from each object, the others ignored
            if len(set(keys)) != len(keys) or not all(keys):
                raise QueryParseError(f"columns={columns_param}: each column once, none empty",
                                      details=[Problem("columns", "a column listed twice or an empty name")])
            fixed = [k for k in keys if k in READ_ONLY and k != "id"]  # body keys are checked by the validator
            if fixed:
                raise ValidationFailed("read-only fields cannot be written",
                                       details=[Problem(k, "is read-only") for k in fixed])
            visible = self.runtime.columns[entity.name]
            for column in keys:
                if column not in visible:
                    raise UnknownColumn(f"column '{column}' of '{entity.name}' does not exist")
            objects = [{k: o[k] for k in keys if k in o} for o in objects]
        elif any(set(o) != set(keys) for o in objects):
            raise InvalidBody("All object keys must match", hint="or list the columns in columns=")
        await validate_sized(len(objects), lambda: self.validate(entity, objects if isinstance(payload, list)
                                                                 else objects[0], partial=False))
        prefer = Prefer.parse(prefer_text := headers.get("prefer", ""))
        if named.get("on_conflict") or prefer.resolution:
            refusal = upsert_hooks(self.runtime, entity.name, prefer.resolution == "merge-duplicates")
            if refusal is not None:
                raise InvalidBody(f"upserts are not supported here: {refusal}", hint="insert, or update the existing row")
        if self.runtime.hooks(entity.name, "create"):
            return await self.hooked_insert(entity, objects, params, headers, media,
                                            single_object=not isinstance(payload, list))
        if entity.owner and self.caller.user_id is not None:  # set from the caller, never from the body
            objects = [{**o, OWNER_COLUMN: self.caller.user_id} for o in objects]
            keys = (*keys, OWNER_COLUMN)
        on_conflict = named.get("on_conflict")
        conflict = tuple(unquote(c.strip()) for c in on_conflict.split(",") if c.strip()) if on_conflict else ()
        visible = self.runtime.columns[entity.name]
        for column in (*keys, *conflict):
            if column not in visible:
                raise UnknownColumn(f"column '{column}' of '{entity.name}' does not exist")
        representation = prefer.returns("representation")
        defaults = prefer.missing == "default"  # a key an object lacks takes its column's default, not NULL

        def prepare() -> tuple[ReadPlan, list[Any], CompiledRead, Upsert | None]:
            parser = self.parser()
            plan = parser.parse(entity.name, shaping(params), "create")
            upsert = self.upsert(parser, entity, keys, conflict, prefer.resolution)
            references = self.permissions.references(entity.name, parser.relations[entity.name], keys,
                                                     parser.caller_param)
            returned = parser.returned(plan)
            values = parser.values
            compiled = self.statement(
                ("insert", returned, keys, upsert, representation, len(values), defaults, references),
                lambda: rest_insert(self.runtime.tables, returned, keys, upsert, len(values), representation,
                                    defaults=defaults, references=references))
            return returned, values, compiled, upsert

        _, values, compiled, upsert = self.prepared(("insert", entity.name, tuple(params), prefer_text, self.who, keys),
                                                       prepare)  # Prefer is a function of its header's text
        arguments = [*values, orjson.dumps(objects).decode()]
        merge = upsert is not None and bool(upsert.update)
        expect = len(objects) if merge else None
        quotas.guard_write("create")  # a tenant at its rows or storage quota inserts nothing (engine/quotas.py)
        single = media == OBJECT
        row = None
        if representation:
            row = await self.run(compiled, arguments, single=single, expect=expect)
            first_id, written, inserted = row["first_id"], row["written"], row["inserted"]
            metering.wrote(row["written"])
        else:  # the statement returns the new ids alone (no body to build)
            ids = await self.run(compiled, arguments, many=True, single=single, expect=expect)
            # a merge may have updated rows the caller may not read: their ids are not shown
            first_id, written = (ids[0]["id"] if ids and expect is None else None), len(ids)
            inserted = sum(1 for i in ids if i["inserted"])
            metering.wrote(written)
        location = f"/{entity.name}?id=eq.{first_id}" if not isinstance(payload, list) and first_id else None
        status = 200 if merge and inserted == 0 else 201  # PostgREST: an upsert that only updated is 200
        return self.respond_write("create", media, prefer, written=written, row=row, status=status,
                                  location=location, upsert=upsert is not None)

    def upsert(self, parser: ReadParser, entity: Entity, keys: tuple[str, ...], conflict: tuple[str, ...],
               resolution: str | None) -> Upsert | None:
        """`Prefer: resolution=`: ignore-duplicates leaves a conflicting row alone; merge-duplicates is an
        update of it, so it needs the update permission and happens only within the update's row scope,
        and never sets owner_id (the row stays its owner's) nor, but to itself, the id."""
        target = conflict or ("id",)
        if resolution == "ignore-duplicates":
            return Upsert(target, (), None)
        if resolution != "merge-duplicates":
            return None
        scope = self.permissions.scope(entity.name, "update", parser.caller_param)  # a row's id never changes
        update = tuple(k for k in keys if k not in target and k not in (OWNER_COLUMN, "id"))
        # a body of nothing but the conflict's columns sets those to themselves, as PostgREST does: the row met
        # is updated (within the scope) and answered, where DO NOTHING would leave it out of the answer
        return Upsert(target, update or tuple(c for c in target if c != OWNER_COLUMN), scope)

    async def update(self, entity: Entity, query: bytes, params: list[tuple[str, str]], headers: Mapping[str, str],
                     body: bytes) -> Answer:
        if not has_root_filters(params):
            raise UnfilteredWrite("UPDATE requires a WHERE clause", hint="add a filter, e.g. ?id=eq.<id>")
        media = self.write_media(headers)
        payload = self.body(entity, headers, body)
        if not isinstance(payload, dict) or not payload:
            raise InvalidBody("expected a JSON object with the fields to change")
        self.validate(entity, payload, partial=True)
        if self.runtime.hooks(entity.name, "update"):
            return await self.hooked_change(entity, "update", params, headers, payload, media)
        prefer = Prefer.parse(headers.get("prefer", ""))
        keys = tuple(payload)
        _, values, compiled = self.prepared_request(("update", entity.name, query, prefer, self.who, keys),
                                                    self.prepare_write, entity, "update", prefer, keys)
        quotas.guard_write("update")  # a tenant at its storage quota updates nothing (deletes still free space)
        row = await self.run(compiled, [*values, orjson.dumps(payload).decode()], single=media == OBJECT,
                             bounded="update")
        metering.wrote(row["written"])  # an update's or a delete's rows, shown or not
        return self.respond_write("update", media, prefer, written=row["written"], row=row)

    async def delete(self, entity: Entity, query: bytes, params: list[tuple[str, str]], headers: Mapping[str, str]
                     ) -> Answer:
        if not has_root_filters(params):
            raise UnfilteredWrite("DELETE requires a WHERE clause", hint="add a filter, e.g. ?id=eq.<id>")
        media = self.write_media(headers)
        if self.runtime.hooks(entity.name, "delete"):
            return await self.hooked_change(entity, "delete", params, headers, None, media)
        prefer = Prefer.parse(headers.get("prefer", ""))
        _, values, compiled = self.prepared_request(("delete", entity.name, query, prefer, self.who),
                                                    self.prepare_write, entity, "delete", prefer, None)
        row = await self.run(compiled, values, single=media == OBJECT, bounded="delete")
        metering.wrote(row["written"])  # an update's or a delete's rows, shown or not
        return self.respond_write("delete", media, prefer, written=row["written"], row=row)

    def prepare_write(self, query: bytes, entity: Entity, action: str, prefer: Prefer, keys: tuple[str, ...] | None
                      ) -> tuple[ReadPlan, list[Any], CompiledRead]:
        """(what the answer shows, values, statement) of a PATCH setting `keys`, or of a DELETE."""
        params = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
        plan, returned, values, references = self.write_plan(entity, action, params, keys or ())
        representation = prefer.returns("representation")
        at_most = None if plan.names_one_row() else self.bounds.max_write_rows  # one row by its id: no bound
        if keys is None:
            return returned, values, self.statement(("delete", plan, returned, representation, at_most),
                                                    lambda: rest_delete(self.runtime.tables, plan, returned,
                                                                        representation, at_most))
        return returned, values, self.statement(
            ("update", plan, returned, keys, representation, len(values), at_most, references),
            lambda: rest_update(self.runtime.tables, plan, returned, keys, len(values), representation, at_most,
                                references))

    # -- writes to entities with hooks (row by row, in one transaction: engine.writes) --

    async def hooked_insert(self, entity: Entity, objects: list[dict[str, Any]], params: list[tuple[str, str]],
                            headers: Mapping[str, str], media: str, *, single_object: bool) -> Answer:
        prefer = Prefer.parse(headers.get("prefer", ""))
        async with self.connection() as conn, conn.transaction():
            rows = await HookedWriter(self.runtime, self.caller, conn, self.db, self.bounds).insert(
                entity, objects, validated=True)
            ids = [r["id"] for r in rows]
            if media == OBJECT and len(ids) != 1:
                raise not_one(len(ids))
            location = f"/{entity.name}?id=eq.{ids[0]}" if single_object and ids else None
            shown = await self.rows_by_id(conn, entity, "create", shaping(params), ids, media) \
                if prefer.returns("representation") else None
            return self.respond_write("create", media, prefer, written=len(ids), row=shown, location=location)

    async def hooked_change(self, entity: Entity, action: str, params: list[tuple[str, str]],
                            headers: Mapping[str, str], patch: dict[str, Any] | None, media: str) -> Answer:
        plan, values = self.plan(entity, action, params)
        if plan.limit is not None or plan.offset is not None:
            raise QueryParseError(f"limit and offset on a {action} of '{entity.name}' are not supported: it has hooks",
                                  hint="filter the rows to change instead")
        select = shaping(params)
        prefer = Prefer.parse(headers.get("prefer", ""))
        representation = prefer.returns("representation")
        async with self.connection() as conn, conn.transaction():
            writer = HookedWriter(self.runtime, self.caller, conn, self.db, self.bounds)
            olds = await writer.lock(entity, plan.reach(), values, action)
            ids = [o["id"] for o in olds]
            if media == OBJECT and len(ids) != 1:
                raise not_one(len(ids))
            shown = None
            if representation and action == "delete":  # the body is read before the rows go
                shown = await self.rows_by_id(conn, entity, action, select, ids, media)
            if action == "delete":
                await writer.delete(entity, olds)
            else:
                await writer.update(entity, olds, patch or {})
            if representation and shown is None:
                shown = await self.rows_by_id(conn, entity, action, select, ids, media)
            return self.respond_write(action, media, prefer, written=len(ids), row=shown)

    async def rows_by_id(self, conn: asyncpg.Connection, entity: Entity, action: str, select: list[tuple[str, str]],
                         ids: list[str], media: str) -> asyncpg.Record:
        """The written rows as the request shapes them, under the read scope (one object or 406, when asked for)."""
        parser = self.parser()
        plan = parser.only(parser.returned(parser.parse(entity.name, select, action)), ids)
        values = parser.values
        compiled = self.statement(("by-id", plan), lambda: read_statement(plan, self.runtime.tables, False))
        row = await conn.fetchrow(compiled.sql, *compiled.arguments(values))
        if media == OBJECT and row["page_rows"] != 1:
            raise not_one(row["page_rows"])
        return row
