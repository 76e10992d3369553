"""The outbox's claim shares deliveries between tenants: at most `per_tenant` events of a tenant at once,
counting its live leases, oldest first, and a lease that ran out (its process died) is claimed again; a
tenant whose backlog waits on its own slots leaves the others' events to go (engine/outbox.py `CLAIM`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from engine.database import Database, driver_url
from engine.outbox import Dispatcher
from functions.tenants import create_tenant

EMPTY = "name: {slug}\nentities: {{}}\n"


@pytest.fixture(scope="module")
async def sql(db: Database, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(driver_url(database_url))
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def tenants(db: Database, sql: asyncpg.Connection) -> dict[str, str]:
    for slug in ("busy", "calm"):
        await create_tenant(db, slug, source=EMPTY.format(slug=slug))
    return {r["slug"]: str(r["id"]) for r in await sql.fetch("SELECT slug, id FROM system.tenants")}


@pytest.fixture
async def outbox(db: Database, tenants: dict[str, str], sql: asyncpg.Connection) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(db, None, per_tenant=4)
    yield dispatcher
    await dispatcher.client.aclose()
    await sql.execute("DELETE FROM system.events")


async def add_events(sql: asyncpg.Connection, tenant_id: str, count: int, *, status: str = "pending",
                     due: str = "now() - interval '1 minute'", lease: str | None = None, entity: str = "e") -> None:
    """`count` webhook events of a tenant named `entity`1..count, due at `due` a second apart (1 the oldest)."""
    await sql.execute(
        "INSERT INTO system.events (tenant_id, entity, action, kind, target, payload, status, next_attempt_at, "
        f"locked_until) SELECT $1, $2 || g, 'create', 'webhook', 'https://example.com/hook', '{{}}', $3, "
        f"{due} + g * interval '1 second', {lease or 'NULL'} FROM generate_series(1, $4) g",
        tenant_id, entity, status, count)


async def test_a_claim_takes_a_tenants_oldest_events_up_to_its_slots_and_every_other_tenants(sql, outbox, tenants):
    await add_events(sql, tenants["busy"], 50)
    await add_events(sql, tenants["calm"], 2)
    claimed = await outbox.claim(32)
    mine = sorted(int(e.entity[1:]) for e in claimed if e.tenant_id == tenants["busy"])
    assert mine == [1, 2, 3, 4]
    assert sum(e.tenant_id == tenants["calm"] for e in claimed) == 2
    assert all(e.attempts == 1 for e in claimed)


async def test_a_tenant_whose_slots_are_taken_by_live_leases_gets_nothing_and_leaves_the_others(sql, outbox, tenants):
    await add_events(sql, tenants["busy"], 4, status="delivering", lease="now() + interval '1 hour'", entity="live")
    await add_events(sql, tenants["busy"], 500)
    await add_events(sql, tenants["calm"], 1)
    claimed = await outbox.claim(32)
    assert [e.tenant_id for e in claimed] == [tenants["calm"]]


async def test_a_delivery_whose_lease_ran_out_is_claimed_again_within_its_tenants_slots(sql, outbox, tenants):
    await add_events(sql, tenants["busy"], 2, status="delivering", due="now() - interval '2 hours'",
                     lease="now() - interval '1 second'", entity="lapsed")  # claimed an hour before the others fell due
    await add_events(sql, tenants["busy"], 10, due="now() - interval '1 hour'")
    claimed = await outbox.claim(32)
    assert sorted(e.entity for e in claimed if e.entity.startswith("lapsed")) == ["lapsed1", "lapsed2"]
    assert len(claimed) == 4


async def test_an_event_not_yet_due_is_not_claimed(sql, outbox, tenants):
    await add_events(sql, tenants["calm"], 3, due="now() + interval '1 hour'")
    assert await outbox.claim(32) == []
