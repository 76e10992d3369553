"""Who in this process waits for what to change: the hub the NOTIFY feeds wake.

A statement writing a tenant's table NOTIFYs `schema.table` on `CHANGES_FEED` (a trigger installed at
deploy) when some process watches that table, from whichever process made the change; the registry's
LISTEN connection hands each payload to `ChangeHub.changed`, which wakes the watchers of that table (SSE
streams, GraphQL subscriptions). NOTIFY is not free: PostgreSQL serialises the commits of notifying
transactions, so a table nobody watches is written without it. Watchers of tables say so with
`watching`: the first watcher of a table in this process registers the interest in the database
(`interest`, the registry's, which waits until no writer that missed it is still open) before it reads,
the last one removes it.

Open streams also watch what their credential depends on (`tenant_key`, `session_key`, `CREDENTIALS`): the
registry wakes those when a tenant's row, keys or members change, when sessions are revoked and when the
token signing keys change, so that a stream whose credential ended is closed at once, on every process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import structlog

from engine.storage import naming

log = structlog.get_logger()
Interest = Callable[[str, str, bool], Awaitable[None]]  # (role, "schema.table", watched or not)

CREDENTIALS = "#credentials"  # woken when any credential may have ended (the signing keys changed)


def tenant_key(slug: str) -> str:
    """What a stream of tenant `slug` watches: its row, its API keys or its members changed."""
    return f"#tenant:{slug}"


def session_key(ident: str) -> str:
    """What a stream of a signed-in user watches: their session (by its id), or every session of their
    tenant (by the tenant's id), was revoked."""
    return f"#session:{ident}"


class ChangeHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self.listening = False  # whether the NOTIFY feeds reach this hub now (the registry's LISTEN is up)
        self.interest: Interest | None = None  # tells the database which tables this process watches
        self._tables: dict[str, tuple[str, int, asyncio.Future[None]]] = {}  # table -> (role, watchers, registered)
        self._last: dict[str, asyncio.Future[None]] = {}  # table -> its latest registration or removal, in order

    @asynccontextmanager
    async def watching(self, role: str, tables: Iterable[str]) -> AsyncIterator[asyncio.Event]:
        """`watch` for tables (`schema.table`) of the tenant whose database role is `role`: returns once the
        change feed NOTIFYs every change committed from now on to each of them."""
        tables = set(tables)
        registrations = []
        for table in tables:
            found = self._tables.get(table)
            if found is None:
                found = (role, 0, self._tell(role, table, True))
            self._tables[table] = (found[0], found[1] + 1, found[2])
            registrations.append(found[2])
        try:
            await asyncio.gather(*(asyncio.shield(r) for r in registrations))
            with self.watch(tables) as event:
                yield event
        finally:
            for table in tables:
                role_of, count, future = self._tables[table]
                if count > 1:
                    self._tables[table] = (role_of, count - 1, future)
                    continue
                del self._tables[table]
                self._tell(role_of, table, False)

    def _tell(self, role: str, table: str, watched: bool) -> asyncio.Future[None]:
        """Register (or remove) the interest in `table`, after whatever was told about it before (a removal
        never overtakes the registration of the next watcher)."""
        before = self._last.get(table)

        async def tell() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            try:
                if self.interest is not None:
                    await self.interest(role, table, watched)
            except Exception:
                if watched:
                    raise
                log.warning("changes.unwatch_failed", table=table, exc_info=True)  # costs NOTIFYs, not changes
            finally:
                if self._last.get(table) is current:
                    del self._last[table]

        current = asyncio.ensure_future(tell())
        self._last[table] = current
        return current

    def watched(self) -> list[tuple[str, str]]:
        """(role, table) of every table watched here now (registered again when the LISTEN comes back)."""
        return [(role, table) for table, (role, _, _) in self._tables.items()]

    def add(self, keys: Iterable[str], event: asyncio.Event) -> None:
        """Set `event` whenever one of `keys` changes, until `discard`."""
        for key in keys:
            self._watchers.setdefault(key, set()).add(event)

    def discard(self, keys: Iterable[str], event: asyncio.Event) -> None:
        for key in keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    @contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[asyncio.Event]:
        """An event set whenever one of `keys` (tables as `schema.table`) changes, for the life of the block."""
        event, keys = asyncio.Event(), set(keys)
        self.add(keys, event)
        try:
            yield event
        finally:
            self.discard(keys, event)

    def changed(self, key: str) -> None:
        for event in self._watchers.get(key, ()):
            event.set()

    def changed_all(self) -> None:
        """Wake everyone (the feed was interrupted: changes may have been missed)."""
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()


async def tell_interest(db: Any, listener_pid: int, role: str, table: str, watched: bool) -> None:
    """Record in the tenant's `backsaas_watched` that the process whose LISTEN connection is `listener_pid`
    watches `table` (`schema.table`), or no longer does.

    A writer's trigger reads that table (and keeps its lock on it until it commits): taking the table's
    ACCESS EXCLUSIVE lock before the row is added waits out every writer that checked it before, so once
    this returns, each change committed afterwards is NOTIFYed and whatever committed before is in the
    watcher's first read. Rows of LISTEN connections that are gone (a process that died) are removed on
    the way. A tenant deployed before the table existed has no table: its trigger NOTIFYs for every table.
    """
    schema, _, name = table.partition(".")
    watched_table = f'"{schema}"."{naming.WATCHED}"'  # a schema name of the engine's, never input
    try:
        async with db.as_role(role) as conn, conn.transaction():
            if watched:
                await conn.execute(f"LOCK TABLE {watched_table} IN ACCESS EXCLUSIVE MODE")
                await conn.execute(f"DELETE FROM {watched_table} WHERE listener <> ALL "
                                   "(ARRAY(SELECT pid FROM pg_stat_activity))")
                await conn.execute(f"INSERT INTO {watched_table} (table_name, listener) VALUES ($1, $2) "
                                   "ON CONFLICT DO NOTHING", name, listener_pid)
            else:
                await conn.execute(f"DELETE FROM {watched_table} WHERE table_name = $1 AND listener = $2",
                                   name, listener_pid)
    except asyncpg.UndefinedTableError:
        return
