"""One REST request against one tenant: GET/HEAD, POST, PATCH, DELETE on `/rest/v1/{entity}`.

Thin on purpose: parse the dialect (`params`, `prefer`), authorize, plan, take the statement for that
plan's shape from the runtime's cache (compiled on first use), run it in one transaction as the tenant's
role, and shape the response. Reads and writes alike are ONE statement whose result is the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
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
    Forbidden,
    InvalidBody,
    NotAcceptable,
    Problem,
    QueryParseError,
    RangeNotSatisfiable,
    SchemaNotExposed,
    UnfilteredWrite,
    UnknownColumn,
    UnknownEntity,
    ValidationFailed,
    database_error_of,
)
from engine.limits import Bounds, RowBudget, validate_sized
from engine.query.plan import ReadPlan, Upsert
from engine.query.sql import CompiledRead, read_statement, rest_delete, rest_insert, rest_update
from engine.rest.params import ReadParser, has_root_filters, shaping, unquote
from engine.runtime import TenantRuntime
from engine.schema.model import OWNER_COLUMN, Entity
from engine.validation import READ_ONLY
from engine.writes import HookedWriter

OBJECT_MEDIA = "application/vnd.pgrst.object+json"
PREPARED_CACHE_SIZE = 2048  # prepared requests kept per runtime, by exact request
JSON_MEDIA = "application/json; charset=utf-8"
EXPOSED_PROFILES = ("public", "")




@dataclass(frozen=True)
class Prefer:
    returning: str = "minimal"  # representation | minimal | headers-only
    count: str | None = None  # exact | planned | estimated
    resolution: str | None = None  # merge-duplicates | ignore-duplicates

    @classmethod
    def parse(cls, header: str, default_return: str) -> Prefer:
        values = dict(part.strip().partition("=")[::2] for part in header.split(",") if "=" in part)
        return cls(values.get("return", default_return), values.get("count"), values.get("resolution"))


def not_one(rows: int) -> NotAcceptable:
    """PostgREST's PGRST116: the client asked for one object (`vnd.pgrst.object+json`) and `rows` it is not."""
    return NotAcceptable("Cannot coerce the result to a single JSON object", hint=f"The result contains {rows} rows")


