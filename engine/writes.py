"""The write core REST, GraphQL and the data API share for writes to entities that have hooks (and every
write of `ctx.data`), all in the caller's transaction.

An entity without hooks is written by REST and GraphQL in one statement each. With hooks, a write is:
lock the matching rows (`SELECT ... FOR UPDATE`, through the caller's row scope), run the `before_*`
hooks per row (they may alter the change or refuse it), validate what they return, write (row by row
when there are `before_*` hooks, as a hook may read what the rows before its own wrote; else all the
rows in one statement), run the synchronous `after_*` hooks (a failure rolls everything back), and put
one outbox event per webhook and async hook in `system.events` in the same transaction, for the
dispatcher to deliver after commit.
Which rows a write reaches is the caller's plan's (`ReadPlan.reach()`: its row scope and filters); this
module never decides a scope.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql

from engine import metering, quotas
from engine.authz import Caller, authorize, guard_user_fields
from engine.authz.permissions import Permissions
from engine.database import quote_identifier
from engine.errors import BackSaasError, ValidationFailed
from engine.hooks import Change, HookContext, call, resolve
from engine.limits import DEFAULT_BOUNDS, Bounds
from engine.query.plan import Condition, Reference
from engine.query.sql import CompiledRead, condition_sql, insert_statement, json_source, referenced
from engine.schema.model import OWNER_COLUMN, Entity, Hook

Row = dict[str, Any]


@dataclass(frozen=True)
class EntityHooks:
    """The hooks of one entity and event, resolved to functions when the runtime compiles."""

    before: tuple[tuple[Hook, Any], ...] = ()
    after: tuple[tuple[Hook, Any], ...] = ()  # synchronous after_* hooks
    deferred: tuple[Hook, ...] = ()  # webhooks and async after_* functions: the outbox

    def __bool__(self) -> bool:
        return bool(self.before or self.after or self.deferred)


def compile_hooks(entity: Entity, action: str) -> EntityHooks:
    def functions(event: str) -> tuple[tuple[Hook, Any], ...]:
        return tuple((h, resolve(h.function)) for h in entity.hooks
                     if h.event == event and h.function and not h.is_async)

    deferred = tuple(h for h in entity.hooks if h.event == f"after_{action}" and h.is_async)
    return EntityHooks(functions(f"before_{action}"), functions(f"after_{action}"), deferred)


def upsert_hooks(runtime: Any, entity: str, updates: bool) -> str | None:
    """Why an upsert may not run on `entity`, or None: it is one statement, which runs no hook, so an
    entity with create hooks takes none, and one with update hooks none that may update a row it meets
    (REST's merge-duplicates, GraphQL's update_columns); else its hooks would be a PATCH's alone to pass."""
    if runtime.hooks(entity, "create"):
        return f"'{entity}' has create hooks, which an upsert would not run"
    if updates and runtime.hooks(entity, "update"):
        return f"'{entity}' has update hooks, which an upsert's update would not run"
    return None


