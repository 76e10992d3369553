"""The data API hooks and functions get as `ctx.data`: the engine's own reads and writes, on the request's
connection and transaction, with the caller's permissions (or the `service` role's, once `elevated()`).

It speaks the REST dialect's arguments (`{"status": "eq.published", "order": "title"}`), so hooks and
clients share one way to read and one way to write, hooks of the entities it writes included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson

from engine.authz import Caller
from engine.errors import BackSaasError

JSON_REPRESENTATION = {"prefer": "return=representation", "content-type": "application/json"}


class DataApi:
    def __init__(self, runtime: Any, db: Any, caller: Caller, conn: asyncpg.Connection) -> None:
        self.runtime, self.db, self.caller, self.conn = runtime, db, caller, conn

    def elevated(self) -> DataApi:
        """The same API acting as the tenant's `service` role: every entity, every row."""
        return DataApi(self.runtime, self.db, Caller(("service",)), self.conn)

    async def request(self, method: str, entity: str, params: Mapping[str, str] | None = None,
                      body: Any = None) -> Any:
        from engine.rest.api import RestApi  # REST's writes run hooks, whose context holds this API

        api = RestApi(self.runtime, self.db, self.caller, conn=self.conn)
        result = await api.handle(method, entity, urlencode(params or {}).encode(), JSON_REPRESENTATION,
                                  orjson.dumps(body) if body is not None else b"")
        if result.status >= 400:
            raise BackSaasError(f"{method} {entity} answered {result.status}: {result.body.decode()[:300]}")
        return orjson.loads(result.body) if result.body else None

    async def select(self, entity: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return await self.request("GET", entity, params)

    async def insert(self, entity: str, values: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await self.request("POST", entity, None, values)

    async def update(self, entity: str, params: Mapping[str, str], values: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await self.request("PATCH", entity, params, values)

    async def delete(self, entity: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self.request("DELETE", entity, params)
