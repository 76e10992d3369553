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
    name: str  # the current database: part of every tenant role's name
    server_version: int  # e.g. 150020 or 180006

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 5) -> Database:
        engine = create_async_engine(async_url(url), pool_size=pool_size, max_overflow=10, pool_pre_ping=False)
        async with engine.connect() as conn:
            row = (await conn.execute(sa.text("SELECT current_database(), current_setting('server_version_num')::int"))).one()
        return cls(engine, row[0], row[1])

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