def _whole(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_range(header: str | None) -> tuple[int | None, int | None]:
    """`Range: 0-9` -> (limit 10, offset 0); `10-` -> (None, 10)."""
    if not header:
        return None, None
    unit, _, spec = header.rpartition("=")
    first, dash, last = spec.strip().partition("-")
    if not dash or not _whole(first) or (last and not _whole(last)) or (unit and unit.strip() != "items"):
        raise QueryParseError(f"Range '{header}': expected first-last, e.g. 0-9")
    if last and int(last) < int(first):
        raise RangeNotSatisfiable(f"Range '{header}': the last item comes before the first")
    return (int(last) - int(first) + 1 if last else None), int(first)


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
        self.permissions = Permissions(runtime.authorizer, caller, runtime.columns)

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
        """Answer one request; `query` is the raw query string (parsed only when no cached read has it)."""
        profile = headers.get("accept-profile" if method in ("GET", "HEAD") else "content-profile", "")
        if profile not in EXPOSED_PROFILES:
            raise SchemaNotExposed(f"schema '{profile}' is not exposed", hint="use the profile 'public' or none")
        entity = self.runtime.model.entity(entity_name)
        if entity is None:
            raise UnknownEntity(f"relation '{entity_name}' does not exist",
                                hint=f"entities: {', '.join(e.name for e in self.runtime.model.entities)}")
        if method in ("GET", "HEAD"):
            return await self.read(entity, query, headers, head=method == "HEAD")
        params = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
        if method == "POST":
            return await self.insert(entity, params, headers, body)
        if method == "PATCH":
            return await self.update(entity, params, headers, body)
        return await self.delete(entity, params, headers)

    # -- planning --

    def parser(self) -> ReadParser:
        return ReadParser(self.runtime.model, self.runtime.relations, self.permissions, self.caller.user_id,
                          self.bounds)

    def plan(self, entity: Entity, action: str, params: list[tuple[str, str]]) -> tuple[ReadPlan, list[Any]]:
        """The plan of the request, every level of it authorized for this caller (row scopes included)."""
        parser = self.parser()
        return parser.parse(entity.name, params, action), parser.values

    def write_plan(self, entity: Entity, action: str, params: list[tuple[str, str]]
                   ) -> tuple[ReadPlan, ReadPlan, list[Any]]:
        """(the rows the write reaches, what it shows of the rows it wrote: under the read scope, values)."""
        parser = self.parser()
        plan = parser.parse(entity.name, params, action)
        return plan, parser.returned(plan), parser.values

    def prepared(self, key: Any, prepare: Any) -> Any:
        """What a request needs before the database (plan, values, statement) is a pure function of the
        request, so the runtime keeps it, bounded, for requests that repeat (one dict lookup)."""
        found = self.runtime.prepared.get(key)
        if found is None:
            found = prepare()
            if len(self.runtime.prepared) >= PREPARED_CACHE_SIZE:
                del self.runtime.prepared[next(iter(self.runtime.prepared))]
            self.runtime.prepared[key] = found
        return found

    def statement(self, key: Any, build: Any) -> CompiledRead:
        return self.runtime.statement(key, build)

    async def run(self, compiled: CompiledRead, values: list[Any], *, many: bool = False,
                  single: bool = False, expect: int | None = None) -> Any:
        """Execute one statement as the tenant's role: its one row, or all its rows with `many`.

        `single` (a write whose client asked for exactly one object, `Accept: application/vnd.pgrst.object+json`,
        whatever its `return=`) wraps it in a transaction that is rolled back unless exactly one row was
        written (and, with a body, shown), as PostgREST does: a 406 never leaves a change.
        `expect` (an upsert's row count) rolls it back unless every row sent was written: a conflicting
        row outside the caller's update scope is left alone by the statement, and refused here (403)."""
        async with self.connection() as conn:
            fetch = conn.fetch if many else conn.fetchrow
            if not single and expect is None:
                return await fetch(compiled.sql, *compiled.arguments(values))
            async with conn.transaction():
                row = await fetch(compiled.sql, *compiled.arguments(values))
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
        key = ("read", entity.name, query, headers.get("range"), headers.get("prefer"), self.who)
        plan, values, compiled, count = self.prepared(key, lambda: self.prepare_read(entity, query, headers))
        row = await self.run(compiled, values)
        return self.respond_rows(row, plan, headers, status=200, count=count, head=head)

    def prepare_read(self, entity: Entity, query: bytes, headers: Mapping[str, str]
                     ) -> tuple[ReadPlan, list[Any], CompiledRead, bool]:
        limit, offset = parse_range(headers.get("range"))
        plan, values = self.plan(entity, "read", parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True))
        if limit is not None or offset is not None:  # the Range header wins over limit= and offset=
            plan = RowBudget(self.bounds).admit(replace(plan, limit=limit, offset=offset))
        count = Prefer.parse(headers.get("prefer", ""), "representation").count in ("exact", "planned", "estimated")
        compiled = self.statement(("read", plan, count), lambda: read_statement(plan, self.runtime.tables, count))
        return plan, values, compiled, count

    def respond_rows(self, row: asyncpg.Record, plan: ReadPlan, headers: Mapping[str, str], *, status: int,
                     count: bool = False, head: bool = False, extra: list[tuple[str, str]] | None = None) -> Answer:
        body: str = row["body"]
        rows: int = row["page_rows"]
        total = row["total"] if count else None
        offset = plan.offset or 0
        if total is not None and offset > 0 and offset >= total and rows == 0:
            raise RangeNotSatisfiable(f"offset {offset} is beyond the {total} rows", hint=f"Content-Range: */{total}")
        span = f"{offset}-{offset + rows - 1}" if rows else "*"
        response_headers = [("Content-Range", f"{span}/{total if total is not None else '*'}"), *(extra or [])]
        if OBJECT_MEDIA in headers.get("accept", ""):
            if rows != 1:
                raise not_one(rows)
            body = body[1:-1]
            response_headers.append(("Content-Type", f"{OBJECT_MEDIA}; charset=utf-8"))
        else:
            response_headers.append(("Content-Type", JSON_MEDIA))
        return Answer(status, response_headers, b"" if head else body.encode())

    # -- writes --

    def parse_body(self, body: bytes) -> Any:
        try:
            return orjson.loads(body or b"null")
        except orjson.JSONDecodeError as exc:
            raise InvalidBody(f"the body is not valid JSON: {exc}") from exc

    def validate(self, entity: Entity, payload: Any, *, partial: bool) -> None:
        guard_user_fields(entity.name, self.caller, payload if isinstance(payload, list) else [payload])
        validator = self.runtime.body_validator(entity, partial=partial)
        if isinstance(payload, list):
            problems = [p for i, item in enumerate(payload) for p in validator.problems(item, f"[{i}].")]
        else:
            problems = validator.problems(payload)
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid field(s) in the body", details=problems)

    async def insert(self, entity: Entity, params: list[tuple[str, str]], headers: Mapping[str, str],
                     body: bytes) -> Answer:
        payload = self.parse_body(body)
        objects = payload if isinstance(payload, list) else [payload]
        self.bounds.check_items(len(objects), "body")  # before any work per item
        if not objects or not all(isinstance(o, dict) for o in objects):
            raise InvalidBody("expected a JSON object or a non-empty array of objects")
        columns_param = dict(params).get("columns")
        keys = tuple(unquote(c.strip()) for c in columns_param.split(",")) if columns_param else tuple(objects[0])
        if columns_param and any(k in READ_ONLY for k in keys):  # body keys are checked by the validator
            raise ValidationFailed("read-only fields cannot be written",
                                   details=[Problem(k, "is read-only") for k in keys if k in READ_ONLY])
        if not columns_param and any(set(o) != set(keys) for o in objects):
            raise InvalidBody("all objects of a bulk insert must have the same keys", hint="or list them in columns=")
        await validate_sized(len(objects), lambda: self.validate(entity, objects if isinstance(payload, list)
                                                                 else objects[0], partial=False))
        if self.runtime.hooks(entity.name, "create"):
            if dict(params).get("on_conflict") or "resolution=" in headers.get("prefer", ""):
                raise InvalidBody(f"upserts are not supported on '{entity.name}': it has hooks",
                                  hint="insert, or update the existing row")
            return await self.hooked_insert(entity, objects, params, headers, single_object=not isinstance(payload, list))
        if entity.owner and self.caller.user_id is not None:  # set from the caller, never from the body
            objects = [{**o, OWNER_COLUMN: self.caller.user_id} for o in objects]
            keys = (*keys, OWNER_COLUMN)
        prefer = Prefer.parse(headers.get("prefer", ""), "minimal")
        conflict = tuple(unquote(c.strip()) for c in dict(params).get("on_conflict", "").split(",") if c.strip())
        visible = self.runtime.columns[entity.name]
        for column in (*keys, *conflict):
            if column not in visible:
                raise UnknownColumn(f"column '{column}' of '{entity.name}' does not exist")
        representation = prefer.returning == "representation"

        def prepare() -> tuple[ReadPlan, list[Any], CompiledRead, Upsert | None]:
            parser = self.parser()
            plan = parser.parse(entity.name, shaping(params), "create")
            upsert = self.upsert(parser, entity, keys, conflict, prefer.resolution)
            returned = parser.returned(plan)
            values = parser.values
            compiled = self.statement(("insert", returned, keys, upsert, representation, len(values)),
                                      lambda: rest_insert(self.runtime.tables, returned, keys, upsert, len(values),
                                                          representation))
            return returned, values, compiled, upsert

        plan, values, compiled, upsert = self.prepared(("insert", entity.name, tuple(params), prefer, self.who, keys),
                                                       prepare)
        arguments = [*values, orjson.dumps(objects).decode()]
        expect = len(objects) if upsert is not None and upsert.update else None
        quotas.guard_write("create")  # a tenant at its rows or storage quota inserts nothing (engine/quotas.py)
        single = OBJECT_MEDIA in headers.get("accept", "")
        if representation:
            row = await self.run(compiled, arguments, single=single, expect=expect)
            first_id, count = row["first_id"], row["page_rows"]
            metering.wrote(row["written"])
        else:  # the statement returns the new ids alone (no body to build)
            ids = await self.run(compiled, arguments, many=True, single=single, expect=expect)
            # a merge may have updated rows the caller may not read: their ids are not shown
            first_id, count = (ids[0]["id"] if ids and expect is None else None), len(ids)
            metering.wrote(count)
        extra = [("Location", f"/{entity.name}?id=eq.{first_id}")] if not isinstance(payload, list) and first_id else []
        if representation:
            return self.respond_rows(row, plan, headers, status=201, extra=extra)
        return Answer(201, [("Content-Range", f"*/{count}"), *extra], b"")

    def upsert(self, parser: ReadParser, entity: Entity, keys: tuple[str, ...], conflict: tuple[str, ...],
               resolution: str | None) -> Upsert | None:
        """`Prefer: resolution=`: ignore-duplicates leaves a conflicting row alone; merge-duplicates is an
        update of it, so it needs the update permission and happens only within the update's row scope,
        and never sets owner_id (the row stays its owner's)."""
        target = conflict or ("id",)
        if resolution == "ignore-duplicates":
            return Upsert(target, (), None)
        if resolution != "merge-duplicates":
            return None
        scope = self.permissions.scope(entity.name, "update", parser.caller_param)
        return Upsert(target, tuple(k for k in keys if k not in target and k != OWNER_COLUMN), scope)

    async def update(self, entity: Entity, params: list[tuple[str, str]], headers: Mapping[str, str],
                     body: bytes) -> Answer:
        if not has_root_filters(params):
            raise UnfilteredWrite("UPDATE requires a WHERE clause", hint="add a filter, e.g. ?id=eq.<id>")
        payload = self.parse_body(body)
        if not isinstance(payload, dict) or not payload:
            raise InvalidBody("expected a JSON object with the fields to change")
        self.validate(entity, payload, partial=True)
        if self.runtime.hooks(entity.name, "update"):
            return await self.hooked_change(entity, "update", params, headers, payload)
        prefer = Prefer.parse(headers.get("prefer", ""), "minimal")
        representation = prefer.returning == "representation"
        keys = tuple(payload)

        def prepare() -> tuple[ReadPlan, list[Any], CompiledRead]:
            plan, returned, values = self.write_plan(entity, "update", params)
            compiled = self.statement(("update", plan, returned, keys, representation, len(values)),
                                      lambda: rest_update(self.runtime.tables, plan, returned, keys, len(values),
                                                          representation))
            return returned, values, compiled

        plan, values, compiled = self.prepared(("update", entity.name, tuple(params), prefer, self.who, keys), prepare)
        quotas.guard_write("update")  # a tenant at its storage quota updates nothing (deletes still free space)
        row = await self.run(compiled, [*values, orjson.dumps(payload).decode()],
                             single=OBJECT_MEDIA in headers.get("accept", ""))
        return self.respond_written(row, plan, headers, representation)

    async def delete(self, entity: Entity, params: list[tuple[str, str]], headers: Mapping[str, str]) -> Answer:
        if not has_root_filters(params):
            raise UnfilteredWrite("DELETE requires a WHERE clause", hint="add a filter, e.g. ?id=eq.<id>")
        if self.runtime.hooks(entity.name, "delete"):
            return await self.hooked_change(entity, "delete", params, headers, None)
        prefer = Prefer.parse(headers.get("prefer", ""), "minimal")
        representation = prefer.returning == "representation"

        def prepare() -> tuple[ReadPlan, list[Any], CompiledRead]:
            plan, returned, values = self.write_plan(entity, "delete", params)
            return returned, values, self.statement(("delete", plan, returned, representation),
                                                    lambda: rest_delete(self.runtime.tables, plan, returned,
                                                                        representation))

        plan, values, compiled = self.prepared(("delete", entity.name, tuple(params), prefer, self.who), prepare)
        row = await self.run(compiled, values, single=OBJECT_MEDIA in headers.get("accept", ""))
        return self.respond_written(row, plan, headers, representation)

    # -- writes to entities with hooks (row by row, in one transaction: engine.writes) --

    async def hooked_insert(self, entity: Entity, objects: list[dict[str, Any]], params: list[tuple[str, str]],
                            headers: Mapping[str, str], *, single_object: bool) -> Answer:
        select = shaping(params)
        async with self.connection() as conn, conn.transaction():
            rows = await HookedWriter(self.runtime, self.caller, conn, self.db).insert(entity, objects)
            ids = [r["id"] for r in rows]
            if OBJECT_MEDIA in headers.get("accept", "") and len(ids) != 1:
                raise not_one(len(ids))
            extra = [("Location", f"/{entity.name}?id=eq.{ids[0]}")] if single_object and ids else []
            if Prefer.parse(headers.get("prefer", ""), "minimal").returning != "representation":
                return Answer(201, [("Content-Range", f"*/{len(ids)}"), *extra], b"")
            return await self.rows_by_id(conn, entity, "create", select, ids, headers, 201, extra)

    async def hooked_change(self, entity: Entity, action: str, params: list[tuple[str, str]],
                            headers: Mapping[str, str], patch: dict[str, Any] | None) -> Answer:
        plan, values = self.plan(entity, action, params)
        select = shaping(params)
        representation = Prefer.parse(headers.get("prefer", ""), "minimal").returning == "representation"
        async with self.connection() as conn, conn.transaction():
            writer = HookedWriter(self.runtime, self.caller, conn, self.db)
            olds = await writer.lock(entity, plan.reach(), values)
            ids = [o["id"] for o in olds]
            response = None
            if representation and action == "delete":  # the body is read before the rows go
                response = await self.rows_by_id(conn, entity, action, select, ids, headers, 200, [])
            if action == "delete":
                await writer.delete(entity, olds)
            else:
                await writer.update(entity, olds, patch or {})
            if representation and response is None:
                response = await self.rows_by_id(conn, entity, action, select, ids, headers, 200, [])
            if response is None:
                if OBJECT_MEDIA in headers.get("accept", "") and len(ids) != 1:
                    raise not_one(len(ids))
                response = Answer(204, [("Content-Range", f"*/{len(ids)}")], b"")
            return response

    async def rows_by_id(self, conn: asyncpg.Connection, entity: Entity, action: str, select: list[tuple[str, str]],
                         ids: list[str], headers: Mapping[str, str], status: int,
                         extra: list[tuple[str, str]]) -> Answer:
        """The written rows as the request selects them, under the read scope (one object or 406, when asked for)."""
        parser = self.parser()
        plan = parser.only(parser.returned(parser.parse(entity.name, select, action)), ids)
        values = parser.values
        compiled = self.statement(("by-id", plan), lambda: read_statement(plan, self.runtime.tables, False))
        row = await conn.fetchrow(compiled.sql, *compiled.arguments(values))
        if OBJECT_MEDIA in headers.get("accept", "") and row["page_rows"] != 1:
            raise not_one(row["page_rows"])
        return self.respond_rows(row, plan, headers, status=status, extra=extra)

    def respond_written(self, row: asyncpg.Record, plan: ReadPlan, headers: Mapping[str, str],
                        representation: bool) -> Answer:
        metering.wrote(row["written"])  # an update's or a delete's rows, shown or not
        if representation:
            return self.respond_rows(row, replace(plan, offset=None), headers, status=200)
        return Answer(204, [("Content-Range", f"*/{row['page_rows']}")], b"")
