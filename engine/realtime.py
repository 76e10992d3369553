"""Server-Sent Events of an entity's changes: `GET {tenant}/rest/v1/{entity}?<filters>` with
`Accept: text/event-stream`, for entities declared `realtime: true`.

Each committed create, update or delete that the caller may read and that matches the request's filters
(the new row, or for a delete the old one) is an event `id: <n>`, `event: create|update|delete`, `data:
{"type", "table", "record", "old_record", "commit_timestamp"}`. Events come from the tenant's change
log (`backsaas_changes`, written by a row trigger in the same transaction as the change), so a client
reconnecting with `Last-Event-ID` gets what it missed (a day of it is kept). The stream wakes on the
same NOTIFY feed as GraphQL subscriptions and sends a comment every 15 s to keep proxies from closing it.

A request that cannot stream fails before the first byte, with its status: the first batch of changes
is read before the stream starts, so a filter whose value the column's type refuses is a 400, not a
stream that aborts. A stream lasts only as long as its credential: when its `StreamGuard` reports
that the key, session, token or tenant ended, the stream ends with an `error` event (`data: {"code",
"message"}`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson
import sqlalchemy as sa

from engine.authz import Caller
from engine.changes import ChangeHub
from engine.database import quote_identifier
from engine.errors import BackSaasError, UnknownEntity, database_error_of
from engine.query.sql import compile_statement, condition_sql, qualified
from engine.storage import naming
from engine.streams import StreamGuard

KEEPALIVE_SECONDS = 15.0
BATCH = 200
SHAPING = ("select", "order", "limit", "offset")  # what a stream ignores: it sends whole changes, in order


class RealtimeDisabled(BackSaasError):
    code = "realtime_disabled"
    status = 400


def changes_statement(runtime: Any, entity: str, where: Any, after_param: int) -> Any:
    """The log's changes to `entity` after a given id that match `where` (row scope and filters)."""
    table = runtime.tables[entity]
    log = sa.table(naming.CHANGE_LOG, sa.column("id", sa.BigInteger()), sa.column("entity", sa.Text()),
                   sa.column("action", sa.Text()), sa.column("record", sa.Text()), sa.column("old", sa.Text()),
                   sa.column("at", sa.DateTime()), schema=runtime.pg_schema)
    row = (sa.func.jsonb_populate_record(sa.literal_column(f"NULL::{qualified(table)}"),
                                         sa.func.coalesce(sa.literal_column("l.record"), sa.literal_column("l.old")))
           .table_valued(*(sa.column(c.name, c.type) for c in table.c)).alias("r"))  # typed: filters cast to them
    logged = log.alias("l")
    matches = sa.select(sa.literal_column("1")).select_from(row)
    if where is not None:
        matches = matches.where(condition_sql(where, row, runtime.tables))
    after = sa.cast(sa.bindparam(f"v{after_param}", type_=sa.Text()), sa.BigInteger())
    return compile_statement(
        sa.select(logged.c.id, logged.c.action, sa.cast(logged.c.record, sa.Text).label("record"),
                  sa.cast(logged.c.old, sa.Text).label("old"), logged.c.at)
        .where(logged.c.id > after, logged.c.entity == sa.literal_column(f"'{entity}'"), sa.exists(matches))
        .order_by(logged.c.id).limit(BATCH))


async def stream(runtime: Any, db: Any, caller: Caller, hub: ChangeHub, entity_name: str, query: bytes,
                 last_event_id: str | None, guard: StreamGuard) -> AsyncIterator[bytes]:
    """The event stream (raises before the first byte for a bad request: unknown entity, no realtime,
    not readable, a bad filter); it ends when `guard` says the caller's credential has ended."""
    from engine.rest.api import RestApi

    entity = runtime.model.entity(entity_name)
    if entity is None:
        raise UnknownEntity(f"relation '{entity_name}' does not exist")
    if not entity.realtime:
        raise RealtimeDisabled(f"'{entity_name}' does not stream its changes", hint="declare `realtime: true` on it")
    params = [(k, v) for k, v in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
              if k not in SHAPING]
    plan, values = RestApi(runtime, db, caller).plan(entity, "read", params)
    where = plan.reach()  # the caller's row scope and the filters
    key = ("sse", entity_name, where, len(values))
    compiled = runtime.statements.get(key)
    if compiled is None:
        compiled = runtime.statements[key] = changes_statement(runtime, entity_name, where, len(values))
    log_table = f"{quote_identifier(runtime.pg_schema)}.{quote_identifier(naming.CHANGE_LOG)}"
    resume = last_event_id.strip() if last_event_id else ""
    try:
        async with db.as_role(runtime.role) as conn:
            if resume.isascii() and resume.isdigit() and len(resume) <= 18:  # a bigint id we sent
                after = int(resume)
            else:  # no (usable) Last-Event-ID: from now on
                after = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {log_table}")
            first = await conn.fetch(compiled.sql, *compiled.arguments([*values, str(after)]))  # the filter's test
    except asyncpg.PostgresError as exc:
        raise database_error_of(exc) from exc
    return _events(runtime, db, hub, entity_name, compiled, values, runtime.columns[entity_name], after, first, guard)


async def _events(runtime: Any, db: Any, hub: ChangeHub, entity: str, compiled: Any, values: list[Any],
                  visible: Any, after: int, rows: list[Any], guard: StreamGuard) -> AsyncIterator[bytes]:
    yield b": connected\n\n"
    ended = asyncio.ensure_future(guard.ended())
    try:
        async with hub.watching(runtime.role, {f"{runtime.pg_schema}.{entity}"}) as changed:
            changed.set()  # read again once: what committed between the first read and this watch
            while True:
                if ended.done():
                    error = ended.result()
                    yield b"event: error\ndata: %s\n\n" % orjson.dumps({"code": error.code, "message": error.message})
                    return
                for row in rows:
                    after = row["id"]
                    data = {"type": row["action"].upper(), "table": entity,
                            "record": _visible(row["record"], visible), "old_record": _visible(row["old"], visible),
                            "commit_timestamp": row["at"].isoformat()}
                    yield b"id: %d\nevent: %s\ndata: %s\n\n" % (after, row["action"].encode(), orjson.dumps(data))
                if len(rows) < BATCH and not changed.is_set():
                    woken = asyncio.ensure_future(changed.wait())
                    done, _ = await asyncio.wait((woken, ended), timeout=KEEPALIVE_SECONDS,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                    if not done:
                        yield b": keepalive\n\n"
                    rows = []
                    continue
                changed.clear()
                async with db.as_role(runtime.role) as conn:
                    rows = await conn.fetch(compiled.sql, *compiled.arguments([*values, str(after)]))
    finally:
        ended.cancel()


def _visible(text: str | None, visible: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    return {k: v for k, v in orjson.loads(text).items() if k in visible}
