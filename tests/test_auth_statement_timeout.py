"""`/auth/v1` statements on a tenant's tables run under the tenant's plan's statement timeout, like every
other request of the tenant: a sign-up or sign-in stuck behind a lock is canceled and answered 504
`statement_timeout`, instead of holding a connection of the platform's pool for as long as the lock lasts."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from engine import catalog
from engine.authz import Caller
from engine.database import Database
from engine.identity.gotrue import AuthApi
from engine.identity.throttle import LoginThrottle
from engine.runtime import RuntimeRegistry
from engine.storage import naming
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.conftest import driver_url
from tests.server import running_gateway

SCHEMA = """
name: gate
entities:
  note:
    fields:
      text: {type: text}
"""
TIMEOUT_MS = 400


@pytest.fixture(scope="module")
async def anon_key(db: Database) -> str:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="quick_statements", name="Quick statements",
                                                 limits={"statement_timeout_ms": TIMEOUT_MS}))
    await create_tenant(db, "gate", source=SCHEMA, plan="quick_statements")
    return (await create_api_key(db, "gate", "anon", "anon")).key


@pytest.fixture(scope="module")
def base(anon_key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


async def test_auth_statements_run_with_the_plans_statement_timeout(db: Database, anon_key: str):
    registry = RuntimeRegistry(db)
    await registry.start()
    try:
        runtime = await registry.get("gate")
        api = AuthApi(runtime, db, await registry.keyring(), LoginThrottle(None), Caller(("anon",)), None)
        async with db.begin() as conn:
            await api.as_tenant(conn)
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == f"{TIMEOUT_MS}ms"
            assert await conn.scalar(sa.text("SELECT current_user")) == runtime.role
    finally:
        await registry.close()


async def test_a_sign_up_stuck_behind_a_lock_is_canceled_at_the_timeout(base: str, anon_key: str, database_url: str):
    auth = f"{base}/api/tenants/gate/auth/v1"
    headers = {"apikey": anon_key}
    locker = await asyncpg.connect(driver_url(database_url))
    try:
        async with locker.transaction():
            await locker.execute(f'LOCK TABLE "{naming.schema_name("gate")}".users IN ACCESS EXCLUSIVE MODE')
            async with httpx.AsyncClient(timeout=60) as client:
                stuck = await client.post(f"{auth}/signup", headers=headers,
                                          json={"email": "kim@example.com", "password": "a long enough passphrase"})
        assert stuck.status_code == 504 and stuck.json()["code"] == "statement_timeout"
    finally:
        await locker.close()
    async with httpx.AsyncClient(timeout=60) as client:  # the lock gone, the same sign-up goes through
        signed = await client.post(f"{auth}/signup", headers=headers,
                                   json={"email": "kim@example.com", "password": "a long enough passphrase"})
    assert signed.status_code == 200 and signed.json()["user"]["email"] == "kim@example.com"