class HookedWriter:
    """Writes of one request on its connection (already in a transaction, acting as the tenant's role)."""

    def __init__(self, runtime: Any, caller: Caller, conn: asyncpg.Connection, db: Any,
                 bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.runtime, self.caller, self.conn, self.db = runtime, caller, conn, db
        self.bounds = bounds  # the plan's (engine.limits): how many rows one update or delete may change

    def context(self, event: str) -> HookContext:
        from engine.data import DataApi  # ctx.data runs its plans on this write core (engine.data imports it)

        return HookContext(self.runtime.slug, self.caller, event,
                           DataApi(self.runtime, self.db, self.caller, self.conn, self.bounds),
                           structlog.get_logger("backsaas.hooks").bind(tenant=self.runtime.slug, event=event))

    async def run_hooks(self, hooks: Sequence[tuple[Hook, Any]], change: Change, *, alter: bool) -> Row | None:
        record = change.record
        for declared, fn in hooks:
            returned = await call(fn, declared.function or "", declared.timeout, self.context(declared.event),
                                  Change(change.entity, change.action, record, change.old))
            if alter and isinstance(returned, dict):
                record = returned
        return record

    def validate(self, entity: Entity, values: Row, *, partial: bool) -> None:
        guard_user_fields(entity.name, self.caller, [values], self.runtime.model)
        problems = self.runtime.body_validator(entity, partial=partial).problems(values)
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid field(s) in the body (after the hooks)", details=problems)

    def references(self, entity: Entity, keys: Sequence[str], first: int) -> tuple[tuple[Reference, ...], list[Any]]:
        """The ref columns a write of `keys` sets, each to name a row the caller may read (the permissions'),
        and the parameters they add after the statement's `first` ones (the caller's id, for a row scope)."""
        added: list[Any] = []

        def caller_param() -> int:
            added.append(self.caller.user_id)
            return first + len(added) - 1

        permissions = Permissions(self.runtime.authorizer, self.caller, self.runtime.columns)
        return permissions.references(entity.name, self.runtime.relations[entity.name], keys, caller_param), added

    def compiled(self, key: Any, build: Callable[[], sa.Executable]) -> CompiledRead:
        return self.runtime.statement(("writes", key), build)

    async def rows(self, key: Any, build: Callable[[], sa.Executable], values: Sequence[Any] = ()) -> list[Row]:
        compiled = self.compiled(key, build)
        records = await self.conn.fetch(compiled.sql, *compiled.arguments(list(values)))
        return [orjson.loads(r[0]) for r in records]

    def as_json(self, table: sa.Table) -> Any:
        return sa.literal_column(f"to_jsonb({quote_identifier(table.name)}.*)::text")

    # -- the three writes --

    async def insert(self, entity: Entity, objects: Sequence[Row], *, validated: bool = False) -> list[Row]:
        """Insert `objects` for the caller, who must hold the create permission: decided here, for every
        surface, as no plan carries an insert here (REST's hooked insert asked nobody: anon could insert).
        `validated`: the surface checked `objects` against the entity's body validator already (REST does,
        naming each item's place in the body), so only what a before hook returns is checked again."""
        authorize(self.runtime.authorizer, self.caller, entity.name, "create")
        quotas.guard_write("create")  # a tenant at its rows or storage quota inserts nothing
        hooks = compile_hooks(entity, "create")
        written: list[Row] = []
        pending: list[Row] = []  # validated, not yet written
        for obj in objects:
            values = await self.run_hooks(hooks.before, Change(entity.name, "create", dict(obj)), alter=True) or {}
            if hooks.before or not validated:
                self.validate(entity, values, partial=False)
            if entity.owner and self.caller.user_id is not None:
                values = {**values, OWNER_COLUMN: self.caller.user_id}
            pending.append(values)
            if hooks.before:  # the next row's before hooks may read this one (ctx.data): it is written first
                written += await self.insert_rows(entity, pending)
                pending = []
        written += await self.insert_rows(entity, pending)  # with no before hook, every row in one statement
        metering.wrote(len(written))
        await self.after(entity, hooks, "create", [(row, None) for row in written])
        return written

    async def insert_rows(self, entity: Entity, rows: Sequence[Row]) -> list[Row]:
        """INSERT `rows` in one statement, each key a row lacks taking its column's default (as a row
        inserted alone would), and return them as written, in order."""
        if not rows:
            return []
        table = self.runtime.tables[entity.name]
        keys = tuple(dict.fromkeys(key for row in rows for key in row))
        defaults = len(rows) > 1  # one row names every key inserted: no key to look for in each
        references, added = self.references(entity, keys, 1)

        def build() -> sa.Executable:
            return insert_statement(table, keys, 0, None, self.runtime.tables, defaults=defaults,
                                    references=references).returning(self.as_json(table))

        return await self.rows(("insert", entity.name, keys, defaults, references), build,
                               [orjson.dumps(rows).decode(), *added])

    async def lock(self, entity: Entity, where: Condition | None, values: Sequence[Any], action: str) -> list[Row]:
        """The rows an `action` (update or delete) will touch, locked for it (the condition carries the
        caller's row scope); refused (400 `too_many_rows`) past the plan's `max_write_rows`, having locked
        at most one row more, before any hook runs."""
        table = self.runtime.tables[entity.name]
        at_most = self.bounds.max_write_rows

        def build() -> sa.Executable:
            statement = sa.select(self.as_json(table)).select_from(table).with_for_update().limit(at_most + 1)
            if where is not None:
                statement = statement.where(condition_sql(where, table, self.runtime.tables))
            return statement

        rows = await self.rows(("lock", entity.name, where, at_most), build, values)
        self.bounds.check_reached(len(rows), action)
        return rows

    async def update(self, entity: Entity, olds: Sequence[Row], patch: Row) -> list[Row]:
        quotas.guard_write("update")  # a tenant at its storage quota updates nothing (deletes still free space)
        hooks = compile_hooks(entity, "update")
        pairs: list[tuple[Row, Row]] = []
        if hooks.before:  # each row's hooks may change its change: row by row
            for old in olds:
                changes = await self.run_hooks(hooks.before, Change(entity.name, "update", dict(patch), old), alter=True)
                changes = changes or {}
                self.validate(entity, changes, partial=True)
                pairs += await self.update_rows(entity, [old], changes) if changes else [(old, old)]
        else:  # every row takes the same change: one statement
            changes = dict(patch)
            self.validate(entity, changes, partial=True)
            pairs = await self.update_rows(entity, olds, changes) if changes else [(old, old) for old in olds]
        await self.after(entity, hooks, "update", pairs)
        return [new for new, _ in pairs]

    async def update_rows(self, entity: Entity, olds: Sequence[Row], changes: Row) -> list[tuple[Row, Row]]:
        """UPDATE the rows `olds` (locked) with `changes` in one statement: (new, old) of each, in order."""
        if not olds:
            return []
        table = self.runtime.tables[entity.name]
        references, added = self.references(entity, tuple(changes), 2)

        def build(keys: tuple[str, ...] = tuple(changes)) -> sa.Executable:
            source = json_source(table, 0, many=False)
            ids = sa.cast(sa.bindparam("v1", type_=postgresql.ARRAY(sa.Text())), postgresql.ARRAY(sa.Uuid()))
            guarded = {r.column: r for r in references}
            values = {k: sa.select(source.c[k]).scalar_subquery() for k in keys}
            values.update({k: referenced(v, guarded[k], self.runtime.tables) for k, v in values.items() if k in guarded})
            return sa.update(table).values(values).where(table.c.id == sa.any_(ids)).returning(self.as_json(table))

        new = {row["id"]: row for row in await self.rows(("update", entity.name, tuple(changes), references), build,
                                                         [orjson.dumps(changes).decode(), [o["id"] for o in olds],
                                                          *added])}
        metering.wrote(len(new))
        return [(new[old["id"]], old) for old in olds if old["id"] in new]

    async def delete(self, entity: Entity, olds: Sequence[Row]) -> None:
        hooks = compile_hooks(entity, "delete")
        table = self.runtime.tables[entity.name]
        for old in olds:
            await self.run_hooks(hooks.before, Change(entity.name, "delete", None, old), alter=False)
        if olds:
            ids = sa.cast(sa.bindparam("v0", type_=postgresql.ARRAY(sa.Text())), postgresql.ARRAY(sa.Uuid()))
            compiled = self.compiled(("delete", entity.name), lambda: sa.delete(table).where(table.c.id == sa.any_(ids)))
            await self.conn.execute(compiled.sql, *compiled.arguments([[o["id"] for o in olds]]))
            metering.wrote(len(olds))
        await self.after(entity, hooks, "delete", [(None, old) for old in olds])

    # -- after the write --

    async def after(self, entity: Entity, hooks: Any, action: str, pairs: Sequence[tuple[Row | None, Row | None]]
                    ) -> None:
        for record, old in pairs:
            await self.run_hooks(hooks.after, Change(entity.name, action, record, old), alter=False)
        if hooks.deferred and pairs:
            await self.enqueue(entity, action, hooks.deferred, pairs)

    async def enqueue(self, entity: Entity, action: str, deferred: Sequence[Hook],
                      pairs: Sequence[tuple[Row | None, Row | None]]) -> None:
        """One outbox event per change and webhook/async hook, in this transaction, through the platform's
        `backsaas_outbox.enqueue`, which files them under the tenant whose role this connection acts as."""
        at = datetime.now(UTC).isoformat()
        rows = [{"entity": entity.name, "action": action,
                 "kind": "webhook" if hook.webhook else "function", "target": hook.webhook or hook.function,
                 "secret_name": hook.secret,
                 "payload": {"tenant": self.runtime.slug, "entity": entity.name, "action": action,
                             "record": record, "old_record": old, "at": at},
                 "caller": {"roles": list(self.caller.roles), "user_id": self.caller.user_id}}
                for record, old in pairs for hook in deferred]
        body = orjson.dumps(rows).decode()
        tag = "$outbox_" + secrets.token_hex(8) + "$"  # a dollar quote no JSON text of ours contains
        if tag in body:
            raise BackSaasError("could not quote an outbox event")  # 2^-64: never, but never silently
        await self.conn.execute(f"SELECT backsaas_outbox.enqueue({tag}{body}{tag}::jsonb)")  # one round trip
