"""The connection to PostgreSQL: one async engine (asyncpg) and the facts about the server we depend on.

The engine never decides where the database is: the gateway or CLI passes a URL (an external server,
or the embedded one from `engine.embedded`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

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
            self._pool = await asyncpg.create_pool(driver_url(self.url), min_size=1, max_size=self.pool_size * 2)
        return self._pool

    @asynccontextmanager
    async def as_role(self, role: str) -> AsyncIterator[asyncpg.Connection]:
        """One transaction as `role` on the request pool: `BEGIN; SET LOCAL ROLE` in one round trip,
        COMMIT when the block ends, ROLLBACK when it raises."""
        pool = await self.pool()
        async with pool.acquire() as conn:
            await conn.execute(f"BEGIN; SET LOCAL ROLE {quote_identifier(role)}")
            try:
                yield conn
            except BaseException:
                if not conn.is_closed():
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

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
