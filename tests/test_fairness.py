"""A tenant's share of a gateway process (gateway/fairness.py): at most its plan's `concurrent_requests` in
progress at once; more wait their turn, first come first served, and past the queue's bound are answered
429 `too_many_concurrent_requests`, while every other tenant's requests go on being answered at once.

A request is made to stay in progress the way a real one does: the test holds a lock on the tenant's table
from a connection of its own, so the tenant's read waits inside the database, holding its slot."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from engine import catalog
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.conftest import driver_url
from tests.server import free_port, running_gateway

SCHEMA = """
name: notes
entities:
  note:
    fields:
      text: {type: text}
    permissions:
      read: {anon: all}
"""
QUEUE_SECONDS = 0.6
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="one_at_a_time", name="One at a time",
                                                 limits={"concurrent_requests": 1}))
    await create_tenant(db, "busy", source=SCHEMA, plan="one_at_a_time")
    await create_tenant(db, "calm", source=SCHEMA, plan="one_at_a_time")
    return {slug: (await create_api_key(db, slug, "anon", "anon")).key for slug in ("busy", "calm")}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKSAAS_TENANT_QUEUE_SECONDS", str(QUEUE_SECONDS))
        with running_gateway(database_url) as url:
            yield url


@pytest.fixture
async def busy_table_locked(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """`busy`'s table locked against reads until the test rolls back (or ends)."""
    conn = await asyncpg.connect(driver_url(database_url))
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE t_busy.note IN ACCESS EXCLUSIVE MODE")
    try:
        yield conn
    finally:
        if not conn.is_closed():
            await transaction.rollback()
            await conn.close()


def notes(client: httpx.AsyncClient, base: str, slug: str, key: str) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(client.get(f"{base}/api/tenants/{slug}/rest/v1/note", headers={"apikey": key}))


async def waiting_on_locks(database_url: str) -> int:
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'")
    finally:
        await conn.close()


async def until_waiting(task: asyncio.Future[httpx.Response]) -> None:
    await asyncio.sleep(0.2)  # long enough for the request to reach the database (or the queue)
    assert not task.done()


async def test_a_tenant_past_its_concurrent_requests_waits_its_turn_while_others_are_answered(
        base: str, keys: dict[str, str], busy_table_locked: asyncpg.Connection, database_url: str):
    async with httpx.AsyncClient(timeout=30) as client:
        first = notes(client, base, "busy", keys["busy"])
        await until_waiting(first)  # in progress, holding busy's one slot
        second = notes(client, base, "busy", keys["busy"])
        await until_waiting(second)  # queued behind it, in the gateway: only the first waits in the database
        assert await waiting_on_locks(database_url) == 1
        other = await client.get(f"{base}/api/tenants/calm/rest/v1/note", headers={"apikey": keys["calm"]})
        assert other.status_code == 200  # a neighbour on the same plan is not behind busy's queue
        await busy_table_locked.execute("ROLLBACK")
        await busy_table_locked.close()
        assert (await first).status_code == 200
        assert (await second).status_code == 200  # served in its turn, within the queue's bound


async def test_a_request_that_waits_longer_than_the_queue_allows_is_refused_429(
        base: str, keys: dict[str, str], busy_table_locked: asyncpg.Connection):
    async with httpx.AsyncClient(timeout=30) as client:
        first = notes(client, base, "busy", keys["busy"])
        await until_waiting(first)
        refused = await client.get(f"{base}/api/tenants/busy/rest/v1/note", headers={"apikey": keys["busy"]})
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_concurrent_requests"
        assert refused.headers["retry-after"] == "1"
        await busy_table_locked.execute("ROLLBACK")
        await busy_table_locked.close()
        assert (await first).status_code == 200
        again = await client.get(f"{base}/api/tenants/busy/rest/v1/note", headers={"apikey": keys["busy"]})
        assert again.status_code == 200  # the refused request's wait left no slot taken



def test_serve_refuses_a_queue_bound_that_is_no_positive_number(database_url: str):
    env = {**os.environ, "DATABASE_URL": database_url, "BACKSAAS_TENANT_QUEUE_SECONDS": "-3"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "BACKSAAS_TENANT_QUEUE_SECONDS" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
async def platform_tokens(db: Database, base: str) -> dict[str, str]:
    tokens = {}
    for email in ("first-ops@example.com", "second-ops@example.com"):
        await create_platform_admin(db, email, PASSWORD)
        async with httpx.AsyncClient() as client:
            session = await client.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                                        json={"email": email, "password": PASSWORD})
        tokens[email.split("-")[0]] = session.json()["access_token"]
    return tokens




async def test_on_the_platform_each_caller_has_its_own_share(base: str, database_url: str,
                                                             platform_tokens: dict[str, str]):
    """The platform serves every tenant's developers from a small pool: its shares are per caller and below
    that pool's size, so one account's slow requests queue behind its own while another account's are answered."""
    first = {"Authorization": f"Bearer {platform_tokens['first']}"}
    conn = await asyncpg.connect(driver_url(database_url))
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE system.plans IN ACCESS EXCLUSIVE MODE")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            stuck = [asyncio.ensure_future(client.get(f"{base}/api/platform/rest/v1/plans", headers=first))
                     for _ in range(3)]
            await asyncio.sleep(0.2)
            assert 1 <= await waiting_on_locks(database_url) < len(stuck)  # the rest wait their turn in the gateway
            other = await client.get(f"{base}/api/platform/rest/v1/users?select=id",
                                     headers={"Authorization": f"Bearer {platform_tokens['second']}"})
            assert other.status_code == 200, other.text
            await transaction.rollback()
            answers = await asyncio.gather(*stuck)
    finally:
        await conn.close()
    assert answers[0].status_code == 200
    assert {a.status_code for a in answers} <= {200, 429}  # a later one may have waited past the queue's bound
