"""The connection to PostgreSQL: one async engine (asyncpg) and the facts about the server we depend on.

The engine never decides where the database is: the gateway or CLI passes a URL (an external server,
or the embedded one from `engine.embedded`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.storage import naming


def async_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs, as SQLAlchemy's asyncpg dialect wants them."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@dataclass
class Database:
    engine: AsyncEngine
    name: str  # the database's name: part of every tenant role's name

    @classmethod
    def open(cls, url: str, *, pool_size: int = 5) -> Database:
        """A pool on `url`; connections are made on first use, so a server that is down now is not fatal."""
        parsed = make_url(async_url(url))
        engine = create_async_engine(parsed, pool_size=pool_size, max_overflow=10)
        return cls(engine, parsed.database or parsed.username or "postgres")

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

    def role(self, slug: str) -> str:
        return naming.role_name(self.name, slug)

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def close(self) -> None:
        await self.engine.dispose()
