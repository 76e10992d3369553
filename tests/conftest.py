"""Test databases: a real PostgreSQL always, one fresh database per test module.

The server is `BACKSAAS_TEST_DATABASE_URL` when set (e.g. the machine's own PostgreSQL, for speed),
else the embedded server in `.backsaas/test-pgdata`, so the suite passes on a machine with only Python.
Each module gets its own database (and so its own tenant roles, whose names carry the database's),
which keeps modules independent under pytest-xdist.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from engine.database import Database
from engine.embedded import EmbeddedPostgres, data_directory
from engine.storage.deploy import deploy_platform
from gateway.logs import configure_logging
from tests.mail_sink import Sink

REPO = Path(__file__).resolve().parent.parent

# The gateway threads of the tests log to the process's real stderr, never to pytest's per-test capture:
# a server thread writing to a capture file that pytest is closing at the end of a test crashed the
# interpreter (a segfault inside buffered IO), taking the xdist worker down with it.
configure_logging("warning", stream=sys.__stderr__)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def driver_url(url: str) -> str:
    """A URL asyncpg accepts directly (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get("BACKSAAS_TEST_DATABASE_URL")
    if url:
        return url
    server = EmbeddedPostgres.start(data_directory(REPO, name="test-pgdata"))
    return server.url("postgres")


@pytest.fixture(scope="module")
async def database_url(server_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    module = re.sub(r"[^a-z0-9]", "", request.module.__name__.split(".")[-1].removeprefix("test_").lower())[:20]
    name = f"bst_{module}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(driver_url(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(server_url, name)
    admin = await asyncpg.connect(driver_url(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for (role,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", f"{name}_"):
            await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    """A connected engine on the module's database, with platform.yaml deployed as the system tenant."""
    database = await Database.connect(database_url)
    await deploy_platform(database)
    yield database
    await database.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    started = Sink().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def mail_env(sink: Sink) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKSAAS_SMTP_URL", f"smtp://127.0.0.1:{sink.port}")
        patch.setenv("BACKSAAS_MAIL_FROM", "Platform <mail@platform.example>")
        patch.setenv("BACKSAAS_MAIL_RETRY_SECONDS", "0.2")
        patch.setenv("BACKSAAS_SMTP_TIMEOUT", "3")
        patch.setenv("BACKSAAS_PUBLIC_URL", "http://127.0.0.1")  # required with SMTP; the gateway's own URL once it runs
        yield
