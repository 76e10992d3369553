"""The connection to PostgreSQL: one async engine (asyncpg) and the facts about the server we depend on.

The engine never decides where the database is: the gateway or CLI passes a URL (an external server,
or the embedded one from `engine.embedded`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.storage import naming


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def async_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs, as SQLAlchemy's asyncpg dialect wants them."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def driver_url(url: str) -> str:
    """The URL as asyncpg itself takes it."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


class RoleConnection(asyncpg.Connection):
    """An asyncpg connection that remembers the role it has been switched to."""

    __slots__ = ("acting_role",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acting_role: str | None = None

    async def act_as(self, role: str) -> None:
        if self.acting_role != role:
            self.acting_role = None  # unknown until the server confirms
            await self.execute(f"SET ROLE {quote_identifier(role)}")
            self.acting_role = role


async def keep_role(conn: asyncpg.Connection) -> None:
    """Pool reset: end any transaction left open, keep the session's role (asyncpg's default `RESET ALL`
    would clear it and cost a round trip per request)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


@dataclass
class Database:
    """SQLAlchemy's async engine for the admin path (deploys, catalog) and a plain asyncpg pool for the
    request path, where every round trip counts."""

    engine: AsyncEngine
    name: str  # the database's name: part of every tenant role's name
    url: str = ""
    pool_size: int = 5
    _pool: asyncpg.Pool | None = None

    @classmethod
    def open(cls, url: str, *, pool_size: int = 5) -> Database:
        """A pool on `url`; connections are made on first use, so a server that is down now is not fatal."""
        parsed = make_url(async_url(url))
        engine = create_async_engine(parsed, pool_size=pool_size, max_overflow=10)
        return cls(engine, parsed.database or parsed.username or "postgres", url, pool_size)

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 5) -> Database:
        """`open`, then make sure the server answers (commands want to fail early)."""
        database = cls.open(url, pool_size=pool_size)
        await database.ping()
        return database

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back entirely when it raises."""
        async with self.engine.begin() as conn:
            yield conn

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(driver_url(self.url), min_size=1, max_size=self.pool_size * 2,
                                                   connection_class=RoleConnection, reset=keep_role)
        return self._pool

    @asynccontextmanager
    async def as_role(self, role: str) -> AsyncIterator[asyncpg.Connection]:
        """A request-pool connection acting as `role` (a tenant's role: never the pool's login user).

        The role is set per session and kept across uses (`SET ROLE` only when it differs), so a
        one-statement request costs one round trip; every use sets the role it needs before anything
        runs, and the pool's reset never clears it behind our back.
        """
        pool = await self.pool()
        async with pool.acquire() as conn:
            await conn.act_as(role)
            yield conn

    def role(self, slug: str) -> str:
        return naming.role_name(self.name, slug)

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()
