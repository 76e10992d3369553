"""Wall 3, the database: the request pools log in as roles that can read nothing by themselves (and the
tenants' pool cannot become the platform's role), the outbox takes a tenant's events only as that tenant,
every tenant statement has a statement timeout, and a cold gateway opens its pools once, bounded.

These tests bypass the walls before this one: they run SQL straight on a request-pool connection, as a
bug in the application would, and expect PostgreSQL itself to refuse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from engine import audit
from engine.database import Database, act_as_tenant, quote_identifier
from engine.errors import GatewayRoleUnavailable
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.conftest import driver_url
from tests.server import running_gateway

SCHEMA = """
name: board
entities:
  notice:
    fields:
      text: {type: text}
    permissions:
      read:   {anon: all}
      create: {anon: all}
"""
TIGHT_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("alpha", "beta", "slow"):
        await create_tenant(db, slug, source=SCHEMA)
        made[slug] = (await create_api_key(db, slug, "anon", "anon")).key
    async with db.begin() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        await driver.execute("INSERT INTO system.plans (code, name, limits) VALUES "
                             f"('tight', 'Tight', '{{\"statement_timeout_ms\": {TIGHT_TIMEOUT_MS}}}')")
        await driver.execute("UPDATE system.tenants SET plan = 'tight' WHERE slug = 'slow'")
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def as_user(url: str, user: str, password: str) -> str:
    return make_url(url).set(username=user, password=password).render_as_string(hide_password=False)


@pytest.mark.parametrize("slug", ["alpha", "system"])
async def test_the_request_pools_log_in_as_roles_without_any_power_of_their_own(db: Database, keys: dict[str, str],
                                                                                slug: str):
    async with db.as_role(db.role(slug)) as conn:
        login = await conn.fetchrow("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolinherit "
                                    "FROM pg_roles WHERE rolname = session_user")
    assert login["rolname"] == db.login_role_of(slug)
    assert not any((login["rolsuper"], login["rolcreaterole"], login["rolcreatedb"], login["rolbypassrls"],
                    login["rolinherit"]))


@pytest.mark.parametrize("slug", ["alpha", "system"])
async def test_after_reset_role_a_request_connection_cannot_read_the_platform(db: Database, keys: dict[str, str],
                                                                              slug: str):
    role = db.role(slug)
    async with db.as_role(role) as conn:
        await conn.execute("RESET ROLE")
        try:
            for table in ("system.users", "system.api_keys", "system.events"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT * FROM {table}")
        finally:
            await conn.execute(f"SET ROLE {quote_identifier(role)}")


async def test_after_reset_role_a_request_connection_cannot_read_another_tenants_table(db: Database,
                                                                                        keys: dict[str, str]):
    role = db.role("alpha")
    async with db.as_role(role) as conn:
        await conn.execute("RESET ROLE")
        try:
            for table in ("t_beta.notice", "t_alpha.notice"):  # not even the tenant it was acting for
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT * FROM {table}")
        finally:
            await conn.execute(f"SET ROLE {quote_identifier(role)}")


async def test_a_tenant_request_connection_cannot_become_the_platforms_role(db: Database, keys: dict[str, str]):
    role = db.role("alpha")
    async with db.as_role(role) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"SET ROLE {quote_identifier(db.role('system'))}")
        assert await conn.fetchval("SELECT current_user") == role


def event(tenant_id: str) -> str:
    return orjson.dumps([{"tenant_id": tenant_id, "entity": "notice", "action": "create", "kind": "function",
                          "target": "wall.probe", "payload": {}, "caller": {}}]).decode()


async def test_a_tenant_role_writes_outbox_events_for_its_own_tenant_only(db: Database, keys: dict[str, str]):
    ids = await tenant_ids(db)
    async with db.as_role(db.role("alpha")) as conn:
        await conn.execute("SELECT backsaas_outbox.enqueue($1::jsonb)", event(ids["beta"]))  # names beta: ignored
        await conn.execute("RESET ROLE")
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # acting as no tenant: nothing at all
                await conn.execute("SELECT backsaas_outbox.enqueue($1::jsonb)", event(ids["beta"]))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("INSERT INTO system.events (tenant_id, entity, action, kind, target, payload) "
                                   "VALUES ($1, 'notice', 'create', 'function', 'wall.probe', '{}')", ids["beta"])
        finally:
            await conn.execute(f"SET ROLE {quote_identifier(db.role('alpha'))}")
    async with db.begin() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        filed = await driver.fetch("DELETE FROM system.events WHERE target = 'wall.probe' RETURNING tenant_id::text")
    assert [r["tenant_id"] for r in filed] == [ids["alpha"]]


async def tenant_ids(db: Database) -> dict[str, str]:
    async with db.begin() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        return {r["slug"]: r["id"] for r in await driver.fetch("SELECT slug, id::text FROM system.tenants")}


async def test_tenant_statements_run_with_the_default_statement_timeout(db: Database, keys: dict[str, str]):
    async with db.as_role(db.role("alpha")) as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "8s"


async def test_a_tenant_statement_past_its_plans_timeout_answers_504_statement_timeout(
        base: str, keys: dict[str, str], database_url: str):
    url = f"{base}/api/tenants/slow/rest/v1/notice"
    headers = {"apikey": keys["slow"]}
    assert httpx.post(url, headers=headers, json={"text": "before"}).status_code == 201
    holder = await asyncpg.connect(driver_url(database_url))
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE t_slow.notice IN ACCESS EXCLUSIVE MODE")
            blocked = await asyncio.to_thread(httpx.post, url, headers=headers, json={"text": "during"}, timeout=30)
    finally:
        await holder.close()
    assert blocked.status_code == 504, blocked.text
    assert blocked.json()["code"] == "statement_timeout"
    assert httpx.post(url, headers=headers, json={"text": "after"}).status_code == 201


async def test_a_second_url_names_the_request_pools_role(db: Database, database_url: str, keys: dict[str, str]):
    role = f"{db.name}_named"
    admin = await asyncpg.connect(driver_url(database_url))
    try:
        await admin.execute(f"CREATE ROLE {quote_identifier(role)} LOGIN NOINHERIT PASSWORD 'named-role-secret'")
    finally:
        await admin.close()
    named = Database.open(database_url, gateway_url=as_user(database_url, role, "named-role-secret"))
    try:
        async with named.as_role(named.role("beta")) as conn:  # a tenant made before the role: granted at start
            assert await conn.fetchval("SELECT session_user") == role
            assert await conn.fetchval("SELECT count(*) FROM t_beta.notice") == 0
    finally:
        await named.close()


async def test_a_superuser_is_refused_as_the_request_pools_role(db: Database, database_url: str):
    wrong = Database.open(database_url, gateway_url=database_url)
    try:
        with pytest.raises(GatewayRoleUnavailable, match="superuser"):
            await wrong.pool()
    finally:
        await wrong.close()


async def test_without_a_superuser_or_a_second_url_the_request_pool_says_what_to_set(db: Database,
                                                                                     database_url: str):
    role = f"{db.name}_owner"
    admin = await asyncpg.connect(driver_url(database_url))
    try:
        await admin.execute(f"CREATE ROLE {quote_identifier(role)} LOGIN CREATEROLE PASSWORD 'owner-secret'")
    finally:
        await admin.close()
    operator = Database.open(as_user(database_url, role, "owner-secret"), gateway_url=None)
    try:
        with pytest.raises(GatewayRoleUnavailable, match="DATABASE_GATEWAY_URL"):
            await operator.pool()
    finally:
        await operator.close()


async def test_gateway_processes_opening_their_request_pools_at_once_all_open_them(database_url: str,
                                                                                   keys: dict[str, str]):
    """Each gateway process sets its request pools' login roles right (ALTER ROLE ... PASSWORD) as it
    opens them, queued on an advisory lock; the lock was let go as soon as taken, so processes starting
    together failed with `tuple concurrently updated` (a 500 to a first request)."""
    for _ in range(3):
        processes = [Database.open(database_url) for _ in range(6)]
        try:
            await asyncio.gather(*(p.prepare_gateway_roles() for p in processes))
        finally:
            await asyncio.gather(*(p.close() for p in processes))


async def gateway_connections(admin: asyncpg.Connection) -> int:
    return await admin.fetchval("SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")


async def test_concurrent_first_requests_share_one_bounded_pool(database_url: str, keys: dict[str, str]):
    admin = await asyncpg.connect(driver_url(database_url))
    try:
        before = await gateway_connections(admin)
        with running_gateway(database_url) as fresh:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=60) as client:
                answers = await asyncio.gather(*(client.get(f"{fresh}/api/tenants/alpha/rest/v1/notice",
                                                            headers={"apikey": keys["alpha"]}) for _ in range(32)))
                assert [a.status_code for a in answers] == [200] * 32
                ready = (await client.get(f"{fresh}/readyz")).json()
            opened = await gateway_connections(admin) - before
    finally:
        await admin.close()
    pools = ready["connections"]
    assert 1 <= pools["requests"]["open"] <= pools["requests"]["max"]
    listeners = 2  # the registry's and the outbox dispatcher's LISTEN connections
    assert opened <= pools["requests"]["max"] + pools["platform"]["max"] + pools["admin"]["max"] + listeners


async def test_a_platform_transaction_acts_as_a_tenant_with_its_timeout_and_the_actor_in_one_statement(db: Database,
                                                                                                        keys):
    """engine.database.act_as_tenant: what identity and GDPR run a tenant's statements under on the platform's
    connection; the role, the timeout and the audit context all end with the transaction."""
    token = audit.REQUEST.set({"client": ("192.0.2.7", 1234), "backsaas.request_id": "req-act-as"})
    try:
        async with db.begin() as conn:
            await act_as_tenant(conn, db.role("slow"), TIGHT_TIMEOUT_MS)
            state = (await conn.execute(sa.text("SELECT current_user, current_setting('statement_timeout'), "
                                                f"current_setting('{audit.SETTING}')"))).one()
        async with db.begin() as conn:
            after = (await conn.execute(sa.text("SELECT current_user, current_setting('statement_timeout')"))).one()
    finally:
        audit.REQUEST.reset(token)
    assert tuple(state[:2]) == (db.role("slow"), f"{TIGHT_TIMEOUT_MS}ms")
    assert orjson.loads(state[2]) == {"request_id": "req-act-as", "ip": "192.0.2.7"}
    assert after[0] != db.role("slow") and after[1] != f"{TIGHT_TIMEOUT_MS}ms"
