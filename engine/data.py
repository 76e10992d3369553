"""The data API hooks and functions get as `ctx.data`: the engine's own reads and writes, on the request's
connection and transaction, with the caller's permissions (or the `service` role's, once `elevated()`).

It speaks the REST dialect's arguments (`{"status": "eq.published", "order": "title"}`), so hooks and
clients share one way to read and one way to write: the arguments become the same plans REST and GraphQL
make (`engine.rest.params`, row scopes from `engine.authz.permissions`), run by the write core both
dialects share (`engine.writes`), hooks of the entities it writes included. It never goes through an
HTTP handler, so a GraphQL mutation's hook does not reach the REST dialect's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from engine.authz import Caller
from engine.authz.permissions import Permissions
from engine.errors import InvalidBody, UnfilteredWrite, UnknownEntity, database_error_of
from engine.limits import DEFAULT_BOUNDS, Bounds
from engine.query.plan import ReadPlan
from engine.query.sql import read_statement
from engine.rest.params import ReadParser, has_root_filters
from engine.schema.model import Entity
from engine.writes import HookedWriter, Row


def arguments(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The REST dialect's arguments as a query string's pairs (values as text, as a URL carries them)."""
    return [(str(k), str(v)) for k, v in (params or {}).items()]


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """The database's refusals as the engine's errors (a unique violation is a 409, not a hook crash)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise database_error_of(exc) from exc


class DataApi:
    def __init__(self, runtime: Any, db: Any, caller: Caller, conn: asyncpg.Connection,
                 bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.runtime, self.db, self.caller, self.conn = runtime, db, caller, conn
        self.bounds = bounds  # the request's plan's, when there is one (engine.limits)

    def elevated(self) -> DataApi:
        """The same API acting as the tenant's `service` role: every entity, every row."""
        return DataApi(self.runtime, self.db, Caller(("service",)), self.conn, self.bounds)

    # -- the four calls --

    async def select(self, entity: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        parser = self.parser()
        plan = parser.parse(self.entity(entity).name, arguments(params), "read")
        return await self.rows(plan, parser.values)

    async def insert(self, entity: str, values: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        model_entity = self.entity(entity)
        objects = list(values) if isinstance(values, list) else [values]
        if not objects or not all(isinstance(o, Mapping) for o in objects):
            raise InvalidBody("expected an object or a non-empty list of objects")
        parser = self.parser()
        plan = parser.parse(model_entity.name, [], "create")
        async with database_errors():
            written = await self.writer().insert(model_entity, [dict(o) for o in objects])
        return await self.shown(parser, plan, [r["id"] for r in written])

    async def update(self, entity: str, params: Mapping[str, str], values: Mapping[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(values, Mapping) or not values:
            raise InvalidBody("expected an object with the fields to change")
        return await self.change(entity, "update", params, dict(values))

    async def delete(self, entity: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self.change(entity, "delete", params, None)

    # -- on the write core --

    def parser(self) -> ReadParser:
        permissions = Permissions(self.runtime.authorizer, self.caller, self.runtime.columns)
        return ReadParser(self.runtime.model, self.runtime.relations, permissions, self.caller.user_id)

    def writer(self) -> HookedWriter:
        return HookedWriter(self.runtime, self.caller, self.conn, self.db, self.bounds)

    def entity(self, name: str) -> Entity:
        found = self.runtime.model.entity(name)
        if found is None:
            raise UnknownEntity(f"relation '{name}' does not exist")
        return found

    async def change(self, entity: str, action: str, params: Mapping[str, str], patch: Row | None) -> list[Row]:
        """An update or a delete of the rows the filters and the caller's scope reach (locked first), row
        by row with the entity's hooks; the rows as the read scope shows them (a delete's, before it)."""
        model_entity = self.entity(entity)
        if not has_root_filters(arguments(params)):
            raise UnfilteredWrite(f"{action} of {entity} requires a filter", hint="e.g. {'id': 'eq.<id>'}")
        parser = self.parser()
        plan = parser.parse(model_entity.name, arguments(params), action)
        writer = self.writer()
        async with database_errors():
            olds = await writer.lock(model_entity, plan.reach(), list(parser.values), action)
            ids = [o["id"] for o in olds]
            if patch is None:
                shown = await self.shown(parser, plan, ids)  # read before the rows go
                await writer.delete(model_entity, olds)
                return shown
            await writer.update(model_entity, olds, patch)
        return await self.shown(parser, plan, ids)

    async def shown(self, parser: ReadParser, plan: ReadPlan, ids: list[str]) -> list[Row]:
        """The written rows `ids` as `plan` selects them, under the caller's read scope."""
        return await self.rows(parser.only(parser.returned(plan), ids), parser.values)

    async def rows(self, plan: ReadPlan, values: list[Any]) -> list[Row]:
        compiled = self.runtime.statement(("data", plan), lambda: read_statement(plan, self.runtime.tables, False))
        async with database_errors():
            row = await self.conn.fetchrow(compiled.sql, *compiled.arguments(values))
        return orjson.loads(row["body"])
